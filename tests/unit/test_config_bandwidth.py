"""The ``bandwidth`` keys of the config: overall and per target, a rate or a timetable."""

import textwrap

import pytest

from syncd.bandwidth import Limits
from syncd.config import ConfigError, load_config

GOOD = """
journal: state/journal.db
staging_dir: state/staging
targets:
  main:
    url: http://127.0.0.1:8765/chunked_upload/
watches:
  - name: drop
    path: drop
    target: main
"""


@pytest.fixture
def base(tmp_path):
    (tmp_path / "drop").mkdir()
    return tmp_path


def load(base, extra: str):
    path = base / "config.yaml"
    path.write_text(GOOD + textwrap.dedent(extra))
    return load_config(path)


def errors_of(base, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(base, extra)
    assert all("\n" not in line and line.startswith("config.yaml: ") for line in err.value.lines)
    return err.value.lines


def test_no_bandwidth_key_means_unlimited(base):
    config = load(base, "")
    assert config.bandwidth == () and config.targets["main"].bandwidth == ()
    assert Limits.at(config.bandwidth, {"main": config.targets["main"].bandwidth}) == Limits(None, {})


def test_overall_rate_and_target_timetable(base):
    config = load(base, "bandwidth: 20MiB/s\n")
    assert config.bandwidth[0].limit == 20 * 1024**2
    path = base / "config.yaml"
    path.write_text(GOOD.replace("    url: http://127.0.0.1:8765/chunked_upload/\n",
                                 "    url: http://127.0.0.1:8765/chunked_upload/\n"
                                 "    bandwidth:\n"
                                 "      - {at: \"Mon-Fri 08:00\", limit: 5MiB/s}\n"
                                 "      - {at: \"Mon-Fri 19:00\", limit: off}\n"
                                 "      - {at: \"Sat-Sun 00:00\", limit: off}\n") + "bandwidth: off\n")
    config = load_config(path)
    assert [(e.at, e.limit) for e in config.targets["main"].bandwidth] == [
        ("Mon-Fri 08:00", 5 * 1024**2), ("Mon-Fri 19:00", None), ("Sat-Sun 00:00", None)]
    assert config.bandwidth == ()  # off: no timetable at all


@pytest.mark.parametrize(("extra", "expected"), [
    ("bandwidth: fast\n", "config.yaml: bandwidth: 'fast' is not a rate (e.g. 20MiB/s, 512KiB/s, off, 0)"),
    ("bandwidth: 20MiB\n", "config.yaml: bandwidth: '20MiB' is not a rate (e.g. 20MiB/s, 512KiB/s, off, 0): "
                           "write it per second, e.g. 20MiB/s"),
    ("bandwidth: [{at: 'Mon-Fri 08:00', limit: 1MiB/s}, {at: 'Mon-Fry 19:00', limit: off}]\n",
     "config.yaml: bandwidth[1].at: 'Mon-Fry 19:00': 'Mon-Fry' is not a day or a range of days"),
    ("bandwidth: [{at: 'Mon 08:00', limit: lots}]\n", "config.yaml: bandwidth[0].limit: 'lots' is not a rate"),
    ("bandwidth: [{at: 'Mon 08:00', limit: 1MiB/s, until: 'Tue'}]\n", "config.yaml: bandwidth[0].until: unknown key"),
    ("bandwidth: [{limit: 1MiB/s}]\n", "config.yaml: bandwidth[0].at: is required"),
    ("bandwidth: [{at: 'Mon-Fri 08:00', limit: 1MiB/s}, {at: 'Fri 08:00', limit: 0}]\n",
     "config.yaml: bandwidth: [1].at: 'Fri 08:00' starts at the same time as [0].at 'Mon-Fri 08:00'"),
])
def test_bad_bandwidth_is_one_line_naming_the_key(base, extra, expected):
    lines = errors_of(base, extra)
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_bad_target_bandwidth_names_the_target(base):
    path = base / "config.yaml"
    path.write_text(GOOD.replace("    url: http://127.0.0.1:8765/chunked_upload/\n",
                                 "    url: http://127.0.0.1:8765/chunked_upload/\n    bandwidth: yes\n"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.lines == ["config.yaml: targets.main.bandwidth: True is not a rate "
                               "(e.g. 20MiB/s, 512KiB/s, off, 0)"]
