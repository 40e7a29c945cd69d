"""The ``s3`` protocol's pieces that need no server: settings, the error map, ETag forms,
ListParts paging, and that boto3 is loaded only for S3 targets."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from hypothesis import given
from hypothesis import strategies as st

from syncd.config import ConfigError, build_config, redacted
from syncd.upload.base import (
    AuthRejected,
    PermanentError,
    SessionGone,
    StorageFull,
    TransientError,
    UploadItem,
)
from syncd.upload.s3 import (
    S3Backend,
    Settings,
    _translate,
    etag_md5,
    format_mtime,
    multipart_etag,
    render_prefix,
)

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path, **target):
    (tmp_path / "drop").mkdir(exist_ok=True)
    data = {"journal": "j.db", "staging_dir": "staging",
            "targets": {"store": {"protocol": "s3", "bucket": "bkt", **target}},
            "watches": [{"name": "w", "path": "drop", "target": "store"}]}
    return build_config(data, base=tmp_path, name="c.yaml")


def _error(tmp_path, **target) -> str:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, **target)
    assert len(caught.value.lines) == 1, caught.value.lines
    return caught.value.lines[0]


# --- settings --------------------------------------------------------------------------------

def test_defaults_and_chain_credentials(tmp_path):
    target = _config(tmp_path).targets["store"]
    assert isinstance(target, Settings)
    assert (target.part_size, target.min_part_size, target.part_concurrency) == (16 * 2**20, 5 * 2**20, 4)
    assert target.access_key_id is None and target.resolve_secret() is None
    assert target.on_conflict == "overwrite"


@pytest.mark.parametrize(("keys", "message"), [
    ({"token": "x"}, "targets.store: token: S3 targets take access_key_id"),
    ({"access_key_id": "AKIA"}, "access_key_id needs secret_access_key_file or secret_access_key_env"),
    ({"secret_access_key_env": "S"}, "secret_access_key_env needs access_key_id"),
    ({"kms_key_id": "k"}, "kms_key_id needs server_side_encryption: aws:kms"),
    ({"endpoint_url": "minio:9000"}, "targets.store.endpoint_url: 'minio:9000' is not an http"),
    ({"prefix": "{hots}"}, "targets.store.prefix: '{hots}' is not a valid template"),
    ({"addressing_style": "dns"}, "targets.store.addressing_style: 'dns'"),
    ({"on_conflict": "rename"}, "targets.store.on_conflict: 'rename'"),
    ({"part_concurrency": 0}, "targets.store.part_concurrency: 0"),
    ({"bucket": "no/slash"}, "targets.store.bucket: 'no/slash'"),
    ({"bukket": "x"}, "targets.store.bukket: unknown key"),
])
def test_bad_keys_are_one_line_naming_the_key(tmp_path, keys, message):
    assert message in _error(tmp_path, **keys)


def test_secret_from_a_file_or_the_environment_and_its_problems(tmp_path, monkeypatch):
    (tmp_path / "secret").write_text("s3cr3t\n")
    target = _config(tmp_path, access_key_id="AKIA", secret_access_key_file="secret").targets["store"]
    assert target.resolve_secret() == "s3cr3t"
    monkeypatch.setenv("S3_SECRET", "from-env")
    target = _config(tmp_path, access_key_id="AKIA", secret_access_key_env="S3_SECRET").targets["store"]
    assert target.resolve_secret() == "from-env"
    assert "secret_access_key_env: environment variable 'NOPE' is not set" in \
        _error(tmp_path, access_key_id="AKIA", secret_access_key_env="NOPE")
    assert "secret_access_key_file: cannot read" in \
        _error(tmp_path, access_key_id="AKIA", secret_access_key_file="missing")


def test_crc32c_needs_the_crt_extra(tmp_path):
    import importlib.util

    if importlib.util.find_spec("awscrt") is not None:
        assert _config(tmp_path, checksum="crc32c").targets["store"].checksum == "crc32c"
    else:
        assert "targets.store.checksum: crc32c needs botocore's CRT extra" in _error(tmp_path, checksum="crc32c")
    assert _config(tmp_path, checksum="crc32").targets["store"].checksum == "crc32"


def test_check_config_shows_no_credentials(tmp_path):
    (tmp_path / "secret").write_text("s3cr3t")
    config = _config(tmp_path, access_key_id="AKIAEXAMPLE", secret_access_key_file="secret")
    shown = json.dumps(redacted(config), default=str)
    assert "AKIAEXAMPLE" not in shown and "s3cr3t" not in shown
    assert redacted(config)["targets"]["store"]["access_key_id"] == "***"


def test_prefix_host_template():
    import socket

    assert render_prefix("edge/{host}/") == f"edge/{socket.gethostname()}"
    assert render_prefix("") == ""


# --- ETags, metadata -----------------------------------------------------------------------

@given(st.lists(st.binary(max_size=64), min_size=1, max_size=20))
def test_multipart_etag_is_the_md5_of_the_part_md5s(parts):
    md5s = [hashlib.md5(p).hexdigest() for p in parts]
    etag = multipart_etag(md5s)
    digest, count = etag.split("-")
    assert int(count) == len(parts)
    assert digest == hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert etag_md5(f'"{etag}"') is None  # not a plain MD5


@given(st.binary(max_size=64))
def test_plain_etag_is_read_as_md5_in_any_case_and_quoting(data):
    md5 = hashlib.md5(data).hexdigest()
    assert etag_md5(f'"{md5.upper()}"') == md5
    assert etag_md5(md5) == md5


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_mtime_metadata_round_trips_to_the_nanosecond(ns):
    seconds, fraction = format_mtime(ns).split(".")
    assert int(seconds) * 10**9 + int(fraction) == ns and len(fraction) == 9


# --- the error map ---------------------------------------------------------------------------

def _client_error(code: str, status: int, headers: dict | None = None) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"},
                        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}}, "UploadPart")


@pytest.mark.parametrize(("code", "status", "kind", "reason"), [
    ("SlowDown", 503, TransientError, "throttled"),
    ("ServiceUnavailable", 503, TransientError, "throttled"),
    ("503", 503, TransientError, "server"),
    ("InternalError", 500, TransientError, "server"),
    ("RequestTimeout", 400, TransientError, "timeout"),
    ("TooManyRequests", 429, TransientError, "throttled"),
    ("BadDigest", 400, TransientError, "checksum"),
    ("InvalidPart", 400, TransientError, "protocol"),
    ("NoSuchUpload", 404, SessionGone, None),
    ("AccessDenied", 403, AuthRejected, None),
    ("InvalidAccessKeyId", 403, AuthRejected, None),
    ("SignatureDoesNotMatch", 403, AuthRejected, None),
    ("EntityTooLarge", 400, PermanentError, None),
    ("413", 413, PermanentError, None),
    ("XMinioStorageFull", 507, StorageFull, None),
    ("507", 507, StorageFull, None),
    ("NoSuchBucket", 404, PermanentError, None),
    ("InvalidArgument", 400, PermanentError, None),
])
def test_error_map(code, status, kind, reason):
    err = _translate(_client_error(code, status), "part 2", bucket="bkt")
    assert type(err) is kind, err
    if reason is not None:
        assert err.reason == reason
    assert "\n" not in str(err)


def test_error_map_names_the_bucket_and_the_size_limit():
    assert "bucket 'bkt' does not exist" in str(_translate(_client_error("NoSuchBucket", 404), "put", bucket="bkt"))
    assert "413" in str(_translate(_client_error("EntityTooLarge", 400), "put", bucket="bkt"))
    assert "authentication rejected" in str(_translate(_client_error("AccessDenied", 403), "put", bucket="bkt"))


def test_retry_after_is_honoured():
    err = _translate(_client_error("SlowDown", 503, {"retry-after": "7"}), "part 1", bucket="bkt")
    assert isinstance(err, TransientError) and err.retry_after == 7.0


@pytest.mark.parametrize(("exc", "reason"), [
    (ConnectTimeoutError(endpoint_url="http://x"), "timeout"),
    (ReadTimeoutError(endpoint_url="http://x"), "timeout"),
    (EndpointConnectionError(endpoint_url="http://x"), "connection"),
])
def test_connection_faults_are_transient(exc, reason):
    err = _translate(exc, "part 1", bucket="bkt")
    assert isinstance(err, TransientError) and err.reason == reason


# --- ListParts paging --------------------------------------------------------------------------

class _PagingClient:
    """ListParts over 2,500 parts, a page of 1,000 at a time, its marker inclusive as rclone's is."""

    def __init__(self, count: int, *, inclusive: bool):
        self.count = count
        self.inclusive = inclusive
        self.calls = 0

    def list_parts(self, *, Bucket, Key, UploadId, MaxParts, PartNumberMarker):  # noqa: N803 (boto3's names)
        self.calls += 1
        first = PartNumberMarker if self.inclusive and PartNumberMarker else PartNumberMarker + 1
        numbers = list(range(max(first, 1), min(first + MaxParts, self.count + 1)))
        return {"Parts": [{"PartNumber": n, "Size": 10, "ETag": f'"{hashlib.md5(str(n).encode()).hexdigest()}"'}
                          for n in numbers],
                "IsTruncated": numbers[-1] < self.count if numbers else False,
                "NextPartNumberMarker": numbers[-1] if numbers else 0}


