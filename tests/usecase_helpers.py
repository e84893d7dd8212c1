"""Helpers the use cases' own tests share (usecases/*/tests)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def load(name: str, path: Path) -> ModuleType:
    """Import a use-case file under a unique name, leaving sys.path as it was."""
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


def run_logged(cmd: list[str], cwd: Path, log: Path, timeout: float) -> str:
    """Run a child in its own process group with its output in a log file; fail with the log."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    text = log.read_text()
    assert code == 0, f"{' '.join(cmd)} exited {code}:\n{text[-4000:]}"
    return text
