"""Stopping a child process and everything it started.

Every child cdl starts (trials, steps, model servers, PostgreSQL, the operator, test servers)
runs in its own process group, so stopping it means signalling the group: SIGTERM, a grace
period, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours counts as gone (and is reaped here)
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_group(process: subprocess.Popen | int, grace: float = 10.0) -> bool:
    """Stop the process group led by `process` (a Popen or a pid); True if it was running."""
    pid = process.pid if isinstance(process, subprocess.Popen) else process
    running = process.poll() is None if isinstance(process, subprocess.Popen) else _alive(pid)
    if not running:
        return False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        if isinstance(process, subprocess.Popen):
            try:
                process.wait(timeout=wait)
                return True
            except subprocess.TimeoutExpired:
                continue
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(pid):
            return True
    return True
