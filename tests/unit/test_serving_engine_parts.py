"""The serving engine's parts that need no process: the seldon install list, reading a load
failure from a server log, the server command, state that survives an operator restart, and the
engine's answers before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdl.engines.base import ResourceKey, ServedModel, ServingRequest
from cdl.engines.serving.local import venv
from cdl.engines.serving.local.engine import (
    DeploymentState,
    LocalServingEngine,
    _backoff,
    _fingerprint,
    model_key,
)
from cdl.engines.serving.local.microservice import (
    LOAD_ERROR_MARK,
    Microservice,
    ServerState,
    load_error_from_log,
)
from cdl.errors import PermanentEngineError
from cdl.runtime import serving


def test_the_install_list_pins_seldon_core_and_its_old_numpy() -> None:
    reqs = venv.requirements()
    assert "seldon-core==1.18.2" in reqs and "numpy<2" in reqs and "setuptools<81" in reqs
    assert not any("#" in r for r in reqs)
    assert venv.requirements_hash() == venv.requirements_hash()


def test_an_environment_without_its_marker_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "seldon-core-microservice").write_text("")
    assert not venv.is_ready(tmp_path)
    (tmp_path / venv.MARKER).write_text("stale-hash\n")
    assert not venv.is_ready(tmp_path)  # a changed install list rebuilds it
    (tmp_path / venv.MARKER).write_text(venv.requirements_hash() + "\n")
    assert venv.is_ready(tmp_path)


def test_the_default_environment_is_in_the_checkout(monkeypatch) -> None:
    monkeypatch.delenv(venv.ENV_VAR, raising=False)
    assert venv.default_venv_dir() == Path(__file__).resolve().parents[2] / ".venvs" / "seldon"
    monkeypatch.setenv(venv.ENV_VAR, "/opt/seldon-env")
    assert venv.default_venv_dir() == Path("/opt/seldon-env")


def test_the_load_marker_is_the_one_the_wrapper_writes() -> None:
    assert LOAD_ERROR_MARK == serving.LOAD_ERROR_MARK


LOG = """==== cdl: starting toy-1-r0 (toy-1) at 2024-01-01T00:00:00
2024-01-01 00:00:01 - seldon_core.microservice:main - INFO: Importing CdlPredictor
2024-01-01 00:00:02 - cdl.serving:load - ERROR: CDL-LOAD-ERROR: FileNotFoundError: weights missing (package /p, predictor serve:P)
CDL-LOAD-ERROR: FileNotFoundError: weights missing
Traceback (most recent call last):
  File "x.py", line 1, in <module>
