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


# --- issue 13 item 11: the README's install path is the path the units run -------------------

README = UNITS_DIR.parent / "README.md"
PYPROJECT = UNITS_DIR.parent / "pyproject.toml"


def readme_install_commands() -> list[list[str]]:
    """The commands of the README's install block for the service (the shell block that runs
    ``sudo ... -m venv``), sudo dropped."""
    import shlex

    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    install = [b for b in blocks if re.search(r"^\s*sudo \S+ -m venv ", b, flags=re.M)]
    assert len(install) == 1, "README: expected one shell block that creates a venv (the install)"
    commands = []
    for line in install[0].splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words[1:] if words[0] == "sudo" else words)
    return commands


def install_as_the_readme_says(root: Path) -> None:
    """Carries out the README's install block inside ``root``: a venv becomes a folder, ``pip
    install`` puts a stand-in for each of pyproject's console scripts in its bin/, ``ln -s``
    makes the link. A command the test does not know fails it, so README and test stay in step."""
    import tomllib

    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    for words in readme_install_commands():
        if words[0].startswith("python3") and words[1:3] == ["-m", "venv"]:
            (root / words[3].lstrip("/") / "bin").mkdir(parents=True)
        elif words[0].endswith("/bin/pip") and words[1] == "install":
            bin_dir = root / words[0].lstrip("/").rsplit("/", 1)[0]
            assert bin_dir.is_dir(), f"pip of a venv the README did not create: {words[0]}"
            for name in scripts:
                (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
                (bin_dir / name).chmod(0o755)
        elif words[0] == "ln" and words[1] in ("-s", "-sf", "-fs"):
            link = root / words[3].lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(words[2])  # absolute: systemd resolves it inside --root
        else:
            raise AssertionError(f"README install block: the test does not know {' '.join(words)!r}")


def exec_binaries(filename: str) -> set[str]:
    lines = [line for line in directives(filename) if re.match(r"Exec\w+=", line)]
    return {line.split("=", 1)[1].lstrip("-@:+!").split()[0] for line in lines}


def installed_root(tmp_path: Path, filename: str) -> Path:
    """A root holding what the README's install block creates, the unit exactly as shipped in
    /etc/systemd/system, the system's own units, and stand-ins for the unit's other commands."""
    import shutil

    root = tmp_path / "root"
    install_as_the_readme_says(root)
    for binary in exec_binaries(filename) - {SYNCD}:  # /bin/kill for ExecReload
        stand_in = root / binary.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNITS_DIR / filename, root / "etc/systemd/system" / filename)
    return root


def verify_in(root: Path, unit: str) -> str:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no", f"--root={root}", unit],
                            capture_output=True, text=True, timeout=60)
    problems = (result.stdout + result.stderr).strip()
    return problems or ("" if result.returncode == 0 else f"exit status {result.returncode}")


@pytest.mark.parametrize("filename", UNITS)
def test_units_verify_against_the_readme_install(filename: str, tmp_path: Path):
    """systemd-analyze verify --root, on the units as shipped (ExecStart=/usr/bin/syncd unchanged)."""
    require_tools("systemd-analyze")
    assert SYNCD in exec_binaries(filename)
    assert verify_in(installed_root(tmp_path, filename), UNITS[filename]) == ""


def test_verify_against_the_install_fails_without_the_link(tmp_path: Path):
    """The check above can fail: without the README's link, /usr/bin/syncd is missing."""
    require_tools("systemd-analyze")
    root = installed_root(tmp_path, "syncd.service")
    (root / SYNCD.lstrip("/")).unlink()
    assert "Command /usr/bin/syncd is not executable" in verify_in(root, "syncd.service")
