import os
import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config import ConfigError, default_config, load_config, redacted


@pytest.fixture
def base(tmp_path):
    (tmp_path / "drop").mkdir()
    (tmp_path / "other").mkdir()
    return tmp_path


def write(base, text):
    path = base / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """
journal: state/journal.db
staging_dir: state/staging
targets:
  main:
    url: http://127.0.0.1:8765/chunked_upload/
    token: s3cret-token
watches:
  - name: drop
    path: drop
    target: main
"""


def errors_of(base, text):
    with pytest.raises(ConfigError) as err:
        load_config(write(base, text))
    for line in err.value.lines:
        assert "\n" not in line
        assert line.startswith("config.yaml: ")
    return err.value.lines


def test_good_config_resolves_paths_and_defaults(base):
    config = load_config(write(base, GOOD))
    watch = config.watches[0]
    assert watch.path == base / "drop"
    assert config.journal == base / "state/journal.db"
    assert watch.settle.quiet == 5.0 and watch.after_upload == "keep"
    assert (watch.settle.on_close, watch.settle.close_quiet) == (False, 0.25)
    assert (watch.priority, watch.order) == (0, "oldest")
    assert config.targets["main"].part_size == 50 * 1024**2
    assert config.targets["main"].resolve_token() == "s3cret-token"
    assert "s3cret-token" not in str(redacted(config))


def test_issue_example_message(base):
    text = GOOD + "    settle: {quiet: soon}\n  - {name: b, path: other, target: main, settle: {quiet: soon}}\n"
    lines = errors_of(base, text)
    assert "config.yaml: watches[1].settle.quiet: 'soon' is not a duration (e.g. 5s, 2m)" in lines
    assert "config.yaml: watches[0].settle.quiet: 'soon' is not a duration (e.g. 5s, 2m)" in lines


@pytest.mark.parametrize("patch,expected", [
    ({"bogus": 1}, "config.yaml: bogus: unknown key"),
    ({"targets": {"main": {"url": "ftp://x", "token": "t"}}},
     "config.yaml: targets.main.url: 'ftp://x' is not an http:// or https:// URL"),
    ({"targets": {"main": {"url": "http://127.0.0.1:1/", "part_size": "lots"}}},
     "config.yaml: targets.main.part_size: 'lots' is not a size (e.g. 512KiB, 50MiB, 10GiB)"),
    ({"targets": {"main": {"url": "http://127.0.0.1:1/", "token": "a", "token_env": "B"}}},
     "config.yaml: targets.main: give only one of token, token_file, token_env (got token, token_env)"),
    ({"targets": {"main": {"url": "http://127.0.0.1:1/", "token_env": "SYNCD_TEST_UNSET_VAR"}}},
     "config.yaml: targets.main.token_env: environment variable 'SYNCD_TEST_UNSET_VAR' is not set"),
    ({"concurrency": {"uploads": 0}},
     "config.yaml: concurrency.uploads: 0: input should be greater than or equal to 1"),
    ({"watches": [{"name": "drop", "path": "drop", "target": "nope"}]},
     "config.yaml: watches[0].target: 'nope' is not a target (known: main)"),
    ({"watches": [{"name": "drop", "path": "missing", "target": "main"}]},
     "does not exist or is not a folder"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main"},
                  {"name": "b", "path": "drop/sub", "target": "main"}]},
     "config.yaml: watches[1].path:"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "after_upload": "move", "done_dir": "drop/done"}]},
     "config.yaml: watches[0].done_dir: "),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "after_upload": "move"}]},
     "config.yaml: watches[0]: after_upload: move needs done_dir"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "after_upload": "shred"}]},
     "config.yaml: watches[0].after_upload: 'shred': input should be 'keep', 'delete' or 'move'"),
    ({"staging_dir": "drop/.staging"}, "config.yaml: staging_dir: "),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "remote_dir": "{nope}"}]},
     "config.yaml: watches[0].remote_dir: '{nope}' is not a valid template"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "remote_dir": "cams}"}]},
     "config.yaml: watches[0].remote_dir: 'cams}' is not a valid template"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "settle": {"quiet": "5s", "max_wait": "1s"}}]},
     "config.yaml: watches[0].settle: max_wait (1s) is shorter than quiet (5s)"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main",
                   "settle": {"quiet": "100ms", "on_close": True}}]},
     "config.yaml: watches[0].settle: close_quiet (0.25s) is longer than quiet (0.1s)"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "settle": {"close_quiet": "0s"}}]},
     "config.yaml: watches[0].settle: close_quiet must be more than 0s"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "settle": {"on_close": "maybe"}}]},
     "config.yaml: watches[0].settle.on_close: 'maybe': input should be a valid boolean"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "priority": "high"}]},
     "config.yaml: watches[0].priority: 'high': input should be a valid integer"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "priority": 5000}]},
     "config.yaml: watches[0].priority: 5000: input should be less than or equal to 1000"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "order": "largest"}]},
     "config.yaml: watches[0].order: 'largest': input should be 'oldest' or 'smallest'"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "poll": True, "settle": {"on_close": True}}]},
     "config.yaml: watches[0]: settle.on_close: a polling watch (poll: true) sees no closes"),
])
def test_bad_configs_give_one_line_naming_key_and_value(base, patch, expected):
    data = yaml.safe_load(GOOD)
    data.update(patch)
    lines = errors_of(base, yaml.safe_dump(data))
    assert any(expected in line for line in lines), lines