@pytest.mark.parametrize("inclusive", [False, True], ids=["aws-marker", "rclone-inclusive-marker"])
def test_list_parts_reads_every_page_once(inclusive):
    client = _PagingClient(2500, inclusive=inclusive)
    backend = S3Backend("t", Settings(protocol="s3", bucket="bkt"), client=client)
    held = backend.resume(UploadItem(remote_name="f", size=25000, part_size=10), "up-1").committed()
    assert sorted(held) == list(range(1, 2501))
    assert held[7].md5 == hashlib.md5(b"7").hexdigest()
    assert client.calls <= 4


# --- boto3 only for S3 targets ---------------------------------------------------------------

def _imports_after(tmp_path: Path, target: dict, body: str) -> set[str]:
    """Which of boto3 / botocore a fresh interpreter has loaded after ``body`` ran with a
    config of one target."""
    (tmp_path / "drop").mkdir(exist_ok=True)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from syncd.config import build_config
        config = build_config({{"journal": "j.db", "staging_dir": "staging", "targets": {{"t": {target!r}}},
                               "watches": [{{"name": "w", "path": "drop", "target": "t"}}]}},
                              base=Path({str(tmp_path)!r}), name="c.yaml")
        """) + textwrap.dedent(body) + \
        "\nprint(json.dumps(sorted(m for m in ('boto3', 'botocore') if m in sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO,
                         check=False)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_chunked_only_daemon_never_imports_boto3(tmp_path):
    body = """
        import syncd.cli, syncd.daemon, syncd.pipeline, syncd.oneshot
        from syncd.upload.registry import build_backends
        build_backends(config.targets)
        """
    assert _imports_after(tmp_path, {"url": "http://127.0.0.1:1/chunked_upload/"}, body) == set()


def test_an_s3_config_is_checked_without_boto3_and_its_backend_loads_it(tmp_path):
    target = {"protocol": "s3", "bucket": "bkt", "endpoint_url": "http://127.0.0.1:1", "region": "us-east-1"}
    assert _imports_after(tmp_path, target, "") == set()
    body = """
        from syncd.upload.registry import build_backends
        build_backends(config.targets)
        """
    assert _imports_after(tmp_path, target, body) == {"boto3", "botocore"}
