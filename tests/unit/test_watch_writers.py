"""The lease probe against real files: who holds a file open for writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from syncd.watch.writers import Writers, writers_of


@pytest.fixture(autouse=True)
def restore_sigio():
    previous = signal.getsignal(signal.SIGIO)
    yield
    signal.signal(signal.SIGIO, previous)


def test_a_closed_file_has_no_writers(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 100)
    assert writers_of(path) is Writers.NONE


def test_a_descriptor_open_for_writing_counts(tmp_path) -> None:
    path = tmp_path / "a.bin"
    with open(path, "wb") as f:
        f.write(b"x")
        assert writers_of(path) is Writers.SOME
    assert writers_of(path) is Writers.NONE


def test_readers_do_not_count(tmp_path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    with open(path, "rb"):
        assert writers_of(path) is Writers.NONE


def test_another_process_holding_it_open_counts(tmp_path) -> None:
    path = tmp_path / "a.bin"
    code = "import sys; f = open(sys.argv[1], 'ab'); print('open', flush=True); sys.stdin.read()"
    with subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout.readline() == "open\n"
        assert writers_of(path) is Writers.SOME
        child.stdin.close()
        assert child.wait(10) == 0
        child.stdout.close()
    assert writers_of(path) is Writers.NONE


def test_what_is_not_a_regular_file_is_unknown(tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", tmp_path / "link")
    assert writers_of(tmp_path / "missing") is Writers.UNKNOWN
    assert writers_of(tmp_path / "fifo") is Writers.UNKNOWN  # opened without blocking
    assert writers_of(tmp_path / "link") is Writers.UNKNOWN
    assert writers_of(tmp_path) is Writers.UNKNOWN


def test_sigio_is_ignored_before_the_first_lease(tmp_path) -> None:
    """A writer breaking our lease sends us SIGIO, whose default action ends the process."""
    signal.signal(signal.SIGIO, signal.SIG_DFL)
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    assert writers_of(path) is Writers.NONE
    assert signal.getsignal(signal.SIGIO) == signal.SIG_IGN


def test_off_the_main_thread_with_sigio_at_its_default_nothing_is_leased(tmp_path) -> None:
    signal.signal(signal.SIGIO, signal.SIG_DFL)
    path = tmp_path / "a.bin"
    path.write_bytes(b"x")
    answers: list[Writers] = []
    thread = threading.Thread(target=lambda: answers.append(writers_of(path)))
    thread.start()
    thread.join(10)
    assert answers == [Writers.UNKNOWN]
    assert signal.getsignal(signal.SIGIO) == signal.SIG_DFL
