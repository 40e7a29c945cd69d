"""The ``syncd`` command line, run as a real subprocess."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from syncd import __version__
from syncd.journal import Fingerprint, Journal
from tests.support.daemon import REPO, make_config
from tests.support.files import digest_of, md5_of, write_random


def syncd(*args: str, timeout: float = 60, cwd=REPO, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "syncd", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def test_version():
    out = syncd("version")
    assert out.returncode == 0 and out.stdout.strip() == f"syncd {__version__}"


def test_help_lists_every_command():
    out = syncd("--help")
    assert out.returncode == 0
    for command in ("run", "serve", "check-config", "status", "retry", "upload", "version"):
        assert command in out.stdout


def test_usage_error_exits_2():
    out = syncd("retry")
    assert out.returncode == 2


@pytest.mark.parametrize("patch,expected", [
    ({"watches": [{"name": "w", "path": "drop", "target": "main", "settle": {"quiet": "soon"}}]},
     "config.yaml: watches[0].settle.quiet: 'soon' is not a duration (e.g. 5s, 2m)"),
    ({"watches": [{"name": "w", "path": "missing", "target": "main"}]},
     "config.yaml: watches[0].path: '{base}/missing' does not exist or is not a folder"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main"},
                  {"name": "b", "path": "drop/sub", "target": "main"}]},
     "config.yaml: watches[1].path: '{base}/drop/sub' overlaps watch 'a'"),
    ({"watches": [{"name": "a", "path": "drop", "target": "main", "after_upload": "move", "done_dir": "drop/done"}]},
     "config.yaml: watches[0].done_dir: '{base}/drop/done' lies inside watch 'a' and would be uploaded again"),
    ({"staging_dir": "drop/staging"}, "config.yaml: staging_dir: '{base}/drop/staging' lies inside watch 'drop'"),
    ({"watches": [{"name": "a", "path": "drop", "target": "elsewhere"}]},
     "config.yaml: watches[0].target: 'elsewhere' is not a target (known: main)"),
    ({"journal": "blocker/journal.db"}, "config.yaml: journal: cannot create folder '{base}/blocker'"),
    ({"surprise": True}, "config.yaml: surprise: unknown key"),
])
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_2_with_one_line(tmp_path, patch, expected, command):
    (tmp_path / "drop" / "sub").mkdir(parents=True)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    config = make_config(tmp_path, url="http://127.0.0.1:9/chunked_upload/", token="t")
    data = yaml.safe_load(config.read_text())
    patch = copy.deepcopy(patch)
    for watch in patch.get("watches", []):
        for key in ("path", "done_dir"):
            if key in watch:
                watch[key] = str(tmp_path / watch[key])
    for key in ("staging_dir", "journal"):
        if key in patch:
            patch[key] = str(tmp_path / patch[key])
    data.update(patch)
    config.write_text(yaml.safe_dump(data))
    out = syncd(command, "-c", str(config))
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected.format(base=tmp_path)), lines


def test_check_config_prints_resolved_config_without_secrets(tmp_path):
    config = make_config(tmp_path, url="http://127.0.0.1:9/chunked_upload/", token="very-secret-token")
    out = syncd("check-config", "-c", str(config))
    assert out.returncode == 0, out.stderr
    assert "very-secret-token" not in out.stdout + out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["targets"]["main"]["token"] == "***"
    assert resolved["watches"][0]["settle"]["quiet"] == 0.3
    assert resolved["targets"]["main"]["part_size"] == 64 * 1024


def _journal_with_rows(tmp_path):
    config = make_config(tmp_path, url="http://127.0.0.1:9/chunked_upload/", token="t")
    journal = Journal(tmp_path / "state" / "journal.db")
    for name in ("a.bin", "b.bin", "c.bin"):
        write_random(tmp_path / "drop" / name, 10)
    import os
    rows = {n: journal.mark_settled("drop", n, Fingerprint.of(os.stat(tmp_path / "drop" / n)))
            for n in ("a.bin", "b.bin", "c.bin")}
    journal.set_state(rows["a.bin"].id, "failed", error="too large for the server (HTTP 413): limit 1 GiB")
    journal.set_state(rows["b.bin"].id, "waiting", error="HTTP 503: busy", next_attempt_at=4102444800.0,
                      attempts_delta=2)
    journal.set_state(rows["c.bin"].id, "failed", error="HTTP 507: full")
    journal.close()
    return config


def test_status_table_and_json(tmp_path):
    config = _journal_with_rows(tmp_path)
    out = syncd("status", "-c", str(config))
    assert out.returncode == 0, out.stderr
    assert "failed 2" in out.stdout and "waiting 1" in out.stdout
    assert "drop:a.bin  too large for the server (HTTP 413): limit 1 GiB" in out.stdout
    assert "drop:b.bin  next try in" in out.stdout and "attempt 3: HTTP 503: busy" in out.stdout
    data = json.loads(syncd("status", "-c", str(config), "--json").stdout)
    assert data["counts"]["failed"] == 2
    assert {f["path"] for f in data["failed"]} == {"a.bin", "c.bin"}
    assert data["waiting"][0]["error"] == "HTTP 503: busy"


def test_status_without_journal_is_a_clear_error(tmp_path):
    config = make_config(tmp_path, url="http://127.0.0.1:9/chunked_upload/", token="t")
    out = syncd("status", "-c", str(config))
    assert out.returncode == 1
    assert "no journal here" in out.stderr


def test_retry_paths_and_all_failed(tmp_path):
    config = _journal_with_rows(tmp_path)
    out = syncd("retry", "-c", str(config), str(tmp_path / "drop" / "a.bin"), str(tmp_path / "nope.bin"))
    assert out.returncode == 1
    assert "1 file(s) will be tried again" in out.stdout
    assert "nope.bin: not a file syncd knows" in out.stderr
    out = syncd("retry", "-c", str(config), "--all-failed")
    assert out.returncode == 0 and "1 failed file(s) will be tried again" in out.stdout
    journal = Journal(tmp_path / "state" / "journal.db", readonly=True)
    try:
        assert journal.counts()["failed"] == 0 and journal.counts()["ready"] == 2
    finally:
        journal.close()


def test_oneshot_upload_to_the_receiver_and_again(receiver, tmp_path):
    peer = receiver
    config = make_config(tmp_path, url=peer.url, token=peer.token, part_size="64KiB")
    path = write_random(tmp_path / "one shot.bin", 300 * 1024 + 17)
    out = syncd("upload", "-c", str(config), "--target", "main", "--remote-dir", "manual", str(path))
    assert out.returncode == 0, out.stderr
    # in parts to syncd serve: verified with SHA-256 (a small file sent whole keeps MD5)
    assert (f"uploaded as manual/one shot.bin (sha256 {digest_of(path, 'sha256')}) to target main, "
            "verified by sha256") in out.stdout
    assert peer.stored_md5("manual/one shot.bin") == md5_of(path)
    again = syncd("upload", "-c", str(config), "--target", "main", "--remote-dir", "manual", str(path))
    assert again.returncode == 0 and "already uploaded" in again.stdout
    assert peer.completions("manual/one shot.bin") == 1
    # "already uploaded" means this content to this target under this name: another
    # remote folder is another copy (issue 13, item 1)
    elsewhere = syncd("upload", "-c", str(config), "--target", "main", str(path))
    assert elsewhere.returncode == 0 and "already uploaded" not in elsewhere.stdout
    assert peer.stored_md5("one shot.bin") == md5_of(path)
    missing = syncd("upload", "-c", str(config), "--target", "main", str(tmp_path / "missing.bin"))
    assert missing.returncode == 1 and "missing.bin: No such file or directory" in missing.stderr
    wrong = syncd("upload", "-c", str(config), "--target", "nope", str(path))
    assert wrong.returncode == 2 and "--target: 'nope' is not a target" in wrong.stderr


def test_second_daemon_on_the_same_journal_is_refused(tmp_path, receiver):
    from tests.support.daemon import DaemonProcess, wait_until

    config = make_config(tmp_path, url=receiver.url, token=receiver.token)
    with DaemonProcess(config) as first:
        wait_until(lambda: first.journal_path.exists(), timeout=10)
        out = syncd("run", "-c", str(config), timeout=30)
        assert out.returncode == 1
        assert f"another syncd run (pid {first.proc.pid}) is using this journal" in out.stderr
        write_random(tmp_path / "drop" / "still.bin", 10)
        first.wait_states({"drop:still.bin": "done"})


def test_receiver_port_in_use_is_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        token = "a-realistic-token-0123456789"
        config = make_config(tmp_path, url=f"http://127.0.0.1:{port}/chunked_upload/", token=token,
                             receiver={"root": str(tmp_path / "received"), "listen": f"127.0.0.1:{port}",
                                       "token": token})
        out = syncd("run", "-c", str(config), timeout=30)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"cannot start: receiver: cannot start the receiver on 127.0.0.1:{port}" in errors[0]


def test_check_config_skip_secrets_outside_the_service(tmp_path):
    config = make_config(tmp_path, url="http://127.0.0.1:9/chunked_upload/", token=None)
    data = yaml.safe_load(config.read_text())
    data["targets"]["main"]["token_file"] = "${CREDENTIALS_DIRECTORY}/token"
    config.write_text(yaml.safe_dump(data))
    env_without = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    out = syncd("check-config", "-c", str(config), env=env_without)
    assert out.returncode == 2 and "CREDENTIALS_DIRECTORY" in out.stderr
    out = syncd("check-config", "--skip-secrets", "-c", str(config), env=env_without)
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["targets"]["main"]["token_file"] == "${CREDENTIALS_DIRECTORY}/token"
    data["watches"][0]["settle"]["quiet"] = "soon"
    config.write_text(yaml.safe_dump(data))
    out = syncd("check-config", "--skip-secrets", "-c", str(config), env=env_without)
    assert out.returncode == 2 and "watches[0].settle.quiet: 'soon' is not a duration" in out.stderr


# --- issue 13 items 5 and 7: the quick start for every command; retry takes what status prints ----

def _quick_start_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SYNCD_CONFIG"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_retry_check_config_without_c_use_the_quick_start(tmp_path):
    env = _quick_start_env()
    out = syncd("status", cwd=tmp_path, env=env)
    assert out.returncode == 1, out
    assert "no -c given" in out.stderr and f"{tmp_path}/.syncd" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # status creates nothing
    out = syncd("retry", "--all-failed", cwd=tmp_path, env=env)
    assert out.returncode == 1 and "no -c given" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    journal = Journal(tmp_path / ".syncd" / "journal.db")
    write_random(tmp_path / "drop" / "broken.bin", 10)
    row = journal.mark_settled("drop", "broken.bin", Fingerprint.of(os.stat(tmp_path / "drop" / "broken.bin")))
    journal.set_state(row.id, "failed", error="HTTP 413: too large")
    journal.close()
    out = syncd("status", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "failed 1" in out.stdout and "drop:broken.bin  HTTP 413: too large" in out.stdout
    out = syncd("retry", "drop:broken.bin", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "1 file(s) will be tried again" in out.stdout, out

    out = syncd("check-config", "--port", "9123", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["targets"]["local"]["url"] == "http://127.0.0.1:9123/chunked_upload/"
    assert resolved["receiver"]["listen"] == ["127.0.0.1", 9123]
    assert resolved["journal"] == str(tmp_path / ".syncd" / "journal.db")
    assert not (tmp_path / "received").exists()  # check-config creates nothing either


def test_port_with_a_config_file_is_a_usage_error(tmp_path):
    config = make_config(tmp_path, url="http://127.0.0.1:9/chunked_upload/", token="t")
    for command in ("run", "status", "check-config"):
        out = syncd(command, "-c", str(config), "--port", "9123")
        assert out.returncode == 2, out
        assert "--port is for the quick start" in out.stderr


def test_quick_start_on_another_port_then_status(tmp_path):
    env = _quick_start_env()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "run", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "run.log").open("wb"))
    try:
        from tests.support.daemon import wait_until

        wait_until(lambda: (tmp_path / "drop").is_dir() and (tmp_path / ".syncd" / "journal.db").exists(),
                   timeout=20, what="quick start folders")
        path = write_random(tmp_path / "drop" / "a.bin", 5000)
        wait_until(lambda: proc.poll() is not None or (tmp_path / "received" / "a.bin").exists(), timeout=30,
                   what="a.bin received")
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert md5_of(tmp_path / "received" / "a.bin") == md5_of(path)
        assert f"127.0.0.1:{port}" in (tmp_path / "run.log").read_text()
        out = wait_until(lambda: (o := syncd("status", cwd=tmp_path, env=env)).returncode == 0
                         and "done 1" in o.stdout and o, timeout=10, what="status done 1")
        assert "failed 0" in out.stdout
    finally:
        _stop(proc)


def test_retry_accepts_the_names_status_prints(tmp_path):
    config = _journal_with_rows(tmp_path)
    status = syncd("status", "-c", str(config))
    assert "drop:a.bin  too large" in status.stdout
    out = syncd("retry", "-c", str(config), "drop:a.bin", "drop:nope.bin", "elsewhere:c.bin")
    assert out.returncode == 1
    assert "1 file(s) will be tried again" in out.stdout
    assert "drop:nope.bin: not a file syncd knows" in out.stderr
    assert "elsewhere:c.bin: not a file syncd knows" in out.stderr
    journal = Journal(tmp_path / "state" / "journal.db", readonly=True)
    try:
        assert journal.find_file("drop", "a.bin").state == "ready"
        assert journal.find_file("drop", "c.bin").state == "failed"
    finally:
        journal.close()


def test_retry_without_a_journal_creates_none(tmp_path):
    config = make_config(tmp_path, url="http://127.0.0.1:9/chunked_upload/", token="t")
    out = syncd("retry", "-c", str(config), "--all-failed")
    assert out.returncode == 1 and "no journal here" in out.stderr
    assert not (tmp_path / "state").exists()


def test_output_into_a_closed_pipe_ends_quietly_with_1():
    """``syncd version | head -0``: the reader is gone before syncd writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "syncd", "version"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, cwd=REPO)
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == ""


