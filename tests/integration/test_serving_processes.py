"""Process-level pieces of the serving engine, without seldon-core: the wrapper folder imports
in a bare interpreter, and stopping a process group leaves no child behind."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy
import psutil

from cdl.engines.serving.local.microservice import prepare_wrapper_dir, stop_group


def test_the_wrapper_folder_runs_without_cdl_installed(tmp_path: Path) -> None:
    wrapper = prepare_wrapper_dir(tmp_path / "wrapper")
    entry = wrapper / "CdlPredictor.py"
    assert (wrapper / "cdl" / "runtime" / "serving.py").is_file()
    assert (wrapper / "cdl" / "runtime" / "package.py").is_file()
    mtime = entry.stat().st_mtime_ns
    prepare_wrapper_dir(tmp_path / "wrapper")
    assert entry.stat().st_mtime_ns == mtime  # unchanged files are not rewritten
    # a bare interpreter (no site-packages, like the seldon image) imports the class from the folder
    probe = "import CdlPredictor, sys; print(CdlPredictor.CdlPredictor.__module__)"
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {[str(wrapper)]!r}; "
                          f"sys.path.append({str(Path(numpy.__file__).parents[1])!r}); {probe}"],
                         capture_output=True, text=True, timeout=60, cwd=wrapper)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cdl.runtime.serving"


def test_stopping_a_process_group_stops_its_children(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                              "time.sleep(60)"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not psutil.Process(child.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = psutil.Process(child.pid).children()[0]
    stop_group(child.pid, psutil.Process(child.pid).create_time(), grace=2)
    child.wait(5)
    assert not grandchild.is_running() or grandchild.status() == psutil.STATUS_ZOMBIE
