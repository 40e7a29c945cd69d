"""Shared machinery of the benchmarks: measured child processes, servers on 127.0.0.1,
test files, page-cache eviction, statistics and tables.

Every contender runs as its own process so that its peak RSS, CPU time and disk reads are
its own: the harness polls the child's ``VmHWM`` (its peak RSS so far, a high-water mark, so
polling every 5 ms misses nothing but growth in the last 5 ms), waits for its exit without
reaping it (``waitid(WNOWAIT)``), reads the zombie's ``/proc/PID/io`` (its totals, threads
and reaped children included), then reaps it with ``wait4`` for its CPU time.
``wait4``'s ``ru_maxrss`` is not used: Linux carries the parent's RSS at fork/vfork into a
child's ru_maxrss across exec, so every child would show at least the harness's size.
Servers run for a whole benchmark; their peak RSS is reset before each measured run by
writing ``5`` to ``/proc/PID/clear_refs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MiB = 1024 * 1024
GiB = 1024 * MiB

if str(REPO) not in sys.path:  # tests.support.* (the drf server, the naive client)
    sys.path.insert(0, str(REPO))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- temp files


WORK_ROOT = os.environ.get("SYNCD_BENCH_TMP", "/tmp")
"""where benchmarks make their temp folders: another file system can be named here, e.g. a
freshly made one, quiet, for small-file figures (see README)"""


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"syncd-bench-{prefix}-", dir=WORK_ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_random(path: Path, size: int) -> Path:
    """``size`` random bytes, fsynced (so eviction can drop them from the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    return path


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache, so the next reader reads the disk.

    ``posix_fadvise(DONTNEED)`` on that one file (after ``fdatasync``, so no page is
    dirty): the same effect for the file as ``echo 3 > /proc/sys/vm/drop_caches``
    without emptying the cache of everyone else on the machine.

    First ``sync()``: whatever earlier runs left dirty (a server that does not fsync
    leaves its whole upload in the page cache) is written now, not by the kernel's
    writeback in the middle of the next run, whose reads of the file would queue behind it.
    """
    os.sync()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_all_caches() -> bool:
    """The global way (root only); returns False where it is not permitted."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- measured processes


@dataclass
class ProcResult:
    cmd: list[str]
    returncode: int
    wall: float
    """seconds from spawn to exit"""
    cpu: float
    """user + system seconds of the process (and its reaped children)"""
    maxrss: int
    """peak resident set (VmHWM), bytes; -1 if never seen"""
    read_bytes: int
    """bytes the process caused to be read from the block device (/proc/PID/io)"""
    rchar: int
    """bytes passed through read()/pread() of any kind (files, pipes, sockets)"""
    timed_out: bool = False
    output: str = ""

    def check(self) -> ProcResult:
        if self.returncode != 0 or self.timed_out:
            why = "timed out" if self.timed_out else f"exit {self.returncode}"
            raise RuntimeError(f"{' '.join(self.cmd[:6])}: {why}\n{self.output[-3000:]}")
        return self


def _proc_io(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines() if ": " in line)}


def vm_hwm(pid: int) -> int:
    """Peak RSS so far of a live process, bytes (-1: gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def run_measured(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdin: Any = subprocess.DEVNULL) -> ProcResult:
    """Run ``cmd`` to its end (killed after ``timeout`` s) and measure it."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd or REPO, start_new_session=True)
        timed_out = False
        deadline = start + timeout
        peak = -1
        try:
            while True:
                peak = max(peak, vm_hwm(proc.pid))
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
                if time.perf_counter() > deadline:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                    break
                time.sleep(0.005)
            wall = time.perf_counter() - start
            io = _proc_io(proc.pid)  # the zombie still has its accounting
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                proc.wait(10)
            raise
        out.seek(0)
        output = out.read().decode(errors="replace")
    return ProcResult(cmd=list(cmd), returncode=proc.returncode, wall=wall,
                      cpu=usage.ru_utime + usage.ru_stime, maxrss=peak,
                      read_bytes=io.get("read_bytes", -1), rchar=io.get("rchar", -1),
                      timed_out=timed_out, output=output)


class ServerProcess:
    """A long-running child; its peak RSS can be reset and read per measured run."""

    name = "server"
    pid: int

    def reset_peak(self) -> None:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5\n")

    def peak_rss(self) -> int:
        return vm_hwm(self.pid)

    def cpu(self) -> float:
        """user + system seconds so far (all threads)."""
        return proc_cpu(self.pid)