def test_oneshot_upload_sends_small_files_together(receiver, tmp_path):
    """Small files go several to a request once the server has said it takes that (its
    first answer), as the daemon sends them; a bigger file goes in parts beside them.
    Every file arrives once and is reported on a line of its own."""
    from tests.support.fault_proxy import FaultProxy

    peer = receiver
    small = [write_random(tmp_path / f"small-{i:02d}.bin", 4096 + i) for i in range(12)]
    big = write_random(tmp_path / "big.bin", 300 * 1024 + 5)
    files = [*small[:6], big, *small[6:]]
    with FaultProxy(peer.url, seed=1, rules=[]) as proxy:
        config = make_config(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size="64KiB")
        out = syncd("upload", "-c", str(config), "--target", "main", "--remote-dir", "many",
                    *map(str, files), str(small[8]))  # one named twice: it goes once
        seen = list(proxy.seen)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("uploaded as") == len(files) + 1 and out.stdout.count("already uploaded") == 1
    for path in files:
        assert f"{path}: uploaded as many/{path.name} (" in out.stdout
        assert peer.stored_md5(f"many/{path.name}") == md5_of(path)
        assert peer.completions(f"many/{path.name}") == 1
    batches = [s for s in seen if s.headers.get("syncd-batch") == "1"]
    assert batches and all(s.outcome == "200" for s in batches)
    assert sum(len(s.filenames) for s in batches) >= 10  # all small files but the first (or two)
    again = syncd("upload", "-c", str(config), "--target", "main", "--remote-dir", "many", *map(str, files))
    assert again.returncode == 0 and again.stdout.count("already uploaded") == len(files)


