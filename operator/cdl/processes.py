"""Stopping a child process and everything it started: the one process-group stopper.

Every child cdl starts (trials, steps, model servers, PostgreSQL, the API server, the operator,
test servers) runs in its own process group, so stopping it means signalling the group: SIGTERM,
a grace period, then SIGKILL to whatever is left. A process may be named by its Popen, by its pid,
or by `(pid, create_time)` when it was started by an earlier process of ours and its pid may have
been reused since (then only the process with that start time counts as ours).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable

Process = subprocess.Popen | int | tuple[int | None, float | None]


def alive(pid: int | None, create_time: float | None = None) -> bool:
    """Whether `pid` runs (a zombie child of ours counts as gone, and is reaped here); with
    `create_time`, whether it is still the process that started then (not a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    reap(pid)
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
    except OSError:
        return False
    if fields[0] == "Z":
        return False
    if create_time is not None:
        ticks = os.sysconf("SC_CLK_TCK")
        started = _boot_time() + int(fields[19]) / ticks
        if abs(started - create_time) > 1.0:
            return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def kill_group(pgid: int | None, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the group; a group that is gone (or not ours) is left alone."""
    if pgid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def reap(pid: int) -> None:
    """Collect the exit status of a child of ours that has ended (no-op for other processes)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_groups(processes: Iterable[Process], grace: float = 10.0) -> list[int]:
    """Stop several process groups at once: SIGTERM to all, one shared grace period, then SIGKILL
    to whatever is left. Returns the pids that were running."""
    waiting: list[tuple[int, subprocess.Popen | None]] = []
    for process in processes:
        pid, create_time, popen = _identify(process)
        if not pid:
            continue
        running = popen.poll() is None if popen is not None else alive(pid, create_time)
        if running:
            kill_group(pid, signal.SIGTERM)
            waiting.append((pid, popen))
        else:
            reap(pid)
            kill_group(pid, signal.SIGKILL)  # children of a dead leader may still hold the group
    started = [pid for pid, _ in waiting]
    deadline = time.monotonic() + grace
    while waiting and time.monotonic() < deadline:
        for item in list(waiting):
            pid, popen = item
            if popen is not None:
                popen.poll()
            reap(pid)
            if not group_alive(pid):
                waiting.remove(item)
        if waiting:
            time.sleep(0.05)
    for pid, popen in waiting:
        kill_group(pid, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while group_alive(pid) and time.monotonic() < end:
            if popen is not None:
                popen.poll()
            reap(pid)
            time.sleep(0.05)
    return started


def stop_group(process: Process, grace: float = 10.0) -> bool:
    """Stop the process group led by `process`; True if it was running."""
    return bool(stop_groups([process], grace))


def _identify(process: Process) -> tuple[int | None, float | None, subprocess.Popen | None]:
    if isinstance(process, subprocess.Popen):
        return process.pid, None, process
    if isinstance(process, tuple):
        return process[0], process[1], None
    return process, None, None


_BOOT_TIME: float | None = None


def _boot_time() -> float:
    global _BOOT_TIME
    if _BOOT_TIME is None:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("btime "):
                    _BOOT_TIME = float(line.split()[1])
                    break
            else:
                _BOOT_TIME = 0.0
    return _BOOT_TIME
