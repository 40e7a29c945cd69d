"""The unit files in systemd/: systemd-analyze verify and security, and drift between them.

``systemd-analyze verify`` refuses a unit whose ExecStart binary does not exist, and
syncd is not installed at /usr/bin here: each unit is verified as a copy whose
``/usr/bin/syncd`` points at a stand-in executable. Everything else is checked as
shipped. Unknown keys and unparsable values are only warnings (exit status 0), so
any output at all fails the check.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.tools import require_tools

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
SYNCD = "/usr/bin/syncd"
# file in systemd/ -> the unit name systemd-analyze is given (templates need an instance)
UNITS = {
    "syncd.service": "syncd.service",
    "syncd@.service": "syncd@photos.service",
    "syncd-receiver.service": "syncd-receiver.service",
}
MAX_EXPOSURE = 2.0


def stage(tmp_path: Path, filename: str) -> Path:
    """Copies a unit into tmp_path with ExecStart's syncd pointing at a stand-in."""
    text = (UNITS_DIR / filename).read_text()
    exec_starts = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_starts and all(line.startswith(f"ExecStart={SYNCD} ") for line in exec_starts)
    stand_in = tmp_path / "bin" / "syncd"
    if not stand_in.exists():
        stand_in.parent.mkdir()
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    staged = tmp_path / filename
    staged.write_text(text.replace(f"ExecStart={SYNCD} ", f"ExecStart={stand_in} "))
    return staged


def verify(unit: Path) -> str:
    """Problems systemd-analyze reports for ``unit`` (a path; a template's instance is fine)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not problems:
        problems = f"exit status {result.returncode}"
    return problems


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-2000:]
    return float(match.group(1))


@pytest.mark.parametrize("filename", UNITS)
def test_units_verify_cleanly(filename: str, tmp_path: Path):
    require_tools("systemd-analyze")
    stage(tmp_path, filename)
    assert verify(tmp_path / UNITS[filename]) == ""


def test_verify_reports_what_systemd_would_ignore(tmp_path: Path):
    """The check above would catch a typo that systemd merely warns about."""
    require_tools("systemd-analyze")
    staged = stage(tmp_path, "syncd.service")
    staged.write_text(staged.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricct"))
    assert "stricct" in verify(staged)
    staged.write_text(staged.read_text().replace("PrivateTmp=yes", "PrivateTemp=yes"))
    assert "PrivateTemp" in verify(staged)


@pytest.mark.parametrize("filename", UNITS)
def test_units_are_hardened(filename: str, tmp_path: Path):
    require_tools("systemd-analyze")
    stage(tmp_path, filename)
    level = exposure(tmp_path / UNITS[filename])
    assert level <= MAX_EXPOSURE, f"{filename}: exposure {level} > {MAX_EXPOSURE}"


def directives(filename: str) -> list[str]:
    lines = (UNITS_DIR / filename).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith(("#", ";"))]


def test_the_template_differs_from_syncd_service_only_by_instance():
    per_instance = {
        "Description=syncd drop-folder sync daemon (%i)": (
            "Description=syncd drop-folder sync daemon"
        ),
        "ExecStart=/usr/bin/syncd run -c /etc/syncd/%i.yaml": (
            "ExecStart=/usr/bin/syncd run -c /etc/syncd/config.yaml"
        ),
        "StateDirectory=syncd/%i": "StateDirectory=syncd",
        "WorkingDirectory=%S/syncd/%i": "WorkingDirectory=%S/syncd",
        "LoadCredential=token:/etc/syncd/%i.token": "LoadCredential=token:/etc/syncd/token",
    }
    template = directives("syncd@.service")
    assert per_instance.keys() <= set(template)
    assert [per_instance.get(line, line) for line in template] == directives("syncd.service")
