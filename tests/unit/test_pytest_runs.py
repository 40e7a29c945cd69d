"""Two pytest runs on one machine must not delete each other's temporary folders (issue 13,
item 12), and a run leaves none of its own behind, passed or failed.

Each child run here uses this repository's pytest settings (``-c pyproject.toml``) and the
plugin ``tests/support/tmp_cleanup.py`` on a tiny test file of its own, under a private
temporary root (PYTEST_DEBUG_TEMPROOT) so that no other run on this machine is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.daemon import REPO, wait_until

CHILD_TESTS = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    HERE = Path(__file__).parent


    def test_holds_its_tmp_path(tmp_path):
        if os.environ["CHILD_ROLE"] != "holder":
            return
        (tmp_path / "marker").write_text("mine")
        (HERE / "holder-tmp").write_text(str(tmp_path))
        deadline = time.monotonic() + 60
        while not (HERE / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "marker").read_text() == "mine"


    def test_finishes_at_once(tmp_path):
        (tmp_path / "scratch").write_text("x")
        (HERE / (os.environ["CHILD_ROLE"] + "-tmp")).write_text(str(tmp_path))
        assert os.environ["CHILD_ROLE"] != "failing"
''')


def _child(folder: Path, role: str, temproot: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "CHILD_ROLE": role, "PYTEST_DEBUG_TEMPROOT": str(temproot)}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.tmp_cleanup",
         "-c", str(REPO / "pyproject.toml"), "--rootdir", str(folder), str(folder / "test_child.py")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        text = out.decode(errors="replace")
        raise AssertionError(f"child pytest did not finish within {timeout}s:\n{text}") from None
    return proc.returncode, out.decode(errors="replace")


def test_concurrent_runs_keep_their_tmp_paths_and_leave_nothing(tmp_path):
    folder = tmp_path / "child"
    folder.mkdir()
    (folder / "test_child.py").write_text(CHILD_TESTS)
    temproot = tmp_path / "root"
    temproot.mkdir()

    holder = _child(folder, "holder", temproot)
    try:
        wait_until(lambda: holder.poll() is not None or (folder / "holder-tmp").exists(), timeout=60,
                   what="the first run to create its tmp_path")
        assert holder.poll() is None, _finish(holder)[1]
        held = Path((folder / "holder-tmp").read_text())

        # a second run that passes and a third that fails, both ending while the first runs
        code, out = _finish(_child(folder, "passing", temproot))
        assert code == 0, out
        code, out = _finish(_child(folder, "failing", temproot))
        assert code == 1, out
        for role in ("passing", "failing"):
            assert not Path((folder / f"{role}-tmp").read_text()).exists(), f"the {role} run left its tmp_path"
        assert (held / "marker").read_text() == "mine", "another run deleted the first run's tmp_path"
    finally:
        (folder / "release").touch()
        code, out = _finish(holder)
    assert code == 0, out
    # every run has ended: none left a file behind
    left = [str(p.relative_to(temproot)) for p in temproot.rglob("*") if p.is_file() or p.is_symlink()]
    assert left == [], left