def _wait_http(url: str, *, proc: subprocess.Popen, timeout: float, ok=(200, 401, 404, 405)) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before serving")
        try:
            with requests.get(url, timeout=2) as r:
                if r.status_code in ok:
                    return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Receiver(ServerProcess):
    """``syncd serve`` as its own process, storing under a temp dir."""

    name = "syncd serve"

    def __init__(self, root: Path, *, code: Path = REPO):
        self.root = root
        self.code = code
        self.store = root / "store"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/chunked_upload/"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Receiver:
        self.store.mkdir(parents=True, exist_ok=True)
        token_file = self.root / "receiver.token"
        token_file.write_text(self.token)
        self._log = (self.root / "receiver.log").open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "syncd", "serve", "--root", str(self.store),
             "--listen", f"127.0.0.1:{self.port}", "--token-file", str(token_file),
             "--max-size", "none", "--min-free", "0", "--log-level", "WARNING"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.code,
            env=child_env(self.code))
        self.pid = self.proc.pid
        try:
            _wait_http(self.url, proc=self.proc, timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def stored(self) -> list[Path]:
        return [p for p in self.store.rglob("*") if p.is_file() and ".incoming" not in p.parts]

    def clear(self) -> None:
        for p in self.stored():
            p.unlink(missing_ok=True)

    def stop(self) -> None:
        _stop(self.proc)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


class Drf(ServerProcess):
    """The real drf-chunked-upload (Django + DRF + waitress), from tests/support/drf.py."""

    name = "drf-chunked-upload"

    def __init__(self) -> None:
        self.server = None

    def start(self) -> Drf:
        from tests.support.drf import DrfServer

        self.server = DrfServer.start()
        self.pid = self.server.process.pid
        self.url = self.server.url
        self.token = self.server.token
        return self

    def stored(self) -> list[Path]:
        media = self.server.media_root
        return [p for p in media.rglob("*") if p.is_file()]

    def clear(self) -> None:
        for p in self.stored():
            p.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


SINK_CODE = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(8)
buf = bytearray(1 << 20); view = memoryview(buf)
while True:
    conn, _ = srv.accept()
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk: break
            head += chunk
        if b"\r\n\r\n" not in head: continue
        header, rest = head.split(b"\r\n\r\n", 1)
        length = 0
        for line in header.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length": length = int(v)
        left = length - len(rest)
        while left > 0:
            n = conn.recv_into(view, min(left, len(buf)))
            if not n: break
            left -= n
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
"""


class Sink(ServerProcess):
    """A plain HTTP sink: reads the request body with recv_into and throws it away."""

    name = "sink"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/sink"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Sink:
        self.proc = subprocess.Popen([PYTHON, "-c", SINK_CODE, str(self.port)], stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("the sink did not start")

    def stop(self) -> None:
        _stop(self.proc)


# --------------------------------------------------------------------------- syncd configs


def syncd_config(base: Path, *, url: str, token: str, part_size: int | str, uploads: int = 1,
                 small_uploads: int | None = None, quiet: str = "1s", max_wait: str = "10m", watch: Path | None = None,
                 recursive: bool = True, extra_watch: dict | None = None, extra_target: dict | None = None) -> Path:
    """A config with target ``main`` and one watch ``drop`` (on ``watch`` or ``base/drop``)."""
    drop = watch or (base / "drop")
    drop.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "journal": str(base / "state" / "journal.db"),
        "staging_dir": str(base / "state" / "staging"),
        "concurrency": {"uploads": uploads, **({"small_uploads": small_uploads} if small_uploads else {})},
        "log": {"level": "WARNING"},
        "targets": {"main": {
            "url": url, "token": token, "part_size": part_size,
            "timeout": {"connect": "5s", "read": "2m"},
            "retry": {"initial": "200ms", "max": "2s", "budget": "60s", "waiting_initial": "1s",
                      "waiting_max": "5s"},
            **(extra_target or {}),
        }},
        "watches": [{"name": "drop", "path": str(drop), "target": "main", "recursive": recursive,
                     "settle": {"quiet": quiet, "max_wait": max_wait}, **(extra_watch or {})}],
    }
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def child_env(code: Path = REPO) -> dict[str, str]:
    """The environment of a contender's process running syncd from the checkout ``code``.
    syncd's bytecode is compiled first, once, as an installed package's is: children write
    none (PYTHONDONTWRITEBYTECODE), and a tree whose .pyc files are stale or missing would
    otherwise compile every module it imports from source in every run (30-40 ms of each
    ``syncd upload`` here)."""
    _compile_syncd(code)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if code != REPO:
        env["PYTHONPATH"] = str(code)
    return env


_compiled: set[Path] = set()


def _compile_syncd(code: Path = REPO) -> None:
    if code not in _compiled:
        import compileall

        compileall.compile_dir(code / "syncd", quiet=1)
        _compiled.add(code)


def parse_code(spec: str) -> dict[str, Path]:
    """``--code NAME=DIR,...``: the checkouts to compare, by name, in the order given."""
    trees: dict[str, Path] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, sep, folder = item.partition("=")
        path = Path(folder).resolve()
        if not sep or not name or not (path / "syncd" / "__init__.py").is_file():
            raise SystemExit(f"--code: {item!r} is not NAME=DIR with DIR a syncd checkout")
        trees[name] = path
    return trees


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> tuple[float, float]:
    return (min(values), max(values)) if values else (float("nan"), float("nan"))


def summary(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values]
    lo, hi = spread(vals)
    return {"median": median(vals), "min": lo, "max": hi, "n": len(vals), "values": vals}


def fmt_med(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'median (min–max)'."""
    if not values:
        return "-"
    lo, hi = (fmt.format(v) for v in spread(values))
    med = fmt.format(median(values))
    if lo == hi:
        return med
    return f"{med} ({lo}–{hi})"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> str:
    """A Markdown table (readable as plain text too)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "kernel": platform.release()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(Exception):
        info["work_root"] = WORK_ROOT
        st = os.statvfs(WORK_ROOT)
        info["tmp_disk_gib"] = round(st.f_blocks * st.f_frsize / GiB)
        src = subprocess.run(["findmnt", "-no", "SOURCE,FSTYPE", "--target", WORK_ROOT],
                             capture_output=True, text=True, timeout=5, check=False).stdout.split()
        if src:
            info["tmp_device"] = " ".join(src)
            dev = Path(src[0]).name
            rot = Path(f"/sys/block/{dev}/queue/rotational")
            if rot.exists():
                info["rotational"] = rot.read_text().strip() == "1"
            model = Path(f"/sys/block/{dev}/device/model")
            if model.exists():
                info["disk_model"] = model.read_text().strip()
    with contextlib.suppress(OSError):
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    with contextlib.suppress(Exception):  # which syncd was measured (read-only git calls)
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "syncd"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        if head:
            info["syncd_commit"] = head + (" + uncommitted changes in syncd/" if dirty else "")
    return info


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(
        data, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    tmp.replace(path)


@dataclass
class Timer:
    started: float = field(default_factory=time.monotonic)

    def left(self, budget: float) -> float:
        return budget - (time.monotonic() - self.started)


# --------------------------------------------------------------------------- the daemon


def thread_ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every live thread of ``pid``
    (each one is a wake-up of some thread)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return -1
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith((b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def proc_cpu(pid: int) -> float:
    """user + system seconds of a live process, all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NotifyListener:
    """A systemd-style ``NOTIFY_SOCKET`` (AF_UNIX datagrams) drained by a thread: the
    daemon runs as under ``Type=notify`` + ``WatchdogSec=``, and READY=1 is timed."""

    def __init__(self, path: Path):
        import threading

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.ready_at: float | None = None
        self.messages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages += 1
            if self.ready_at is None and b"READY=1" in data.split(b"\n"):
                self.ready_at = time.time()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class DaemonRun:
    """``syncd run -c CONFIG`` as a child, run as systemd would (``NOTIFY_SOCKET`` and a
    60 s ``WATCHDOG_USEC``, as in systemd/syncd.service); polls its peak RSS whenever the
    harness waits."""

    def __init__(self, config: Path, *, log_level: str = "WARNING", notify: bool = True, code: Path = REPO):
        self.config = config
        self.code = code
        self.journal = Path(yaml.safe_load(config.read_text())["journal"])
        self.log_path = config.parent / "daemon.log"
        self.log_level = log_level
        self.notify = notify
        self.listener: NotifyListener | None = None
        self.proc: subprocess.Popen | None = None
        self.peak = -1
        self.started_at = 0.0

    def start(self) -> DaemonRun:
        env = child_env(self.code)
        if self.notify:
            self.listener = NotifyListener(self.config.parent / f"notify-{secrets.token_hex(4)}.sock")
            env.update(NOTIFY_SOCKET=str(self.listener.path), WATCHDOG_USEC="60000000")
        log_file = self.log_path.open("ab")
        self.started_at = time.time()
        try:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "syncd", "run", "-c", str(self.config), "--log-level", self.log_level],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.code)
        except BaseException:
            self._close_listener()
            raise
        finally:
            log_file.close()
        return self

    def wait_ready(self, *, timeout: float = 60.0) -> float:
        """Seconds from start to READY=1."""
        assert self.listener is not None, "started without notify"
        self.wait_for(lambda: self.listener.ready_at, timeout=timeout, interval=0.01, what="READY=1")
        return self.listener.ready_at - self.started_at

    def _close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.peak = max(self.peak, vm_hwm(self.proc.pid))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        if not self.journal.exists():
            return []
        import sqlite3

        db = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def counts(self) -> dict[str, int]:
        return dict(self.query("SELECT state, count(*) FROM files GROUP BY state"))

    def wait_for(self, predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            self.sample()
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; states {self.counts()}\n"
                                   f"{self.log()[-2000:]}")
            time.sleep(interval)

    def wait_done(self, n: int, *, timeout: float, interval: float = 0.1) -> None:
        self.wait_for(lambda: sum(self.counts().get(s, 0) for s in ("done", "failed", "gone")) >= n,
                      timeout=timeout, interval=interval, what=f"{n} files done")
        bad = {k: v for k, v in self.counts().items() if k != "done"}
        if bad:
            raise RuntimeError(f"not every file ended done: {self.counts()}\n{self.log()[-2000:]}")

    def stop(self, *, timeout: float = 20.0) -> None:
        try:
            if self.proc is None or self.proc.poll() is not None:
                return
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            self._close_listener()

    def kill(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            self._close_listener()


def save_figure(fig, out: Path) -> Path:
    """Lay out, write (100 dpi) and close a matplotlib figure; returns ``out``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
