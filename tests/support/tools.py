"""External tools some tests need (ffmpeg, ffprobe, systemd-analyze, rsync).

On a developer's machine a missing tool skips the test with the reason; under
``SYNCD_REQUIRE_TOOLS=1`` (set by ``.ci/run``, which installs them) it fails instead,
so a green CI can never hide a missing install step.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)} on PATH"
    if os.environ.get("SYNCD_REQUIRE_TOOLS") == "1":
        pytest.fail(message + " (SYNCD_REQUIRE_TOOLS=1)")
    pytest.skip(message)
