"""The tus target's keys, the verification policy check-config enforces, what ``syncd
status`` shows of done files, and the tus header codecs."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.config import ConfigError, load_config, redacted
from syncd.journal import Fingerprint, Journal
from syncd.upload.tus import ServerInfo, Settings, encode_metadata
from tests.support.tus import decode_metadata

BASE = """
journal: state/journal.db
staging_dir: state/staging
targets:
  media:
    protocol: tus
    url: https://uploads.example.test/files/
watches:
  - name: drop
    path: drop
    target: media
"""


@pytest.fixture
def base(tmp_path):
    (tmp_path / "drop").mkdir()
    return tmp_path


def load(base, text=BASE, **changes):
    data = yaml.safe_load(textwrap.dedent(text))
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        node[keys[-1]] = value
    (base / "config.yaml").write_text(yaml.safe_dump(data))
    return load_config(base / "config.yaml")


def errors(base, **changes):
    with pytest.raises(ConfigError) as err:
        load(base, **changes)
    for line in err.value.lines:
        assert "\n" not in line and line.startswith("config.yaml: ")
    return err.value.lines


def test_defaults(base):
    target = load(base).targets["media"]
    assert isinstance(target, Settings)
    assert target.url == "https://uploads.example.test/files/"
    assert (target.verify, target.token_header, target.token_scheme) == ("server", "Authorization", "Bearer")
    assert target.part_size == 50 * 1024**2
    assert target.verified_by() == "size"


def test_token_header_and_headers_from_env_and_file(base, monkeypatch):
    monkeypatch.setenv("TUS_KEY", "from-env")
    (base / "tenant").write_text("acme\n")
    target = load(base, targets__media__token="t0k", targets__media__token_header="X-Api-Token",
                  targets__media__token_scheme="",
                  targets__media__headers={"X-Key": {"env": "TUS_KEY"}, "X-Tenant": {"file": "tenant"},
                                           "X-Plain": "visible-secret"}).targets["media"]
    assert target.resolve_headers() == {"X-Key": "from-env", "X-Tenant": "acme", "X-Plain": "visible-secret",
                                        "X-Api-Token": "t0k"}


def test_header_values_are_never_printed(base):
    config = load(base, targets__media__headers={"X-Plain": "visible-secret"}, targets__media__token="t0k")
    dumped = str(redacted(config))
    assert "visible-secret" not in dumped and "t0k" not in dumped


@pytest.mark.parametrize("changes, expected", [
    ({"targets__media__verify": "md5"}, "targets.media.verify: 'md5': input should be 'server', 'read_back'"),
    ({"targets__media__metadata": {"filename": "x"}}, "targets.media.metadata: 'filename' is always the remote name"),
    ({"targets__media__metadata": {"a b": "x"}}, "targets.media.metadata: 'a b' is not a metadata key"),
    ({"targets__media__headers": {"Upload-Offset": "1"}}, "targets.media.headers: 'Upload-Offset' is set by syncd"),
    ({"targets__media__headers": {"X-A": {"env": "X", "file": "y"}}}, "targets.media.headers.X-A"),
    ({"targets__media__headers": {"X-A": {"env": "SYNCD_TEST_UNSET_VAR"}}},
     "targets.media.headers.X-A: environment variable 'SYNCD_TEST_UNSET_VAR' is not set"),
    ({"targets__media__url": "ftp://x/"}, "targets.media.url: 'ftp://x/' is not an http:// or https:// URL"),
])
def test_bad_keys_are_one_line_naming_the_key(base, changes, expected):
    assert any(expected in line for line in errors(base, **changes))


def test_delete_after_a_size_only_upload_is_refused(base):
    lines = errors(base, watches__0__after_upload="delete")
    assert lines == ["config.yaml: watches[0].after_upload: delete needs a verified copy, but target 'media' "
                     "verifies only sizes: set targets.media.verify: read_back (or verify: size to accept that)"]
    lines = errors(base, watches__0__after_upload="move", watches__0__done_dir="done")
    assert "watches[0].after_upload: move needs a verified copy" in lines[0]


@pytest.mark.parametrize("verify, verified_by", [("read_back", "read-back"), ("size", "size")])
def test_delete_is_allowed_once_the_target_says_how_copies_are_checked(base, verify, verified_by):
    config = load(base, watches__0__after_upload="delete", targets__media__verify=verify)
    assert config.targets["media"].verified_by() == verified_by


def test_chunked_targets_verify_md5_and_may_delete(base):
    config = load(base, targets__media={"url": "http://127.0.0.1:8765/chunked_upload/"},
                  watches__0__after_upload="delete")
    assert config.targets["media"].verified_by() == "md5"


def test_status_shows_what_each_done_file_was_verified_by(tmp_path):
    from syncd.status import collect, render

    journal = Journal(tmp_path / "journal.db")
    try:
        for i, how in enumerate(["md5", "read-back", "size", "read-back"]):
            row = journal.mark_settled("drop", f"f{i}.bin", Fingerprint(1, i + 1, 2048, 5))
            journal.set_state(row.id, "uploading")
            journal.mark_done(row.id, md5="0" * 32, remote_name=f"r/f{i}.bin", target="media", verified=how)
        data = collect(journal, limit=2)
    finally:
        journal.close()
    assert data["verified"] == {"md5": 1, "read-back": 2, "size": 1}
    assert len(data["done"]) == 2 and {d["verified"] for d in data["done"]} <= {"md5", "read-back", "size"}
    text = render(data)
    assert "done, the copy verified by: md5 1, read-back 2, size 1" in text
    assert any(line.endswith(f"verified by {d['verified']}") and d["path"] in line
               for d in data["done"] for line in text.splitlines())


def test_server_info_uses_what_the_server_offers():
    plain = ServerInfo.from_headers({"Tus-Version": "1.0.0", "Tus-Extension": "creation,termination",
                                     "Tus-Max-Size": "1024"})
    assert (plain.checksum, plain.max_size, plain.verifies) == (None, 1024, "size")
    summed = ServerInfo.from_headers({"Tus-Extension": "creation,checksum", "Tus-Checksum-Algorithm": "crc32,sha1,md5"})
    assert (summed.checksum, summed.verifies) == ("md5", "part-checksum")
    unknown = ServerInfo.from_headers({"Tus-Extension": "creation,checksum", "Tus-Checksum-Algorithm": "crc32"})
    assert unknown.checksum is None
    # an algorithm list without the extension is not an offer
    assert ServerInfo.from_headers({"Tus-Extension": "creation", "Tus-Checksum-Algorithm": "md5"}).checksum is None


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
                               min_size=1, max_size=12),
                       st.text(max_size=40), max_size=5))
def test_metadata_round_trips(pairs):
    assert decode_metadata(encode_metadata(pairs)) == pairs
