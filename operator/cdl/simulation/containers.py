"""One container of the simulation: a process started from an image with a pod's command and env.

A container gets the image's files and Python environment (images.py), exactly the environment it
is given (nothing is inherited from the simulation's own process), an empty working directory of
its own, and the volumes its platform mounts: each `mounts` entry is bind-mounted at its path
inside a private mount namespace (`unshare --mount`), so fixed in-container paths such as
Determined's `/run/determined` or `/determined_shared_fs` are per container, as in a pod. The
process runs in its own session; `stop` ends its whole process group (gunicorn workers, torchrun).

Mount namespaces need root or unprivileged user namespaces; where neither is available a
container that needs mounts fails at once with that reason (`ContainerError`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cdl.simulation.images import Image

_MOUNT_SCRIPT = 'set -e; while [ "$1" != "--" ]; do mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done; shift; ' \
                'cd "$CDL_SIM_CWD"; unset CDL_SIM_CWD; exec "$@"'


class ContainerError(RuntimeError):
    """A container cannot start (missing program, no mount namespace)."""


_namespaces: bool | None = None
_ns_lock = threading.Lock()


def namespaces_available() -> bool:
    """Whether this machine lets the simulation give a container its own mounts."""
    global _namespaces
    with _ns_lock:
        if _namespaces is None:
            unshare = shutil.which("unshare")
            flags = [] if os.geteuid() == 0 else ["--map-root-user"]
            _namespaces = bool(unshare) and subprocess.run(
                [unshare, "--mount", *flags, "true"], capture_output=True).returncode == 0  # type: ignore[list-item]
        return _namespaces


@dataclass
class Container:
    """A started container; `wait`, `stop`, `output` (its log so far)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM to the process group, SIGKILL after `grace` seconds."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.wait()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def pod_env(container: dict[str, Any], namespace: str, core_api: Any) -> dict[str, str]:
    """A pod container's environment as the kubelet builds it: `envFrom` Secrets and ConfigMaps,
    then `env` (`value`, `secretKeyRef`, `configMapKeyRef`), read from the API server; a missing
    key fails with the variable's name."""
    import base64

    from kubernetes.client.exceptions import ApiException

    def secret(name: str, optional: bool = False) -> dict[str, str]:
        try:
            data = core_api.read_namespaced_secret(name, namespace).data or {}
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise ContainerError(f"container {container.get('name')}: Secret {namespace}/{name} not found "
                                     "(CreateContainerConfigError)") from None
            raise
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def config_map(name: str, optional: bool = False) -> dict[str, str]:
        try:
            return dict(core_api.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise ContainerError(f"container {container.get('name')}: ConfigMap {namespace}/{name} not found "
                                     "(CreateContainerConfigError)") from None
            raise

    env: dict[str, str] = {}
    for ref in container.get("envFrom") or []:
        if "secretRef" in ref:
            env.update(secret(ref["secretRef"]["name"], bool(ref["secretRef"].get("optional"))))
        elif "configMapRef" in ref:
            env.update(config_map(ref["configMapRef"]["name"], bool(ref["configMapRef"].get("optional"))))
    for var in container.get("env") or []:
        source = var.get("valueFrom") or {}
        if "value" in var or not source:
            env[var["name"]] = str(var.get("value", ""))
            continue
        kind, read = ("secretKeyRef", secret) if "secretKeyRef" in source else ("configMapKeyRef", config_map)
        if kind not in source:
            raise ContainerError(f"container {container.get('name')}: env {var['name']}: the simulation resolves "
                                 "value, secretKeyRef and configMapKeyRef only")
        ref = source[kind]
        data = read(ref["name"], bool(ref.get("optional")))
        if ref["key"] not in data and ref.get("optional"):
            continue
        if ref["key"] not in data:
            raise ContainerError(f"container {container.get('name')}: env {var['name']}: {kind} {ref['name']} has "
                                 f"no key {ref['key']}")
        env[var["name"]] = data[ref["key"]]
    return env


def pod_command(container: dict[str, Any], image: Image) -> list[str]:
    """What a pod container runs: `command` replaces the image's ENTRYPOINT, `args` its CMD."""
    entrypoint = list(container.get("command") or image.dockerfile.entrypoint or [])
    args = list(container.get("args") or ([] if container.get("command") else image.dockerfile.cmd))
    return entrypoint + args


def start(name: str, image: Image, argv: list[str], env: dict[str, str], workdir: Path, log_path: Path,
          mounts: dict[str, Path] | None = None) -> Container:
    """Start `argv` from `image` in `workdir` with exactly `env` (and the image's ENV under it)."""
    command = image.resolve(argv)
    full_env = image.command_env(env)
    workdir.mkdir(parents=True, exist_ok=True)
    if mounts:
        if not namespaces_available():
            raise ContainerError(f"container {name}: it needs its own mounts ({', '.join(mounts)}) and this machine "
                                 "allows no mount namespace (run as root or enable user namespaces)")
        flags = [] if os.geteuid() == 0 else ["--map-root-user"]
        pairs = [str(part) for target, source in mounts.items() for part in (source, target)]
        for source in mounts.values():
            Path(source).mkdir(parents=True, exist_ok=True)
        full_env["CDL_SIM_CWD"] = str(workdir)
        command = ["unshare", "--mount", "--propagation", "private", *flags, "--", "sh", "-c", _MOUNT_SCRIPT,
                   "sh", *pairs, "--", *command]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - closed by Container.wait
    log.write(f"$ {shlex.join(argv)}\n".encode())
    log.flush()
    try:
        process = subprocess.Popen(command, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        log.close()
        raise ContainerError(f"container {name}: {exc}") from None
    return Container(name, process, log_path, log)


__all__ = ["Container", "ContainerError", "namespaces_available", "pod_command", "pod_env", "start"]