def test_overlapping_watches_message(base):
    (base / "drop" / "sub").mkdir()
    data = yaml.safe_load(GOOD)
    data["watches"].append({"name": "inner", "path": "drop/sub", "target": "main"})
    lines = errors_of(base, yaml.safe_dump(data))
    assert lines == [f"config.yaml: watches[1].path: '{base / 'drop/sub'}' overlaps watch 'drop'"]


def test_unwritable_journal_dir(base):
    if os.geteuid() == 0:
        blocker = base / "file"
        blocker.write_text("x")
        data = yaml.safe_load(GOOD)
        data["journal"] = "file/journal.db"
    else:  # pragma: no cover - root in CI
        data = yaml.safe_load(GOOD)
        data["journal"] = "/proc/journal.db"
    lines = errors_of(base, yaml.safe_dump(data))
    assert any(line.startswith("config.yaml: journal: cannot create folder") for line in lines), lines


def test_unreadable_token_file(base):
    data = yaml.safe_load(GOOD)
    data["targets"]["main"] = {"url": "http://127.0.0.1:1/", "token_file": "nope.txt"}
    lines = errors_of(base, yaml.safe_dump(data))
    assert lines == [f"config.yaml: targets.main.token_file: cannot read '{base / 'nope.txt'}': "
                     "No such file or directory"]


def test_env_in_token_file_path(base, monkeypatch):
    (base / "creds").mkdir()
    (base / "creds" / "token").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(base / "creds"))
    data = yaml.safe_load(GOOD)
    data["targets"]["main"] = {"url": "http://127.0.0.1:1/", "token_file": "${CREDENTIALS_DIRECTORY}/token"}
    config = load_config(write(base, yaml.safe_dump(data)))
    assert config.targets["main"].resolve_token() == "from-credential"


def test_yaml_syntax_error_names_line(base):
    lines = errors_of(base, "journal: [unclosed\n")
    assert lines[0].startswith("config.yaml: line 2, column 1: not valid YAML")


def test_missing_file():
    with pytest.raises(ConfigError, match="cannot read config: No such file"):
        load_config("/nonexistent/syncd.yaml")


def test_example_config_is_valid(tmp_path, monkeypatch):
    """config.example.yaml documents every key; it must load once its folders exist."""
    from pathlib import Path

    example = Path(__file__).parents[2] / "config.example.yaml"
    data = yaml.safe_load(example.read_text())
    for watch in data["watches"]:
        (tmp_path / watch["path"]).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("SYNCD_TOKEN", "x")
    (tmp_path / "token").write_text("t")
    target = tmp_path / "config.yaml"
    target.write_text(example.read_text())
    config = load_config(target)
    assert config.watches


def test_default_config_is_self_consistent(tmp_path):
    config = default_config(tmp_path)
    assert config.receiver is not None
    assert config.targets["local"].resolve_token() == config.receiver.resolve_token()
    assert config.watches[0].path == tmp_path / "drop"


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["quiet", "max_wait", "on_close", "close_quiet", "extra"]),
                       st.one_of(st.text(max_size=6), st.integers(-5, 10**6), st.floats(allow_nan=True))))
def test_any_settle_mapping_is_accepted_or_refused_in_one_line(tmp_path_factory, settle):
    base = tmp_path_factory.mktemp("cfg")
    (base / "drop").mkdir()
    data = yaml.safe_load(GOOD)
    data["watches"][0]["settle"] = settle
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.lines and all(line.startswith("config.yaml: watches[0].settle") for line in exc.lines)