def _environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.decode().partition("=") for item in f.read().split(b"\0") if item]
    return {k: v for k, _, v in pairs}


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="GLIBC_TUNABLES is glibc's")
@pytest.mark.parametrize("program", ["python -m syncd", "syncd"])
@pytest.mark.parametrize("tunables", [None, "glibc.malloc.tcache_count=3"])
def test_the_daemon_runs_without_glibcs_thread_caches_unless_the_operator_set_them(tmp_path, program, tunables):
    """``syncd run`` starts again in the same process with GLIBC_TUNABLES set (the kernel's
    record of a program's environment is the one it was started with), and then works."""
    env = {k: v for k, v in _quick_start_env().items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    command = [sys.executable, "-m", "syncd"] if program == "python -m syncd" else \
        [str(os.path.join(os.path.dirname(sys.executable), "syncd"))]
    if not os.path.exists(command[0]):
        pytest.skip(f"no {command[0]}")
    log = tmp_path / "run.log"
    proc = subprocess.Popen([*command, "run", "--port", str(_free_port())], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        from tests.support.daemon import wait_until

        wait_until(lambda: proc.poll() is not None or "receiver listening" in log.read_text(), timeout=20,
                   what="the quick start ready")
        assert proc.poll() is None, log.read_text()
        expected = "glibc.malloc.tcache_count=0" if tunables is None else tunables
        assert _environ_of(proc.pid).get("GLIBC_TUNABLES") == expected
        path = write_random(tmp_path / "drop" / "a.bin", 5000)
        wait_until(lambda: (tmp_path / "received" / "a.bin").exists(), timeout=30, what="a.bin received")
        assert md5_of(tmp_path / "received" / "a.bin") == md5_of(path)
    finally:
        _stop(proc)
