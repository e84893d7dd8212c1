"""One segment of one trial as an operating-system process: launch, watch, stop, kill.

Each segment runs `python -m cdl.runtime.launch` (under `torchrun` when the trial has more than
one slot) in its own process group and working directory, with stdout and stderr appended to
the trial's log. The engine watches the whole process tree: wall time, CPU time (sampled while
it runs, and the kernel's rusage when it is reaped), peak resident memory of the tree, and GPU
utilisation through nvidia-smi when the trial has GPUs. Stopping is cooperative first (a stop
file the trial reads between validations, so it leaves a checkpoint) and by signal to the whole
group after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from cdl.engines.training.local.state import ProcessInfo

GPU_SAMPLE_SECONDS = 5.0

# What a trial inherits from the operator's environment: the toolchain and library knobs, never
# the operator's own settings (database URL, S3 keys, tokens).
INHERITED = {
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SHELL", "TERM",
    "VIRTUAL_ENV", "PYTHONPATH", "LD_LIBRARY_PATH", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY",
    "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
}
INHERITED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "GLOO_", "OMP_", "MKL_", "OPENBLAS_", "TORCH_", "TF_",
                      "KERAS_", "XLA_", "HF_")


def trial_environment(extra: dict[str, str]) -> dict[str, str]:
    """The trial's environment: the inherited allowlist plus what the engine sets."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith(INHERITED_PREFIXES)}
    env.update(extra)
    return env


@dataclass
class Segment:
    """What one launch needs: where, with what config and environment, on how many slots."""

    trial_dir: Path
    work_dir: Path
    config: dict[str, Any]
    env: dict[str, str]
    slots: int = 1
    gpus: list[int] = field(default_factory=list)
    segment: int = 1
    target: int | None = None

    @property
    def log(self) -> Path:
        return self.trial_dir / "trial.log"

    @property
    def events(self) -> Path:
        return self.trial_dir / "events.jsonl"

    @property
    def stop_file(self) -> Path:
        return self.trial_dir / "stop"

    @property
    def config_file(self) -> Path:
        return self.trial_dir / "config.json"


def command(slots: int) -> list[str]:
    """The bootstrap, under torchrun (one process per slot, one node) when distributed."""
    if slots <= 1:
        return [sys.executable, "-m", "cdl.runtime.launch"]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        f"--nproc-per-node={slots}", "--max-restarts=0", "-m", "cdl.runtime.launch",
    ]


@dataclass
class Usage:
    """Resource figures of one segment so far."""

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    peak_rss_bytes: int = 0
    gpu_utilization: float | None = None  # mean over samples, percent
    gpu_samples: int = 0


def _nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def gpu_count() -> int:
    """GPUs on this machine (0 without nvidia-smi)."""
    exe = _nvidia_smi()
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def gpu_utilization(indices: list[int]) -> float | None:
    """Mean utilisation (percent) of the given GPUs now, or None when it cannot be read."""
    exe = _nvidia_smi()
    if exe is None or not indices:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    values = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in indices:
            try:
                values.append(float(parts[1]))
            except ValueError:
                continue
    return sum(values) / len(values) if values else None