def test_status_can_load_a_service_config_without_its_credentials(base, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    data = yaml.safe_load(GOOD)
    data["targets"]["main"] = {"url": "http://127.0.0.1:1/", "token_file": "${CREDENTIALS_DIRECTORY}/token"}
    path = write(base, yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_config(path)
    assert load_config(path, check=False).journal == base / "state/journal.db"


# --- issue 13 item 4: duplicate keys ----------------------------------------------------------

def test_duplicate_key_names_the_key_and_both_lines(base):
    text = GOOD.replace("    token: s3cret-token\n", "    token: s3cret-token\n    part_size: 1MiB\n"
                        "    url: http://127.0.0.1:9/chunked_upload/\n")
    lines = errors_of(base, text)
    assert lines == ["config.yaml: line 9: duplicate key 'url' (first at line 6)"]


def test_duplicate_top_level_key_and_list_of_mappings(base):
    assert errors_of(base, GOOD + "journal: elsewhere.db\n") == [
        "config.yaml: line 12: duplicate key 'journal' (first at line 2)"]
    text = GOOD + "    recursive: true\n    poll: false\n    recursive: false\n"
    assert errors_of(base, text) == ["config.yaml: line 14: duplicate key 'recursive' (first at line 12)"]


def test_same_key_in_sibling_mappings_is_fine(base):
    text = GOOD + "  - name: other\n    path: other\n    target: main\n"
    assert [w.name for w in load_config(write(base, text)).watches] == ["drop", "other"]


def test_duplicate_key_in_a_flow_mapping_on_one_line(base):
    text = GOOD + "    settle: {quiet: 1s, quiet: 2s}\n"
    assert errors_of(base, text) == ["config.yaml: line 12: duplicate key 'quiet' (first at line 12)"]


def test_merge_keys_may_be_overridden(base):
    text = GOOD + "    settle: &s {quiet: 1s, max_wait: 1m}\n  - name: other\n    path: other\n" \
                  "    target: main\n    settle: {<<: *s, quiet: 2s}\n"
    config = load_config(write(base, text))
    assert config.watch("other").settle.quiet == 2.0 and config.watch("other").settle.max_wait == 60.0


# --- issue 13 item 10: config messages ---------------------------------------------------------

@pytest.mark.parametrize("key", ["include", "exclude"])
def test_one_glob_as_a_string_is_a_list_of_one(base, key):
    config = load_config(write(base, GOOD + f'    {key}: "*.pdf"\n'))
    assert getattr(config.watches[0], key) == ("*.pdf",)


@pytest.mark.parametrize("value,expected", [
    ("5", "config.yaml: watches[0].include: 5 is not a glob or a list of globs"),
    ("[a, 3]", "config.yaml: watches[0].include[1]: 3: input should be a valid string"),
    ("{a: b}", "config.yaml: watches[0].include: {'a': 'b'} is not a glob or a list of globs"),
])
def test_include_that_is_not_globs(base, value, expected):
    assert errors_of(base, GOOD + f"    include: {value}\n") == [expected]


@pytest.mark.parametrize("transcode,expected", [
    ("{crf: 99}", "config.yaml: watches[0].transcode.crf: 99 must be >= 0 and <= 51"),
    ("{crff: 20}", "config.yaml: watches[0].transcode.crff: unknown transcode setting (known: "),
    ("{duration: soon}", "config.yaml: watches[0].transcode.duration: 'soon' is not a duration"),
    ("fast", "config.yaml: watches[0].transcode: 'fast': "),
])
def test_transcode_errors_name_the_setting_as_a_key_path(base, transcode, expected):
    lines = errors_of(base, GOOD + f"    transcode: {transcode}\n")
    assert len(lines) == 1 and lines[0].startswith(expected), lines


@pytest.mark.parametrize("text,expected", [("10 MB", 10 * 1000**2), ("10MiB", 10 * 1024**2),
                                           ("10 MiB", 10 * 1024**2), (" 64 KiB ", 64 * 1024)])
def test_part_size_with_a_space_is_accepted(base, text, expected):
    config = load_config(write(base, GOOD.replace("token: s3cret-token", f"token: t\n    part_size: '{text}'")))
    assert config.targets["main"].part_size == expected


def test_skip_secrets_validates_everything_but_credentials(base, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("SYNCD_TEST_UNSET_VAR", raising=False)
    data = yaml.safe_load(GOOD)
    data["targets"]["main"] = {"url": "http://127.0.0.1:1/", "token_file": "${CREDENTIALS_DIRECTORY}/token"}
    data["targets"]["env"] = {"url": "http://127.0.0.1:1/", "token_env": "SYNCD_TEST_UNSET_VAR"}
    data["receiver"] = {"root": "received", "token_file": "${CREDENTIALS_DIRECTORY}/receiver"}
    path = write(base, yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_config(path)
    config = load_config(path, skip_secrets=True)
    assert str(config.targets["main"].token_file) == "${CREDENTIALS_DIRECTORY}/token"
    # everything else is still checked
    data["watches"][0]["target"] = "nope"
    with pytest.raises(ConfigError) as err:
        load_config(write(base, yaml.safe_dump(data)), skip_secrets=True)
    assert err.value.lines == ["config.yaml: watches[0].target: 'nope' is not a target (known: env, main)"]
    data["journal"] = "${SYNCD_TEST_UNSET_VAR}/journal.db"
    with pytest.raises(ConfigError) as err:
        load_config(write(base, yaml.safe_dump(data)), skip_secrets=True)
    assert err.value.lines == ["config.yaml: journal: '${SYNCD_TEST_UNSET_VAR}/journal.db' uses "
                               "${SYNCD_TEST_UNSET_VAR}, which is not set"]


def test_skip_secrets_still_wants_a_receiver_token_source(base):
    data = yaml.safe_load(GOOD)
    data["receiver"] = {"root": "received"}
    with pytest.raises(ConfigError, match="receiver: give token, token_file or token_env"):
        load_config(write(base, yaml.safe_dump(data)), skip_secrets=True)
