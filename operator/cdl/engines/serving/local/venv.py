"""The seldon virtual environment: seldon-core-microservice and the predictors' libraries.

seldon-core 1.18.2 pins old Flask, click, urllib3, numpy and protobuf, so it gets its own
environment, as it would get its own container. It is created on first use (or up front by
`scripts/setup-seldon.sh`), once: a marker file records the hash of the install list
(`requirements.txt` beside this module) and a file lock keeps two processes from building it at
the same time. A changed install list is installed into the existing environment; a broken one
is rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from cdl.errors import PermanentEngineError

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
MARKER = ".cdl-ready"
ENV_VAR = "CDL_SELDON_VENV"
INSTALL_TIMEOUT_S = 1800


def requirements() -> list[str]:
    """The install list, one requirement a line, comments stripped."""
    out = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def requirements_hash() -> str:
    return hashlib.sha256("\n".join(requirements()).encode()).hexdigest()[:16]


def project_root() -> Path | None:
    """The checkout this package runs from (an editable install), if any."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "operator" / "cdl").is_dir():
            return parent
    return None


def default_venv_dir() -> Path:
    """`$CDL_SELDON_VENV`, else `.venvs/seldon` in the checkout, else a per-user cache folder."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser().resolve()
    root = project_root()
    if root is not None:
        return root / ".venvs" / "seldon"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cdl" / "venvs" / "seldon"


def microservice_bin(venv: Path) -> Path:
    return venv / "bin" / "seldon-core-microservice"


def is_ready(venv: Path) -> bool:
    marker = venv / MARKER
    return (
        marker.exists()
        and marker.read_text().strip() == requirements_hash()
        and microservice_bin(venv).exists()
    )


def ensure_seldon_venv(venv: Path | None = None, *, log: Path | None = None) -> Path:
    """Create (or reuse) the seldon environment and return its directory.

    Idempotent and safe to call from several processes: the first builds, the others wait on the
    lock and then find the marker. Raises PermanentEngineError (with the pip log's tail) when pip
    fails, because nothing can be served without it."""
    venv = (venv or default_venv_dir()).resolve()
    if is_ready(venv):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = log or venv.parent / f"{venv.name}-install.log"
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(venv):
            return venv
        started = time.monotonic()
        with open(log, "w") as out:
            python = venv / "bin" / "python"
            # an environment built from an older list is brought up to date in place (running
            # servers keep going); a missing or broken one is built from scratch
            if not (python.exists() and _pip_install(python, out) == 0):
                if venv.exists():
                    shutil.rmtree(venv)
                for step in (lambda: _run([_base_python(), "-m", "venv", str(venv)], out),
                             lambda: _pip_install(python, out)):
                    rc = step()
                    if rc != 0:
                        out.flush()
                        tail = "\n".join(log.read_text().splitlines()[-15:])
                        raise PermanentEngineError(
                            f"could not create the seldon environment {venv} (exit {rc}); see {log}:\n{tail}",
                            reason="SeldonEnvironmentFailed")
            out.write(f"ready in {time.monotonic() - started:.0f} s\n")
        (venv / MARKER).write_text(requirements_hash() + "\n")
    return venv


def _run(cmd: list[str], out: IO[str]) -> int:
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    try:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S,
                              start_new_session=True).returncode
    except subprocess.TimeoutExpired:
        return -1


def _pip_install(python: Path, out: IO[str]) -> int:
    """One pip call with the whole list, so every pin (seldon-core's numpy<2 too) holds together."""
    return _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *requirements()], out)


def _base_python() -> str:
    """The interpreter to build the venv from: this one's base (a venv's python is fine too)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def main() -> int:
    """`python -m cdl.engines.serving.local.venv [DIR]`: build the environment, print its path."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    started = time.monotonic()
    path = ensure_seldon_venv(target)
    print(f"{path} ready ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