RuntimeError: could not load the model: FileNotFoundError: weights missing
[2024-01-01 00:00:02 +0000] [7] [INFO] Worker exiting (pid: 7)
"""


def test_the_reason_a_model_failed_to_load_comes_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(LOG)
    assert load_error_from_log(log) == "FileNotFoundError: weights missing"
    # a restart that has not said anything yet keeps the previous run's reason
    log.write_text(LOG + "==== cdl: starting toy-1-r0 (toy-1) at 2024-01-01T00:00:09\n")
    assert load_error_from_log(log) == "FileNotFoundError: weights missing"
    # without the wrapper's line, the last exception line of the run
    log.write_text("==== cdl: starting x\nTraceback (most recent call last):\nModuleNotFoundError: No module named 'flask'\n")
    assert load_error_from_log(log) == "ModuleNotFoundError: No module named 'flask'"
    log.write_text("==== cdl: starting x\nall quiet\n")
    assert load_error_from_log(log) is None
    assert load_error_from_log(tmp_path / "missing.log") is None


def test_the_server_command_uses_the_measured_flags(tmp_path: Path) -> None:
    state = ServerState(id="toy-1-r0", model_version="toy-1", sha256="0" * 64, predictor="serve:P",
                        package_dir="/pkg", http_port=1, grpc_port=2, metrics_port=3)
    ms = Microservice(state, tmp_path / "venv", tmp_path, tmp_path / "logs", workers=2)
    cmd = ms.command()
    # seldon-core-microservice through the launcher that binds 127.0.0.1
    assert cmd[0].endswith("bin/python") and cmd[1:4] == ["-m", "cdl.runtime.microservice_loopback", "CdlPredictor"]
    flags = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    assert flags == {"--service-type": "MODEL", "--http-port": "1", "--grpc-port": "2", "--metrics-port": "3",
                     "--workers": "2", "--threads": "2",  # gthread: keep-alive
                     "--grpc-workers": "1", "--grpc-threads": "2"}  # seldon.protos.Seldon behind the router
    env = ms.environment()
    assert env["CDL_MODEL_PACKAGE"] == "/pkg" and env["CDL_PREDICTOR"] == "serve:P"
    assert env["CDL_MODEL_VERSION"] == "toy-1" and env["PYTHONPATH"] == str(tmp_path)


def test_an_mlserver_server_runs_cdls_runtime_with_its_batching(tmp_path: Path) -> None:
    from cdl.engines.serving.local.mlserver import MLServerProcess, model_settings, server_settings

    state = ServerState(id="toy-1-abc-r0", model_version="toy-1", sha256="0" * 64, predictor="serve:P",
                        package_dir="/pkg", http_port=1, grpc_port=2, metrics_port=3, server="mlserver",
                        model_name="news", max_batch_size=16, max_batch_time_ms=5.0)
    assert state.predict_url == "http://127.0.0.1:1/v2/models/news/infer"
    settings = model_settings(state)
    assert settings["implementation"] == "cdl.runtime.mlserver_runtime.CdlRuntime" and settings["name"] == "news"
    assert (settings["max_batch_size"], settings["max_batch_time"]) == (16, 0.005)
    assert settings["parameters"] == {"uri": "/pkg", "version": "toy-1",
                                      "extra": {"predictor": "serve:P", "model_version": "toy-1"}}
    assert server_settings(state)["parallel_workers"] == 0  # the model runs in the server's process
    process = MLServerProcess(state, tmp_path / "venv", tmp_path, tmp_path / "logs")
    assert process.command() == [str(tmp_path / "venv" / "bin" / "mlserver"), "start",
                                 str(tmp_path / "mlserver" / "toy-1-abc-r0")]
    unbatched = ServerState(**{**state.wire(), "max_batch_size": 0})
    assert "max_batch_size" not in model_settings(unbatched)
    # another server (or batching) for the same model is another set of servers: the change rolls
    from cdl.engines.serving.local.engine import model_key

    model = {"model_version": "toy-1", "sha256": "a" * 64, "predictor": "serve:P"}
    keys = {model_key(model), model_key({**model, "server": "seldon"}), model_key({**model, "server": "mlserver"}),
            model_key({**model, "server": "mlserver", "max_batch_size": 16})}
    assert len(keys) == 3 and model_key(model) == model_key({**model, "server": "seldon"})


def test_servers_are_keyed_by_model_not_role() -> None:
    primary = {"model_version": "m-1", "sha256": "a" * 64, "predictor": "serve:P", "role": "primary"}
    canary = dict(primary, role="canary")
    assert model_key(primary) == model_key(canary)
    assert model_key(primary) != model_key(dict(primary, sha256="b" * 64))
    assert model_key(primary).startswith("m-1-")


def test_the_fingerprint_follows_what_is_served() -> None:
    key = ResourceKey("ns", "d")
    base = ServingRequest(key, 1, [ServedModel("m-1", "file:///a", "a" * 64, "serve:P")])
    assert _fingerprint(base) == _fingerprint(ServingRequest(key, 2, base.models))  # generation alone: no change
    assert _fingerprint(base) != _fingerprint(ServingRequest(key, 1, base.models, sample_rate=0.5))
    assert _fingerprint(base) != _fingerprint(ServingRequest(key, 1, base.models, replicas=2))


def test_backoff_grows_to_a_cap() -> None:
    assert _backoff(1) == 0.0 and _backoff(2) == 1.0 and _backoff(3) == 2.0 and _backoff(20) == 30.0


def test_state_round_trips_through_json() -> None:
    state = DeploymentState(namespace="ns", name="d", generation=3, replicas=2, active={"primary": "m-1-abc"})
    state.router.port = 1234
    again = DeploymentState.from_wire(json.loads(json.dumps(state.wire())))
    assert again == state


def test_the_engine_before_and_after_a_bad_apply(tmp_path: Path) -> None:
    engine = LocalServingEngine(tmp_path / "serving", venv_dir=tmp_path / "no-venv", supervise=False)
    key = ResourceKey("ns", "d")
    assert engine.status(key).state == "Pending"
    missing = ServedModel("m-1", (tmp_path / "nope.tar.gz").as_uri(), "a" * 64, "serve:P")
    with pytest.raises(PermanentEngineError, match="m-1"):
        engine.apply(ServingRequest(key, 1, [missing]))
    failed = engine.status(key)
    assert failed.state == "Failed" and "nope.tar.gz" in failed.message
    with pytest.raises(PermanentEngineError, match="no model"):
        engine.apply(ServingRequest(key, 1, []))
    engine.delete(key)  # nothing running: a no-op
    engine.close()
