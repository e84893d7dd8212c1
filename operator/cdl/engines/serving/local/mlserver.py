"""One MLServer process serving one ModelVersion package with cdl's custom runtime (V2 protocol).

The Open Inference Protocol fast path: `mlserver start <folder>` from the MLServer environment,
the folder holding `settings.json` (ports, one process: `parallel_workers: 0`) and
`<model>/model-settings.json` (`cdl.runtime.mlserver_runtime.CdlRuntime`, the package, the
predictor class, adaptive batching). It runs beside the same wrapper folder as
seldon-core-microservice (`cdl.runtime` copied, on PYTHONPATH), in its own process group, adopted
by pid like any model server; only its command, configuration and health path differ.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cdl.engines.serving.local.microservice import Microservice, ServerState

RUNTIME = "cdl.runtime.mlserver_runtime.CdlRuntime"


def server_settings(state: ServerState) -> dict[str, Any]:
    """MLServer's `settings.json` for one server: loopback, its three ports, no worker pool (the
    model runs in the server's process: no hand-off per request, and uvloop-independent)."""
    return {
        "host": "127.0.0.1", "http_port": state.http_port, "grpc_port": state.grpc_port,
        "metrics_port": state.metrics_port, "parallel_workers": 0, "debug": False,
        "load_models_at_startup": True,
    }


def model_settings(state: ServerState) -> dict[str, Any]:
    """MLServer's `model-settings.json`: cdl's runtime, the package and predictor, batching."""
    settings: dict[str, Any] = {
        "name": state.model_name,
        "implementation": RUNTIME,
        "parameters": {"uri": state.package_dir, "version": state.model_version,
                       "extra": {"predictor": state.predictor, "model_version": state.model_version}},
    }
    if state.max_batch_size > 1:
        settings["max_batch_size"] = state.max_batch_size
        settings["max_batch_time"] = state.max_batch_time_ms / 1000.0
    return settings


class MLServerProcess(Microservice):
    """Start, watch, health-check and stop one `mlserver start` process."""

    def config_dir(self) -> Path:
        return self.log_dir.parent / "mlserver" / self.state.id

    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "mlserver"), "start", str(self.config_dir())]

    def start(self) -> None:
        s = self.state
        if not (s.http_port and s.grpc_port and s.metrics_port):
            from cdl.engines.serving.local.microservice import _three_ports

            s.http_port, s.grpc_port, s.metrics_port = _three_ports()
        folder = self.config_dir()
        (folder / "model").mkdir(parents=True, exist_ok=True)
        _write_json(folder / "settings.json", server_settings(s))
        _write_json(folder / "model" / "model-settings.json", model_settings(s))
        super().start()

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.state.url}/v2/models/{self.state.model_name}/ready",
                                        timeout=timeout) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
