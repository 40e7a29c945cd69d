"""``syncd cleanup`` and ``syncd check-config --probe`` against real S3 servers, run as the
operator runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from syncd.config import build_config
from syncd.journal import Fingerprint, Journal
from tests.support.daemon import REPO
from tests.support.files import md5_of
from tests.support.s3servers import BUCKET, S3Server

pytestmark = pytest.mark.s3


def write_config(base: Path, server: S3Server, *, prefix: str, bucket: str = BUCKET,
                 secret: str | None = None) -> Path:
    (base / "drop").mkdir(exist_ok=True)
    (base / "s3-secret").write_text(secret or server.secret_key)
    data = {
        "journal": "state/journal.db", "staging_dir": "state/staging",
        "targets": {
            "store": {"protocol": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": server.url,
                      "region": "us-east-1", "addressing_style": "path", "access_key_id": server.access_key,
                      "secret_access_key_file": "s3-secret", "retry": {"budget": "1s"}},
            "http": {"url": "http://127.0.0.1:1/chunked_upload/"},
        },
        "watches": [{"name": "w", "path": "drop", "target": "store"}],
    }
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def syncd(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    return subprocess.run([sys.executable, "-m", "syncd", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env=env, check=False)


def journal_owning(config: Path, remote_name: str, upload_id: str) -> None:
    """A journal whose open upload to ``store`` is ``upload_id`` (as the daemon leaves one)."""
    journal = Journal(config.parent / "state" / "journal.db")
    try:
        st = os.stat(config)
        fp = Fingerprint.of(st)
        row = journal.mark_settled("w", remote_name, fp) or journal.find_file("w", remote_name)
        up = journal.start_upload(row.id, target="store", source=str(config), remote_name=remote_name, fp=fp,
                                  size=st.st_size, part_size=5 * 1024**2, upload_key="k")
        journal.set_session(up.id, upload_id)
    finally:
        journal.close()


@pytest.mark.parametrize("server_name", ["moto", "rclone"])
def test_cleanup_lists_then_aborts_only_what_no_journal_row_owns(request, tmp_path, server_name):
    server: S3Server = request.getfixturevalue(f"{server_name}_s3")
    prefix = f"cleanup-{tmp_path.name}"
    client = server.client()

    def create(key: str) -> str:
        return client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]

    owned = create(f"{prefix}/owned.bin")
    orphan = create(f"{prefix}/deep/orphan.bin")
    elsewhere = create(f"other-{tmp_path.name}/x.bin")
    config = write_config(tmp_path, server, prefix=prefix)
    journal_owning(config, "owned.bin", owned)
    try:
        young = syncd("cleanup", "-c", str(config), "--target", "store")
        assert young.returncode == 0, young.stderr
        if server_name != "moto":  # moto says every upload was initiated on 2010-11-10
            assert "0 incomplete upload(s) to abort" in young.stdout and "2 kept" in young.stdout, young.stdout
        assert {u["UploadId"] for u in server.open_uploads(prefix)} == {owned, orphan}

        dry = syncd("cleanup", "-c", str(config), "--target", "store", "--older-than", "0s")
        assert dry.returncode == 0, dry.stderr
        assert f"would abort {prefix}/deep/orphan.bin (upload {orphan}" in dry.stdout, dry.stdout
        assert "owned.bin" not in dry.stdout and "other-" not in dry.stdout
        assert {u["UploadId"] for u in server.open_uploads(prefix)} == {owned, orphan}  # a dry run

        done = syncd("cleanup", "-c", str(config), "--target", "store", "--older-than", "0s", "--abort")
        assert done.returncode == 0, done.stderr
        assert f"aborted {prefix}/deep/orphan.bin" in done.stdout
        assert "1 incomplete upload(s) aborted; 1 kept" in done.stdout, done.stdout
        assert {u["UploadId"] for u in server.open_uploads(prefix)} == {owned}
        assert {u["UploadId"] for u in server.open_uploads(f"other-{tmp_path.name}/")} == {elsewhere}
    finally:
        server.abort_all(prefix)
        server.abort_all(f"other-{tmp_path.name}/")


def test_cleanup_refuses_a_target_without_incomplete_uploads(moto_s3, tmp_path):
    config = write_config(tmp_path, moto_s3, prefix="p")
    out = syncd("cleanup", "-c", str(config), "--target", "http")
    assert out.returncode == 2
    assert "target 'http' (chunked) keeps no incomplete uploads" in out.stderr
    out = syncd("cleanup", "-c", str(config), "--target", "nope")
    assert out.returncode == 2 and "'nope' is not a target (known: http, store)" in out.stderr


def test_probe_says_what_works_in_one_line_per_target(moto_s3, tmp_path):
    prefix = f"probe-{tmp_path.name}"
    config = write_config(tmp_path, moto_s3, prefix=prefix)
    out = syncd("check-config", "-c", str(config), "--probe")
    assert out.returncode == 0, out.stdout + out.stderr
    assert (f"# targets.store: ok: s3://{BUCKET}/{prefix}/: bucket reachable; put and delete under the prefix "
            "work") in out.stdout
    assert "# targets.http: not probed (no probe for protocol chunked)" in out.stdout
    assert moto_s3.keys(prefix) == []  # the probe object was deleted
    yaml.safe_load(out.stdout)  # still the resolved config


def test_probe_names_a_missing_bucket_and_a_wrong_key(rclone_s3, tmp_path):
    config = write_config(tmp_path, rclone_s3, prefix="p", bucket="no-such-bucket")
    out = syncd("check-config", "-c", str(config), "--probe")
    assert out.returncode == 1
    assert "# targets.store: FAILED: bucket 'no-such-bucket' does not exist" in out.stdout, out.stdout
    config = write_config(tmp_path, rclone_s3, prefix="p", secret="wrong-secret")
    out = syncd("check-config", "-c", str(config), "--probe")
    assert out.returncode == 1
    assert "# targets.store: FAILED: authentication rejected" in out.stdout, out.stdout
    assert "wrong-secret" not in out.stdout + out.stderr


def _readme_blocks(language: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Many machines, one object store"):]
    section = section[:section.index("\n## ", 10)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_readme_object_store_snippets_work(moto_s3, rclone_s3, tmp_path, monkeypatch):
    """The README's config snippets load; the endpoint one, pointed at the local servers,
    probes ok; the lifecycle rule is taken by the S3 API."""
    aws, endpoint = (yaml.safe_load(block)["targets"]["archive"] for block in _readme_blocks("yaml"))
    (tmp_path / "drop").mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "s3-secret").write_text("x")
    for target in (aws, endpoint):
        build_config({"journal": "j.db", "staging_dir": "s", "targets": {"archive": target},
                      "watches": [{"name": "w", "path": "drop", "target": "archive"}]}, base=tmp_path, name="c.yaml")
    for server in (moto_s3, rclone_s3):
        base = tmp_path / server.name
        base.mkdir()
        (base / "drop").mkdir()
        (base / "s3-secret").write_text(server.secret_key)
        local = {**endpoint, "endpoint_url": server.url, "bucket": BUCKET, "access_key_id": server.access_key,
                 "secret_access_key_file": str(base / "s3-secret")}
        config = base / "config.yaml"
        config.write_text(yaml.safe_dump({"journal": "j.db", "staging_dir": "s", "targets": {"archive": local},
                                          "watches": [{"name": "w", "path": "drop", "target": "archive"}]}))
        out = syncd("check-config", "-c", str(config), "--probe")
        assert out.returncode == 0 and "put and delete under the prefix work" in out.stdout, out.stdout + out.stderr
    policy, rule = (json.loads(block) for block in _readme_blocks("json"))
    assert {s["Sid"] for s in policy["Statement"]} == {"Bucket", "OwnPrefix"}
    moto_s3.client().put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration=rule)
    stored = moto_s3.client().get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert stored[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    moto_s3.client().delete_bucket_lifecycle(Bucket=BUCKET)


def test_syncd_upload_to_an_s3_target(rclone_s3, tmp_path):
    """The one-shot command drives the same engine and backend: a small and a multipart
    file, under the prefix and --remote-dir; run again, nothing is sent twice."""
    prefix = f"oneshot-{tmp_path.name}"
    config = write_config(tmp_path, rclone_s3, prefix=prefix)
    data = yaml.safe_load(config.read_text())
    data["targets"]["store"].update(part_size="5MiB")
    config.write_text(yaml.safe_dump(data))
    small, big = tmp_path / "small.bin", tmp_path / "big.bin"
    small.write_bytes(os.urandom(1000))
    big.write_bytes(os.urandom(11 * 1024 * 1024 + 3))  # three parts of 5 MiB
    out = syncd("upload", "-c", str(config), "--target", "store", "--remote-dir", "day1", str(small), str(big))
    assert out.returncode == 0, out.stdout + out.stderr
    for path in (small, big):
        key = f"{prefix}/day1/{path.name}"
        assert rclone_s3.stored_md5(key) == md5_of(path), key
    again = syncd("upload", "-c", str(config), "--target", "store", "--remote-dir", "day1", str(small), str(big))
    assert again.returncode == 0 and "already uploaded" in again.stdout + again.stderr, again.stdout + again.stderr