class TrialProcess:
    """A running segment. Only the driver thread that launched (or adopted) it touches it."""

    def __init__(self, pid: int, create_time: float, started: float, segment: Segment | None,
                 popen: subprocess.Popen[bytes] | None) -> None:
        self.pid = pid
        self.create_time = create_time
        self.started = started
        self.segment = segment
        self._popen = popen
        self.returncode: int | None = None
        self.usage = Usage()
        self._cpu_by_pid: dict[int, float] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._last_gpu = 0.0
        self.stop_reason: str | None = None
        self.stop_sent: float | None = None
        self.term_sent: float | None = None
        self.killed: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def launch(cls, seg: Segment) -> TrialProcess:
        seg.trial_dir.mkdir(parents=True, exist_ok=True)
        seg.stop_file.unlink(missing_ok=True)
        seg.config_file.write_text(json.dumps(seg.config, indent=1, default=str))
        env = trial_environment(seg.env)
        with seg.log.open("ab") as log:
            header = (
                f"\n===== cdl: trial {seg.config.get('trial_id')} segment {seg.segment}: train to "
                f"{seg.target if seg.target is not None else '(code decides)'} "
                f"{seg.config.get('max_length', {}).get('unit', '') if seg.config.get('max_length') else ''}"
                f"{' from checkpoint ' + seg.config['latest_checkpoint'] if seg.config.get('latest_checkpoint') else ''}"
                f" at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n"
            )
            log.write(header.encode())
            log.flush()
            popen = subprocess.Popen(  # noqa: S603 - our own bootstrap, no shell
                command(seg.slots), cwd=seg.work_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0
        return cls(popen.pid, create_time, time.time(), seg, popen)

    @classmethod
    def adopt(cls, info: ProcessInfo) -> TrialProcess | None:
        """The still-running process of a previous engine instance, if it is really ours."""
        try:
            proc = psutil.Process(info.pid)
            if abs(proc.create_time() - info.create_time) > 1.0 or os.getpgid(info.pid) != info.pid:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (psutil.Error, ProcessLookupError, OSError):
            return None
        return cls(info.pid, info.create_time, info.started, None, None)

    def info(self, segment: int, target: int | None) -> ProcessInfo:
        return ProcessInfo(
            pid=self.pid, create_time=self.create_time, started=self.started, segment=segment, target=target,
            stop=self.stop_reason, stop_sent=self.stop_sent, killed=self.killed,
        )

    def poll(self) -> int | None:
        """The exit code once the process has ended (reaping it and its rusage), else None."""
        if self.returncode is not None:
            return self.returncode
        if self._popen is None:  # adopted: not our child, we only see it disappear
            try:
                proc = psutil.Process(self.pid)
                if proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - self.create_time) <= 1.0:
                    return None
            except psutil.Error:
                pass
            self.returncode = -signal.SIGKILL
            return self.returncode
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Reaped elsewhere (subprocess' own cleanup): take its code if it has one.
            self.returncode = self._popen.returncode if self._popen.returncode is not None else -1
            return self.returncode
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        self._popen.returncode = self.returncode  # keep subprocess from waiting on a reaped pid
        self.usage.cpu_seconds = max(self.usage.cpu_seconds, rusage.ru_utime + rusage.ru_stime)
        self.usage.peak_rss_bytes = max(self.usage.peak_rss_bytes, rusage.ru_maxrss * 1024)
        self.usage.wall_seconds = time.time() - self.started
        return self.returncode

    @property
    def running(self) -> bool:
        return self.poll() is None

    # ------------------------------------------------------------------ watching

    def sample(self) -> Usage:
        """Refresh the usage figures from the live process tree."""
        self.usage.wall_seconds = time.time() - self.started
        if self.returncode is not None:
            return self.usage
        try:
            leader = self._procs.get(self.pid) or psutil.Process(self.pid)
            self._procs[self.pid] = leader
            tree = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return self.usage
        rss = 0
        for proc in tree:
            proc = self._procs.setdefault(proc.pid, proc)  # keep one object per pid (cpu deltas)
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    self._cpu_by_pid[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.usage.rss_bytes = rss
        self.usage.peak_rss_bytes = max(self.usage.peak_rss_bytes, rss)
        self.usage.cpu_seconds = max(self.usage.cpu_seconds, sum(self._cpu_by_pid.values()))
        gpus = self.segment.gpus if self.segment else []
        if gpus and time.time() - self._last_gpu >= GPU_SAMPLE_SECONDS:
            self._last_gpu = time.time()
            value = gpu_utilization(gpus)
            if value is not None:
                n = self.usage.gpu_samples
                mean = self.usage.gpu_utilization or 0.0
                self.usage.gpu_utilization = (mean * n + value) / (n + 1)
                self.usage.gpu_samples = n + 1
        return self.usage

    # ------------------------------------------------------------------ stopping

    def request_stop(self, reason: str) -> None:
        """Ask the trial to stop at its next validation boundary (it checkpoints first)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_sent = time.time()
            if self.segment is not None:
                self.segment.stop_file.write_text(reason)

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, reason: str | None = None, *, hard: bool = False) -> None:
        """SIGTERM the process group (SIGKILL when hard); escalate() finishes the job."""
        if reason and self.killed is None:
            self.killed = reason
        if hard:
            self.signal_group(signal.SIGKILL)
            return
        if self.term_sent is None:
            self.term_sent = time.time()
            self.signal_group(signal.SIGTERM)

    def escalate(self, stop_grace: float, term_grace: float = 5.0) -> None:
        """Move an unanswered stop request on to SIGTERM, and an unanswered SIGTERM to SIGKILL."""
        now = time.time()
        if self.term_sent is not None:
            if now - self.term_sent > term_grace:
                self.signal_group(signal.SIGKILL)
        elif self.stop_sent is not None and now - self.stop_sent > stop_grace:
            self.terminate()

    def kill_now(self, timeout: float = 5.0) -> None:
        """Stop the whole group and wait for it (SIGTERM, then SIGKILL after `timeout`)."""
        self.terminate()
        deadline = time.time() + timeout
        while self.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if self.poll() is None:
            self.signal_group(signal.SIGKILL)
            deadline = time.time() + 5.0
            while self.poll() is None and time.time() < deadline:
                time.sleep(0.05)
        # Stray members of the group (a worker that outlived torchrun) go too.
        self.signal_group(signal.SIGKILL)


def read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete JSON lines appended since `offset`, and the offset after them."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    events: list[dict[str, Any]] = []
    consumed = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a line still being written
        consumed += len(line)
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, offset + consumed


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (for Determined's chief/worker channel)."""
    import socket

    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports
