"""The Makefile picks python3.11 when it is on PATH and stops at once, with what to do, when the
Python it would use is not 3.11 (rather than building a virtual environment that fails later)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _fake_python(directory: Path, name: str, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f'#!/bin/sh\ncase "$1" in -V|--version) echo "Python {version}";; *) exit 1;; esac\n')
    path.chmod(0o755)
    return path


def _make(tmp_path: Path, path_dirs: list[Path], *args: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    # only the fake Pythons and the few tools the Makefile needs: not the machine's own Pythons
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for tool in ("cat", "sha1sum", "cut", "rm", "touch", "test", "echo"):
        found = shutil.which(tool)
        if found and not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    env = {"PATH": ":".join([*map(str, path_dirs), str(tools)]), "HOME": str(tmp_path)}
    return subprocess.run([shutil.which("make") or "make", "-C", str(project), "venv", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_python311_is_picked_over_python3(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _fake_python(bin_dir, "python3", "3.13.1")
    picked = _fake_python(bin_dir, "python3.11", "3.12.9")  # found first by name, then refused by version
    out = _make(tmp_path, [bin_dir])
    assert out.returncode != 0
    assert f"but {picked} is Python 3.12.9" in out.stderr
    assert not (tmp_path / "project" / ".venv").exists()


def test_an_unsupported_python_fails_early_with_what_to_do(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    only = _fake_python(bin_dir, "python3", "3.12.1")
    out = _make(tmp_path, [bin_dir])
    assert out.returncode != 0
    assert "cdl needs Python 3.11" in out.stderr and f"{only} is Python 3.12.1" in out.stderr
    assert "make PYTHON=/path/to/python3.11" in out.stderr
    assert not (tmp_path / "project" / ".venv").exists()
