"""`syncd upload`'s progress bar: drawn on a terminal, absent (and tqdm not loaded) elsewhere."""

from __future__ import annotations

import io
import subprocess
import sys

from syncd.oneshot import _progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_counts_the_bytes_read(monkeypatch) -> None:
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with _progress_bar(2048, "clip.mov") as bar:
        bar.update(1024)
        bar.update(1024)
    assert "clip.mov: 100%" in err.getvalue()


def test_elsewhere_there_is_no_bar_and_tqdm_is_not_imported() -> None:
    code = ("import sys; from syncd.oneshot import _progress_bar\n"
            "with _progress_bar(10, 'x') as bar: assert bar is None\n"
            "print('tqdm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL)
    assert out.stdout.strip() == "False"
