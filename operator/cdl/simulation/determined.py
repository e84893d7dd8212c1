"""A protocol-level fake of the Determined 0.38 master's REST API (aiohttp), for contract tests.

Every response is built with the SDK's own generated bindings (`determined.common.api.bindings`),
so its shapes are exactly what `determined.experimental.client` 0.38.1 parses; errors use the
master's grpc-gateway body `{"error": {"code", "reason", "error"}}` and HTTP status.

Endpoints: login (`POST /api/v1/auth/login`, salted password as the SDK sends it), `GET
/api/v1/me`, experiments (create with the model definition, get, list with name/label filters and
pagination, kill), trials (list per experiment, get, logs as NDJSON, validation metrics of several
trials as NDJSON: what a trial reads of its peers), checkpoints (per experiment,
by uuid), models (create, get, patch) and model versions (create, list, get, patch, delete).

What it checks, as the master does:
- a bearer token from login on every other call (401 otherwise; 403 "invalid credentials" at login);
- the experiment configuration: YAML; known top-level, resources and environment keys
  ("<config>: additional properties ..."); an entrypoint ("managed experiments require
  entrypoint"); the searcher: a current name (EOL searchers refused), `metric`, `max_trials` for
  random and adaptive_asha, `time_metric` and `max_time` for adaptive_asha (0.38's rule), no
  field foreign to that searcher; hyperparameters of a known type with their required fields
  (`count` for grid); checkpoint storage of a known type (`bucket` for s3);
- the uploaded model definition (files decoded and kept, `.detignore` already applied by the SDK);
- registering a model version needs an existing model and a checkpoint the master knows.

Running trials: with a `TrialExecutor` (below), every new experiment's trials run, one at a time,
as Determined runs them on Kubernetes: Determined's own `prep_container` (which downloads the
model definition from the master and writes the task's info files) and `determined.exec.launch`
(which starts the entrypoint: the legacy harness through torch_distributed, or a command) in a
container of the experiment's image, with the DET_* environment and the config's variables; the
trial reports metrics, progress and checkpoints through the endpoints a trial uses (task
session tokens, context directory, rendezvous, preemption long poll, metrics, checkpoints), and a
kill reaches it as a preemption signal, then SIGTERM.

Without an executor, trials are drawn from the searcher (single: one; random/adaptive_asha:
`max_trials` samples of the hyperparameters with the experiment seed; grid: the grid) and move
only when the test calls `run_trials`, `complete` (validation metrics from a function of the
hyperparameters and the length, one validation per unit of length, a checkpoint per trial written to the experiment's checkpoint storage:
shared_fs host_path, or S3 with the config's keys and endpoint; adaptive_asha stops all but the
top 1/divisor trials after the first rung) or `fail`. No agents, resource pools, TensorBoard,
webhooks, RBAC or workspaces beyond a name.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import itertools
import json
import math
import random
import tarfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from determined.common import api as det_api
from determined.common.api import bindings as b

TOP_LEVEL = {
    "bind_mounts", "checkpoint_policy", "checkpoint_storage", "data", "data_layer", "debug", "description",
    "entrypoint", "environment", "hyperparameters", "integrations", "internal", "labels", "log_policies",
    "max_restarts", "min_checkpoint_period", "min_validation_period", "name", "optimizations", "pbs",
    "perform_initial_validation", "preemption_timeout", "profiling", "project", "records_per_epoch",
    "reproducibility", "resources", "retention_policy", "scheduling_unit", "searcher", "security", "slurm",
    "tensorboard_storage", "workspace",
}
RESOURCES = {"agent_label", "devices", "is_single_node", "max_slots", "native_parallel", "priority",
             "resource_pool", "shm_size", "slots", "slots_per_trial", "weight"}
ENVIRONMENT = {"add_capabilities", "drop_capabilities", "environment_variables", "force_pull_image", "image",
               "pod_spec", "ports", "proxy_ports", "registry_auth"}
COMMON_SEARCHER = {"name", "metric", "smaller_is_better", "source_trial_id", "source_checkpoint_uuid", "max_length"}
SEARCHER_FIELDS = {
    "single": COMMON_SEARCHER,
    "random": COMMON_SEARCHER | {"max_trials", "max_concurrent_trials"},
    "grid": COMMON_SEARCHER | {"max_concurrent_trials"},
    "adaptive_asha": COMMON_SEARCHER | {"max_trials", "max_concurrent_trials", "time_metric", "max_time", "mode",
                                        "divisor", "max_rungs", "bracket_rungs", "stop_once"},
    "async_halving": COMMON_SEARCHER | {"max_trials", "max_concurrent_trials", "time_metric", "max_time",
                                        "num_rungs", "divisor", "stop_once"},
}
EOL_SEARCHERS = {"custom", "adaptive", "adaptive_simple", "sync_halving"}
HP_FIELDS = {
    "const": ({"type", "val"}, {"val"}),
    "int": ({"type", "minval", "maxval", "count"}, {"minval", "maxval"}),
    "double": ({"type", "minval", "maxval", "count"}, {"minval", "maxval"}),
    "log": ({"type", "minval", "maxval", "base", "count"}, {"minval", "maxval", "base"}),
    "categorical": ({"type", "vals"}, {"vals"}),
}
STORAGE_TYPES = {"shared_fs", "s3", "gcs", "azure", "directory"}
GRPC_HTTP = {3: 400, 5: 404, 6: 409, 7: 403, 9: 400, 13: 500, 14: 503, 16: 401}
GRPC_REASON = {3: "InvalidArgument", 5: "NotFound", 6: "AlreadyExists", 7: "PermissionDenied",
               9: "FailedPrecondition", 13: "Internal", 14: "Unavailable", 16: "Unauthenticated"}


class MasterError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- config checks


def check_config(config: Any) -> dict[str, Any]:
    """The master's checks of a submitted configuration; raises MasterError(3, ...)."""
    def bad(message: str) -> MasterError:
        return MasterError(3, f"invalid experiment configuration: {message}")

    if not isinstance(config, dict):
        raise bad("<config>: expected an object")
    extra = sorted(set(config) - TOP_LEVEL)
    if extra:
        raise bad(f"<config>: additional properties are not allowed ({', '.join(repr(e) for e in extra)} "
                  "were unexpected)")
    if not config.get("entrypoint"):
        raise bad("managed experiments require entrypoint")
    for section, allowed in (("resources", RESOURCES), ("environment", ENVIRONMENT)):
        extra = sorted(set(config.get(section) or {}) - allowed)
        if extra:
            raise bad(f"<config>.{section}: additional properties are not allowed ({', '.join(extra)})")
    if "slots" in (config.get("resources") or {}):
        raise bad('<config>.resources: additionalProperties "slots" not allowed')
    searcher = config.get("searcher")
    if not isinstance(searcher, dict) or "name" not in searcher:
        raise bad("<config>.searcher: name is a required property")
    name = searcher["name"]
    if name in EOL_SEARCHERS:
        raise bad(f"the '{name}' searcher has been removed and is not valid for new experiments")
    if name not in SEARCHER_FIELDS:
        raise bad(f"<config>.searcher: is not an object where object[\"name\"] is one of 'single', 'random', "
                  f"'grid', 'custom', or 'adaptive_asha' (got {name!r})")
    extra = sorted(set(searcher) - SEARCHER_FIELDS[name])
    if extra:
        raise bad(f"<config>.searcher: additional properties are not allowed ({', '.join(extra)})")
    if not searcher.get("metric"):
        raise bad("<config>.searcher.metric: is a required property")
    if name in ("random", "adaptive_asha", "async_halving") and not searcher.get("max_trials"):
        raise bad("<config>.searcher.max_trials: is a required property")
    if name in ("adaptive_asha", "async_halving") and (searcher.get("max_time") is None or
                                                      searcher.get("time_metric") is None):
        raise bad(f"the `{name}` searcher requires `max_time` and `time_metric` to be set")
    for hp_name, hp in _flatten(config.get("hyperparameters") or {}).items():
        if not isinstance(hp, dict):
            continue
        kind = hp.get("type")
        if kind not in HP_FIELDS:
            raise bad(f"<config>.hyperparameters.{hp_name}: unknown type {kind!r}")
        allowed, required = HP_FIELDS[kind]
        missing = sorted(required - set(hp))
        if missing or set(hp) - allowed:
            raise bad(f"<config>.hyperparameters.{hp_name}: {kind} needs {', '.join(sorted(required))}")
        if kind in ("int", "double", "log") and hp["minval"] > hp["maxval"]:
            raise bad(f"<config>.hyperparameters.{hp_name}: minval must be <= maxval")
        if name == "grid" and kind in ("int", "double", "log") and not hp.get("count"):
            raise bad(f"<config>.hyperparameters.{hp_name}: grid search is in use but count was not provided")
    storage = config.get("checkpoint_storage")
    if storage is not None:
        if storage.get("type") not in STORAGE_TYPES:
            raise bad(f"<config>.checkpoint_storage.type: must be one of {sorted(STORAGE_TYPES)}")
        if storage["type"] == "s3" and not storage.get("bucket"):
            raise bad("<config>.checkpoint_storage.bucket: is a required property")
        if storage["type"] == "shared_fs" and not storage.get("host_path"):
            raise bad("<config>.checkpoint_storage.host_path: is a required property")
    labels = config.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise bad("<config>.labels: expected a list of strings")
    return config


def _flatten(hps: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in hps.items():
        if isinstance(v, dict) and "type" not in v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _sample(hp: Any, rng: random.Random) -> Any:
    if not isinstance(hp, dict):
        return hp
    if "type" not in hp:
        return {k: _sample(v, rng) for k, v in hp.items()}
    kind = hp["type"]
    if kind == "const":
        return hp["val"]
    if kind == "int":
        return rng.randint(hp["minval"], hp["maxval"])
    if kind == "double":
        return rng.uniform(hp["minval"], hp["maxval"])
    if kind == "log":
        return hp["base"] ** rng.uniform(hp["minval"], hp["maxval"])
    return rng.choice(hp["vals"])


def _grid_values(hp: Any) -> list[Any]:
    if not isinstance(hp, dict):
        return [hp]
    kind = hp["type"]
    if kind == "const":
        return [hp["val"]]
    if kind == "categorical":
        return list(hp["vals"])
    n = int(hp["count"])
    lo, hi = hp["minval"], hp["maxval"]
    points = [lo + (hi - lo) * i / max(n - 1, 1) for i in range(n)]
    if kind == "int":
        return sorted({round(p) for p in points})
    if kind == "log":
        return [hp["base"] ** p for p in points]
    return points


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- state


@dataclass
class Trial:
    id: int
    experiment_id: int
    hparams: dict[str, Any]
    state: str = "STATE_QUEUED"
    batches: int = 0
    best: tuple[dict[str, Any], int] | None = None  # (avg metrics, batches)
    latest: tuple[dict[str, Any], int] | None = None
    checkpoint: str | None = None
    checkpoint_batches: int = 0
    logs: list[str] = field(default_factory=list)
    start: str = field(default_factory=_now)
    end: str | None = None
    seconds: float = 0.0
    token: str = ""
    process: Any = None
    preempt: bool = False
    checkpoints: list[tuple[str, int]] = field(default_factory=list)  # (uuid, steps) as reported
    validations: list[tuple[dict[str, Any], int]] = field(default_factory=list)


@dataclass
class Experiment:
    id: int
    config: dict[str, Any]
    text: str
    files: dict[str, bytes]
    project_id: int
    user: str
    state: str = "STATE_ACTIVE"
    progress: float = 0.0
    trials: list[Trial] = field(default_factory=list)
    start: str = field(default_factory=_now)
    end: str | None = None
    best_trial: int | None = None


@dataclass
class Checkpoint:
    uuid: str
    trial: Trial
    experiment: Experiment
    batches: int
    metadata: dict[str, Any]
    resources: dict[str, str]
    report_time: str = field(default_factory=_now)


@dataclass
class Model:
    id: int
    name: str
    description: str
    metadata: dict[str, Any]
    labels: list[str]
    workspace: str | None
    created: str = field(default_factory=_now)
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)


class FakeDeterminedMaster:
    """The fake master on 127.0.0.1:<free port>; `url` once started."""

    def __init__(self, users: dict[str, str] | None = None, s3_credentials: tuple[str, str] | None = None,
                 executor: Any | None = None) -> None:
        """`executor` (a `cdl.simulation.trials.TrialExecutor`) runs the trials of every new
        experiment; without one, trials move only when a test calls run_trials/complete/fail."""
        self.executor = executor
        self.task_tokens: dict[str, Trial] = {}
        self.users = users or {"admin": "Adm1n-pass"}
        self.s3_credentials = s3_credentials
        self.tokens: dict[str, str] = {}
        self.experiments: dict[int, Experiment] = {}
        self.checkpoints: dict[str, Checkpoint] = {}
        self.models: dict[str, Model] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_next: MasterError | None = None  # the next API call answers with this error
        self._ids = itertools.count(1)
        self._trial_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._runner = web.AppRunner(self._app())
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-determined-master", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Determined master did not start")
        return self.url

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        r.add_post("/api/v1/auth/login", self._login)
        r.add_post("/api/v1/auth/logout", self._logout)
        r.add_get("/api/v1/me", self._me)
        r.add_post("/api/v1/experiments", self._create_experiment)
        r.add_get("/api/v1/experiments", self._list_experiments)
        r.add_get("/api/v1/experiments/{id}", self._get_experiment)
        r.add_post("/api/v1/experiments/{id}/kill", self._kill)
        r.add_get("/api/v1/experiments/{id}/trials", self._list_trials)
        r.add_get("/api/v1/experiments/{id}/checkpoints", self._list_checkpoints)
        r.add_get("/api/v1/trials/{id}", self._get_trial)
        r.add_get("/api/v1/trials/{id}/logs", self._trial_logs)
        r.add_get("/api/v1/trials/metrics/validation_metrics", self._validation_metrics)
        r.add_get("/api/v1/checkpoints/{uuid}", self._get_checkpoint)
        r.add_post("/api/v1/models", self._post_model)
        r.add_get("/api/v1/models/{name}", self._get_model)
        r.add_patch("/api/v1/models/{name}", self._patch_model)
        r.add_post("/api/v1/models/{name}/versions", self._post_version)
        r.add_get("/api/v1/models/{name}/versions", self._list_versions)
        r.add_get("/api/v1/models/{name}/versions/{num}", self._get_version)
        r.add_patch("/api/v1/models/{name}/versions/{num}", self._patch_version)
        r.add_delete("/api/v1/models/{name}/versions/{num}", self._delete_version)
        # What a trial's container calls (prep_container, det.core, the PyTorch Trainer).
        r.add_get("/api/v1/tasks/{task}/context_directory", self._context_directory)
        r.add_post("/api/v1/allocations/{id}/acceleratorData", self._ok)
        r.add_post("/api/v1/allocations/{id}/proxy_address", self._ok)
        r.add_post("/api/v1/allocations/{id}/all_gather", self._all_gather)
        r.add_get("/api/v1/allocations/{id}/signals/preemption", self._preemption)
        r.add_post("/api/v1/allocations/{id}/signals/ack_preemption", self._ok)
        r.add_post("/api/v1/allocations/{id}/signals/pending_preemption", self._ok)
        r.add_post("/api/v1/trials/{id}/metrics", self._report_metrics)
        r.add_post("/api/v1/trials/{id}/progress", self._progress)
        r.add_post("/api/v1/trials/{id}/early_exit", self._ok)
        r.add_post("/api/v1/trials/{id}/runner/metadata", self._ok)
        r.add_patch("/api/v1/trials/{id}", self._patch_trial)
        r.add_post("/api/v1/checkpoints", self._report_checkpoint)
        r.add_post("/api/v1/runs/start", self._prepare_run)
        r.add_post("/api/v1/task-logs", self._task_logs)
        r.add_post("/api/v1/trial-source-info", self._ok)
        r.add_get("/api/v1/experiments/{id}/searcher/best_searcher_validation_metric", self._best_metric)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        try:
            if request.path != "/api/v1/auth/login":
                self._user(request)
            if self.fail_next is not None and request.path != "/api/v1/auth/login":
                error, self.fail_next = self.fail_next, None
                raise error
            return await handler(request)
        except MasterError as exc:
            return web.json_response(
                {"error": {"code": exc.code, "reason": GRPC_REASON.get(exc.code, "Unknown"), "error": exc.message}},
                status=GRPC_HTTP.get(exc.code, 500))

    def _user(self, request: web.Request) -> str:
        task = request.headers.get("Grpc-Metadata-x-allocation-token", "").removeprefix("Bearer ").strip()
        if task and task in self.task_tokens:
            return "determined"
        auth = request.headers.get("Authorization", "")
        user = self.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None
        if user is None:
            raise MasterError(16, "invalid credentials")
        return user

    # ------------------------------------------------------------------ auth

    async def _login(self, request: web.Request) -> web.Response:
        body = b.v1LoginRequest.from_json(await request.json())
        expected = self.users.get(body.username)
        given = body.password if body.isHashed else det_api.salt_and_hash(body.password or "")
        if expected is None or given != det_api.salt_and_hash(expected):
            raise MasterError(7, "invalid credentials")
        token = uuid.uuid4().hex
        self.tokens[token] = body.username
        return web.json_response(b.v1LoginResponse(token=token, user=self._v1user(body.username)).to_json())

    async def _logout(self, request: web.Request) -> web.Response:
        return web.json_response({})

    def _v1user(self, name: str) -> b.v1User:
        return b.v1User(active=True, admin=True, username=name, id=1, displayName=name)

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response(b.v1GetMeResponse(user=self._v1user(self._user(request))).to_json())

    def expire_sessions(self) -> None:
        """Forget every token (the session expired): the next call gets 401."""
        self.tokens.clear()

    # ------------------------------------------------------------------ experiments

    def _exp(self, request: web.Request) -> Experiment:
        exp = self.experiments.get(int(request.match_info["id"]))
        if exp is None:
            raise MasterError(5, f"experiment not found: {request.match_info['id']}")
        return exp

    def _v1experiment(self, exp: Experiment) -> b.v1Experiment:
        searcher = exp.config["searcher"]
        return b.v1Experiment(
            archived=False, config=copy.deepcopy(exp.config), id=exp.id, jobId=f"job-{exp.id}",
            name=exp.config.get("name", f"Experiment {exp.id}"), numTrials=len(exp.trials), originalConfig=exp.text,
            projectId=exp.project_id, projectOwnerId=1, searcherType=searcher["name"], startTime=exp.start,
            state=b.experimentv1State(exp.state), username=exp.user, labels=list(exp.config.get("labels") or []),
            progress=exp.progress, description=exp.config.get("description", ""), endTime=exp.end,
            searcherMetric=searcher.get("metric"), bestTrialId=exp.best_trial,
            trialIds=[t.id for t in exp.trials], workspaceId=1, hyperparameters=exp.config.get("hyperparameters"),
            resourcePool=(exp.config.get("resources") or {}).get("resource_pool", "default"),
        )

    async def _create_experiment(self, request: web.Request) -> web.Response:
        user = self._user(request)
        body = b.v1CreateExperimentRequest.from_json(await request.json())
        try:
            config = yaml.safe_load(body.config or "")
        except yaml.YAMLError as exc:
            raise MasterError(3, f"error parsing experiment config: {exc}") from None
        config = check_config(config)
        files = {f.path: base64.b64decode(f.content) for f in (body.modelDefinition or []) if f.type != 53}
        with self._lock:
            exp = Experiment(next(self._ids), config, body.config or "", files, body.projectId or 1, user)
            exp.trials = [Trial(next(self._trial_ids), exp.id, hp) for hp in self._draw(config)]
            self.experiments[exp.id] = exp
            if self.executor is not None:
                self.executor.submit(self, exp)
            return web.json_response(b.v1CreateExperimentResponse(
                config=copy.deepcopy(config), experiment=self._v1experiment(exp)).to_json())

    def _draw(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        searcher = config["searcher"]
        hps = config.get("hyperparameters") or {}
        rng = random.Random((config.get("reproducibility") or {}).get("experiment_seed", 0))
        if searcher["name"] == "grid":
            flat = _flatten(hps)
            keys = sorted(flat)
            return [_unflatten(dict(zip(keys, combo, strict=True)))
                    for combo in itertools.product(*(_grid_values(flat[k]) for k in keys))]
        count = 1 if searcher["name"] == "single" else int(searcher["max_trials"])
        return [_sample(hps, rng) for _ in range(count)]

    async def _list_experiments(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        labels = request.query.getall("labels", [])
        offset = int(request.query.get("offset", 0) or 0)
        with self._lock:
            found = [self._v1experiment(e) for e in self.experiments.values()
                     if (not name or name.lower() in e.config.get("name", "").lower())
                     and all(label in (e.config.get("labels") or []) for label in labels)]
        page = found[offset:offset + 2]  # small pages, so clients must follow the pagination
        return web.json_response(b.v1GetExperimentsResponse(
            experiments=page, pagination=self._pagination(offset, len(page), len(found))).to_json())

    def _pagination(self, offset: int, count: int, total: int) -> b.v1Pagination:
        return b.v1Pagination(offset=offset, limit=count, startIndex=offset, endIndex=offset + count, total=total)

    async def _get_experiment(self, request: web.Request) -> web.Response:
        with self._lock:
            exp = self._exp(request)
            return web.json_response(b.v1GetExperimentResponse(experiment=self._v1experiment(exp),
                                                               config=copy.deepcopy(exp.config)).to_json())

    async def _kill(self, request: web.Request) -> web.Response:
        with self._lock:
            exp = self._exp(request)
            if exp.state not in ("STATE_COMPLETED", "STATE_ERROR", "STATE_CANCELED"):
                exp.state, exp.end = "STATE_CANCELED", _now()
                for t in exp.trials:
                    if t.state not in ("STATE_COMPLETED", "STATE_ERROR"):
                        t.state, t.end, t.preempt = "STATE_CANCELED", _now(), True
        if self.executor is not None:
            self.executor.kill(exp)
        return web.json_response({})

    # ------------------------------------------------------------------ trials and checkpoints

    def _v1trial(self, t: Trial) -> b.trialv1Trial:
        kwargs: dict[str, Any] = {}
        if t.best is not None:
            kwargs["bestValidation"] = b.v1MetricsWorkload(metrics=b.v1Metrics(avgMetrics=t.best[0]), numInputs=0,
                                                           totalBatches=t.best[1], endTime=_now())
        if t.latest is not None:
            kwargs["latestValidation"] = b.v1MetricsWorkload(metrics=b.v1Metrics(avgMetrics=t.latest[0]),
                                                             numInputs=0, totalBatches=t.latest[1], endTime=_now())
        if t.checkpoint is not None:
            kwargs["bestCheckpoint"] = b.v1CheckpointWorkload(
                state=b.checkpointv1State.COMPLETED, totalBatches=t.checkpoint_batches, uuid=t.checkpoint,
                endTime=_now(), resources=self.checkpoints[t.checkpoint].resources)
            kwargs["checkpointCount"] = 1
        return b.trialv1Trial(
            experimentId=t.experiment_id, hparams=t.hparams, id=t.id, restarts=0, startTime=t.start,
            state=b.trialv1State(t.state), totalBatchesProcessed=t.batches, endTime=t.end,
            wallClockTime=t.seconds, taskId=f"trial-{t.id}", **kwargs,
        )

    async def _list_trials(self, request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", 0) or 0)
        with self._lock:
            trials = [self._v1trial(t) for t in self._exp(request).trials]
        page = trials[offset:offset + 3]
        return web.json_response(b.v1GetExperimentTrialsResponse(
            trials=page, pagination=self._pagination(offset, len(page), len(trials))).to_json())

    async def _validation_metrics(self, request: web.Request) -> web.Response:
        """GetValidationMetrics: every validation the trials reported, as the master streams them
        (NDJSON, `{"result": v1GetValidationMetricsResponse}` lines; here one per trial), each
        report's metrics under `validation_metrics` as the master stores a validation."""
        ids = [int(x) for x in request.query.getall("trialIds", [])]
        if not ids:
            raise MasterError(3, "trialIds: at least one trial id is required")
        lines = []
        with self._lock:
            for trial in (self._trial(i) for i in ids):
                reports = [b.v1MetricsReport(archived=False, endTime=_now(), group="validation", id=n,
                                             metrics={"validation_metrics": avg, "num_inputs": 0},
                                             totalBatches=steps, trialId=trial.id, trialRunId=1)
                           for n, (avg, steps) in enumerate(trial.validations, start=1)]
                lines.append(json.dumps({"result": b.v1GetValidationMetricsResponse(metrics=reports).to_json()}))
        return web.Response(text="".join(line + "\n" for line in lines), content_type="application/json")

    def _trial(self, trial_id: int) -> Trial:
        for exp in self.experiments.values():
            for t in exp.trials:
                if t.id == trial_id:
                    return t
        raise MasterError(5, f"trial {trial_id} not found")

    async def _get_trial(self, request: web.Request) -> web.Response:
        with self._lock:
            t = self._v1trial(self._trial(int(request.match_info["id"])))
        return web.json_response(b.v1GetTrialResponse(trial=t).to_json())

    async def _trial_logs(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            t = self._trial(int(request.match_info["id"]))
            lines = list(t.logs)
        out = io.StringIO()
        for i, line in enumerate(lines):
            entry = b.v1TrialLogsResponse(id=str(i), level=b.v1LogLevel.INFO, message=line, timestamp=_now(),
                                          trialId=t.id, log=line)
            out.write(json.dumps({"result": entry.to_json()}) + "\n")
        return web.Response(text=out.getvalue(), content_type="application/json")

    def _v1checkpoint(self, ck: Checkpoint) -> b.v1Checkpoint:
        return b.v1Checkpoint(
            metadata=ck.metadata, resources=ck.resources, state=b.checkpointv1State.COMPLETED,
            training=b.v1CheckpointTrainingMetadata(
                experimentConfig=copy.deepcopy(ck.experiment.config), experimentId=ck.experiment.id,
                hparams=ck.trial.hparams, trialId=ck.trial.id,
                validationMetrics=b.v1Metrics(avgMetrics=ck.trial.best[0] if ck.trial.best else {}),
            ),
            uuid=ck.uuid, reportTime=ck.report_time, taskId=f"trial-{ck.trial.id}",
        )

    async def _list_checkpoints(self, request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", 0) or 0)
        with self._lock:
            exp = self._exp(request)
            cks = [self._v1checkpoint(c) for c in self.checkpoints.values() if c.experiment is exp]
        page = cks[offset:]
        return web.json_response(b.v1GetExperimentCheckpointsResponse(
            checkpoints=page, pagination=self._pagination(offset, len(page), len(cks))).to_json())

    async def _get_checkpoint(self, request: web.Request) -> web.Response:
        with self._lock:
            ck = self.checkpoints.get(request.match_info["uuid"])
            if ck is None:
                raise MasterError(5, f"checkpoint {request.match_info['uuid']} not found")
            return web.json_response(b.v1GetCheckpointResponse(checkpoint=self._v1checkpoint(ck)).to_json())

    # ------------------------------------------------------------------ models

    def _v1model(self, m: Model) -> b.v1Model:
        return b.v1Model(archived=False, creationTime=m.created, id=m.id, lastUpdatedTime=_now(),
                         metadata=m.metadata, name=m.name, numVersions=len(m.versions), userId=1, username="admin",
                         workspaceId=1, description=m.description, labels=m.labels)

    def _v1version(self, m: Model, v: dict[str, Any]) -> b.v1ModelVersion:
        return b.v1ModelVersion(
            checkpoint=self._v1checkpoint(self.checkpoints[v["checkpoint"]]), creationTime=v["created"], id=v["id"],
            lastUpdatedTime=_now(), model=self._v1model(m), version=v["version"], comment=v.get("comment"),
            labels=v.get("labels") or [], metadata=v.get("metadata") or {}, name=v.get("name"), userId=1,
            username="admin",
        )

    def _model(self, name: str) -> Model:
        m = self.models.get(name)
        if m is None:
            raise MasterError(5, f"model \"{name}\" not found")
        return m

    async def _post_model(self, request: web.Request) -> web.Response:
        body = b.v1PostModelRequest.from_json(await request.json())
        with self._lock:
            if body.name in self.models:
                raise MasterError(6, f"model with name {body.name} already exists")
            m = Model(next(self._ids), body.name, body.description or "", body.metadata or {}, list(body.labels or []),
                      body.workspaceName)
            self.models[m.name] = m
            return web.json_response(b.v1PostModelResponse(model=self._v1model(m)).to_json())

    async def _get_model(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(b.v1GetModelResponse(model=self._v1model(self._model(
                request.match_info["name"]))).to_json())

    async def _patch_model(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            m = self._model(request.match_info["name"])
            if body.get("labels") is not None:
                m.labels = list(body["labels"])
            if body.get("metadata") is not None:
                m.metadata = body["metadata"]
            return web.json_response(b.v1PatchModelResponse(model=self._v1model(m)).to_json())

    async def _post_version(self, request: web.Request) -> web.Response:
        body = b.v1PostModelVersionRequest.from_json(await request.json())
        with self._lock:
            m = self._model(request.match_info["name"])
            if body.checkpointUuid not in self.checkpoints:
                raise MasterError(5, f"checkpoint {body.checkpointUuid} not found")
            number = max(m.versions, default=0) + 1
            m.versions[number] = {"id": next(self._ids), "version": number, "checkpoint": body.checkpointUuid,
                                  "created": _now(), "name": body.name, "comment": body.comment,
                                  "labels": list(body.labels or []), "metadata": body.metadata or {}}
            return web.json_response(b.v1PostModelVersionResponse(
                modelVersion=self._v1version(m, m.versions[number])).to_json())

    async def _list_versions(self, request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", 0) or 0)
        with self._lock:
            m = self._model(request.match_info["name"])
            versions = [self._v1version(m, v) for _, v in sorted(m.versions.items(), reverse=True)]
            page = versions[offset:offset + 2]
            return web.json_response(b.v1GetModelVersionsResponse(
                model=self._v1model(m), modelVersions=page,
                pagination=self._pagination(offset, len(page), len(versions))).to_json())

    def _version(self, request: web.Request) -> tuple[Model, dict[str, Any]]:
        m = self._model(request.match_info["name"])
        v = m.versions.get(int(request.match_info["num"]))
        if v is None:
            raise MasterError(5, f"model version {request.match_info['num']} of {m.name} not found")
        return m, v

    async def _get_version(self, request: web.Request) -> web.Response:
        with self._lock:
            m, v = self._version(request)
            return web.json_response(b.v1GetModelVersionResponse(modelVersion=self._v1version(m, v)).to_json())

    async def _patch_version(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            m, v = self._version(request)
            for k in ("labels", "metadata", "name", "comment", "notes"):
                if body.get(k) is not None:
                    v[k] = body[k]
            return web.json_response(b.v1PatchModelVersionResponse(modelVersion=self._v1version(m, v)).to_json())

    async def _delete_version(self, request: web.Request) -> web.Response:
        with self._lock:
            m, v = self._version(request)
            del m.versions[v["version"]]
        return web.json_response({})

    # ------------------------------------------------------------------ the trial container's side

    def _task_trial(self, request: web.Request) -> Trial:
        token = request.headers.get("Grpc-Metadata-x-allocation-token", "").removeprefix("Bearer ").strip()
        trial = self.task_tokens.get(token)
        if trial is None:
            raise MasterError(16, "this call needs a task session (DET_SESSION_TOKEN)")
        return trial

    async def _ok(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _all_gather(self, request: web.Request) -> web.Response:
        """Rendezvous of a one-pod trial: the only peer's data comes back."""
        body = b.v1AllocationAllGatherRequest.from_json(await request.json())
        with self._lock:
            self._task_trial(request)
        if (body.numPeers or 1) != 1:
            raise MasterError(3, "the simulation runs every trial in one container (numPeers must be 1)")
        return web.json_response(b.v1AllocationAllGatherResponse(data=[body.data]).to_json())

    async def _prepare_run(self, request: web.Request) -> web.Response:
        body = b.v1RunPrepareForReportingRequest.from_json(await request.json())
        with self._lock:
            self._task_trial(request)
        return web.json_response(b.v1RunPrepareForReportingResponse(storageId=body.runId).to_json())

    async def _context_directory(self, request: web.Request) -> web.Response:
        """The experiment's model definition as the gzipped tar `prep_container` extracts."""
        with self._lock:
            trial = self._task_trial(request)
            files = self.experiments[trial.experiment_id].files
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path, data in sorted(files.items()):
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        return web.json_response(b.v1GetTaskContextDirectoryResponse(
            b64Tgz=base64.b64encode(buffer.getvalue()).decode()).to_json())

    async def _preemption(self, request: web.Request) -> web.Response:
        """The long poll the trial's PreemptionWatcher runs: answers at once when the trial must
        stop (the experiment was killed), else after at most `timeout_seconds` (capped at 2 s)."""
        timeout = min(float(request.query.get("timeout_seconds", 1) or 1), 2.0)
        with self._lock:
            trial = self._task_trial(request)
        waited = 0.0
        while not trial.preempt and waited < timeout:
            await asyncio.sleep(0.2)
            waited += 0.2
        return web.json_response({"preempt": trial.preempt})

    async def _report_metrics(self, request: web.Request) -> web.Response:
        body = b.v1ReportTrialMetricsRequest.from_json(await request.json())
        with self._lock:
            trial = self._task_trial(request)
            metrics = body.metrics
            steps = int(metrics.stepsCompleted or 0)
            avg = dict(metrics.metrics.avgMetrics or {})
            if body.group == "validation":
                exp = self.experiments[trial.experiment_id]
                searcher = exp.config["searcher"]
                metric, smaller = searcher["metric"], searcher.get("smaller_is_better", True)
                trial.latest = (avg, steps)
                trial.validations.append((avg, steps))
                if metric in avg and (trial.best is None or metric not in trial.best[0] or (
                        avg[metric] < trial.best[0][metric] if smaller else avg[metric] > trial.best[0][metric])):
                    trial.best = (avg, steps)
                self._best_checkpoint(trial)
                if searcher.get("name") == "adaptive_asha" and metric in avg:
                    self._asha_rungs(exp, trial, avg, steps)
            trial.batches = max(trial.batches, steps)
        return web.json_response({})

    def _asha_rungs(self, exp: Experiment, trial: Trial, avg: dict[str, Any], steps: int) -> None:
        """Asynchronous successive halving as the master decides it: when a trial's validation
        reaches a rung (max_time / divisor^(R-1-r) in time_metric units; no more rungs than
        max_trials can fill), it goes on only while it ranks in the top 1/divisor (at least one)
        of the trials that reached that rung so far; otherwise the master preempts it, and the
        trial checkpoints and ends, as Determined 0.38 stops ASHA trials."""
        searcher = exp.config["searcher"]
        divisor = float(searcher.get("divisor", 4))
        max_trials = int(searcher.get("max_trials", 1))
        fillable = 1 + int(math.floor(math.log(max(1, max_trials)) / math.log(divisor) + 1e-9))
        rungs = max(1, min(int(searcher.get("max_rungs", 5)), fillable))
        max_time = float(searcher["max_time"])
        lengths = [max(1.0, round(max_time / divisor ** (rungs - 1 - r))) for r in range(rungs)]
        unit = searcher.get("time_metric", "batches")
        done = float(avg.get(unit, steps))
        metric, smaller = searcher["metric"], searcher.get("smaller_is_better", True)
        table = exp.__dict__.setdefault("rung_values", {})
        for r, length in enumerate(lengths[:-1]):
            reached = table.setdefault(r, {})
            if done < length or trial.id in reached:
                continue
            reached[trial.id] = float(avg[metric])
            ranked = sorted(reached, key=lambda tid: reached[tid], reverse=not smaller)
            if trial.id not in ranked[:max(1, int(len(ranked) // divisor))]:
                trial.preempt = True
                trial.logs.append(f"asha: not promoted past rung {r} ({length:g} {unit})")

    def _best_checkpoint(self, trial: Trial) -> None:
        """The trial's best checkpoint: the one at its best validation's step, else its latest."""
        if not trial.checkpoints:
            return
        at_best = [u for u, steps in trial.checkpoints if trial.best is not None and steps == trial.best[1]]
        trial.checkpoint = at_best[-1] if at_best else trial.checkpoints[-1][0]
        trial.checkpoint_batches = self.checkpoints[trial.checkpoint].batches

    async def _progress(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            trial = self._task_trial(request)
            exp = self.experiments[trial.experiment_id]
            done = sum(1 for t in exp.trials if t.state == "STATE_COMPLETED")
            exp.progress = min(1.0, (done + float(body.get("progress") or 0.0)) / max(len(exp.trials), 1))
        return web.json_response({})

    async def _patch_trial(self, request: web.Request) -> web.Response:
        with self._lock:
            trial = self._task_trial(request)
            return web.json_response(b.v1PatchTrialResponse(trial=self._v1trial(trial)).to_json())

    async def _report_checkpoint(self, request: web.Request) -> web.Response:
        ck = b.v1Checkpoint.from_json(await request.json())
        with self._lock:
            trial = self._task_trial(request)
            exp = self.experiments[trial.experiment_id]
            metadata = dict(ck.metadata or {})
            steps = int(metadata.get("steps_completed") or 0)
            self.checkpoints[ck.uuid] = Checkpoint(ck.uuid, trial, exp, steps, metadata,
                                                   {k: str(v) for k, v in (ck.resources or {}).items()})
            trial.checkpoints.append((ck.uuid, steps))
            self._best_checkpoint(trial)
        return web.json_response({})

    async def _task_logs(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self._task_trial(request)
            for entry in body if isinstance(body, list) else body.get("logs", []):
                trial = self._trial(int(entry.get("task_id", "trial-0").rpartition("-")[2] or 0)) \
                    if str(entry.get("task_id", "")).startswith("trial-") else None
                if trial is not None and entry.get("log"):
                    trial.logs.append(entry["log"].rstrip("\n"))
        return web.json_response({})

    async def _best_metric(self, request: web.Request) -> web.Response:
        with self._lock:
            exp = self._exp(request)
            metric = exp.config["searcher"]["metric"]
            values = [t.best[0][metric] for t in exp.trials if t.best is not None and metric in t.best[0]]
        if not values:
            raise MasterError(5, "no validation metrics yet")
        smaller = exp.config["searcher"].get("smaller_is_better", True)
        return web.json_response({"metric": (min if smaller else max)(values)})

    def finish_trial(self, trial: Trial, code: int, output: str) -> None:
        """The executor's word that a trial's container ended with `code`."""
        with self._lock:
            exp = self.experiments[trial.experiment_id]
            if output:  # the container's output is the trial's log, as the master collects it
                trial.logs.extend(output.rstrip("\n").splitlines())
            if trial.state != "STATE_CANCELED":
                trial.state = "STATE_COMPLETED" if code == 0 else "STATE_ERROR"
            trial.end = _now()
            self.task_tokens.pop(trial.token, None)
            if all(t.state in ("STATE_COMPLETED", "STATE_ERROR", "STATE_CANCELED") for t in exp.trials):
                searcher = exp.config["searcher"]
                metric, smaller = searcher["metric"], searcher.get("smaller_is_better", True)
                scored = [t for t in exp.trials if t.best is not None and metric in t.best[0]]
                if scored:
                    exp.best_trial = (min if smaller else max)(scored, key=lambda t: t.best[0][metric]).id  # type: ignore[index]
                if exp.state != "STATE_CANCELED":
                    errored = any(t.state == "STATE_ERROR" for t in exp.trials)
                    exp.state = "STATE_ERROR" if errored else "STATE_COMPLETED"
                    exp.progress = exp.progress if errored else 1.0
                exp.end = _now()

    def start_trial(self, trial: Trial) -> str:
        """A task session token for the trial's container; the trial and experiment are running."""
        with self._lock:
            trial.token = uuid.uuid4().hex
            self.task_tokens[trial.token] = trial
            trial.state, trial.start = "STATE_RUNNING", _now()
            exp = self.experiments[trial.experiment_id]
            if exp.state == "STATE_ACTIVE":
                exp.state = "STATE_RUNNING"
            return trial.token

    # ------------------------------------------------------------------ driving experiments (tests)

    def run_trials(self, experiment_id: int, progress: float = 0.25) -> None:
        """Trials are running, `progress` of the experiment done."""
        with self._lock:
            exp = self.experiments[experiment_id]
            exp.state, exp.progress = "STATE_RUNNING", progress
            for t in exp.trials:
                t.state = "STATE_RUNNING"
                t.logs.append(f"trial {t.id} started with {json.dumps(t.hparams, sort_keys=True)}")

    def complete(self, experiment_id: int, metric: Callable[[dict[str, Any], int], float]) -> None:
        """Every trial trains (ASHA: all to the first rung, the top 1/divisor to the end), reports
        `metric(hparams, length)` as the searcher metric, and saves a checkpoint."""
        with self._lock:
            exp = self.experiments[experiment_id]
            searcher = exp.config["searcher"]
            unit, length = _length(searcher)
            metric_name = searcher["metric"]
            smaller = searcher.get("smaller_is_better", True)
            lengths = {t.id: length for t in exp.trials}
            if searcher["name"] in ("adaptive_asha", "async_halving"):
                divisor = float(searcher.get("divisor", 4))
                rung = max(1, int(length / divisor))
                scored = sorted(exp.trials, key=lambda t: metric(t.hparams, rung), reverse=not smaller)
                keep = max(1, math.ceil(len(scored) / divisor))
                for t in scored[keep:]:
                    lengths[t.id] = rung
            for t in exp.trials:
                done = lengths[t.id]
                value = metric(t.hparams, done)
                batches = done * 10 if unit == "epochs" else done
                metrics = {metric_name: value, "epochs": done if unit == "epochs" else batches // 10,
                           "batches": batches}
                t.best = t.latest = (metrics, batches)
                # a validation per unit of length, as a trial validating every epoch reports them
                per = 10 if unit == "epochs" else 1
                t.validations = [({metric_name: metric(t.hparams, k), "epochs": k * per // 10, "batches": k * per},
                                  k * per) for k in range(1, done + 1)] if done <= 1000 else [(metrics, batches)]
                t.batches, t.state, t.end, t.seconds = batches, "STATE_COMPLETED", _now(), 1.5
                t.checkpoint = str(uuid.uuid4())
                t.checkpoint_batches = batches
                resources = self._write_checkpoint(exp, t)
                self.checkpoints[t.checkpoint] = Checkpoint(
                    t.checkpoint, t, exp, batches, {"steps_completed": batches, "framework": "torch-2.13.0"},
                    resources)
                t.logs.append(f"validation: {metric_name}={value:.4f} after {done} {unit}")
            best = (min if smaller else max)(exp.trials, key=lambda t: t.best[0][metric_name])  # type: ignore[index]
            exp.best_trial = best.id
            exp.state, exp.progress, exp.end = "STATE_COMPLETED", 1.0, _now()

    def fail(self, experiment_id: int, message: str = "RuntimeError: CUDA out of memory") -> None:
        """The first trial crashes with `message` in its log; the experiment errors."""
        with self._lock:
            exp = self.experiments[experiment_id]
            first = exp.trials[0]
            first.state, first.end = "STATE_ERROR", _now()
            first.logs += ["Traceback (most recent call last):", message]
            for t in exp.trials[1:]:
                t.state = "STATE_CANCELED"
            exp.state, exp.end = "STATE_ERROR", _now()

    def _write_checkpoint(self, exp: Experiment, t: Trial) -> dict[str, str]:
        """Files of a small PyTorchTrial-like checkpoint, written where the config says."""
        assert t.checkpoint is not None
        files = {
            "state_dict.pth": b"fake torch state for trial %d" % t.id,
            "metadata.json": json.dumps({"steps_completed": t.batches, "trial_id": t.id,
                                         "framework": "torch-2.13.0", "format": "pickle"}).encode(),
        }
        storage = exp.config.get("checkpoint_storage") or {}
        if storage.get("type") == "shared_fs":
            base = Path(storage["host_path"]) / (storage.get("storage_path") or "") / t.checkpoint
            base.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (base / name).write_bytes(data)
        elif storage.get("type") == "s3":
            from minio import Minio

            endpoint = storage.get("endpoint_url", "")
            access, secret = storage.get("access_key"), storage.get("secret_key")
            if not access and self.s3_credentials:
                access, secret = self.s3_credentials
            host = endpoint.split("://", 1)[-1]
            client = Minio(host, access_key=access, secret_key=secret, secure=endpoint.startswith("https"))
            if not client.bucket_exists(storage["bucket"]):
                client.make_bucket(storage["bucket"])
            prefix = (storage.get("prefix") or "").strip("/")
            for name, data in files.items():
                key = "/".join(p for p in (prefix, t.checkpoint, name) if p)
                client.put_object(storage["bucket"], key, io.BytesIO(data), len(data))
        return {name: str(len(data)) for name, data in files.items()}


# --------------------------------------------------------------------------- running trials

# What Determined's Kubernetes resource manager runs in a trial pod (master/static/srv/entrypoint.sh):
# prep_container fetches the model definition into the working directory and writes the task's
# info files under /run/determined/info, then determined.exec.launch starts the entrypoint.
TRIAL_COMMAND = ["sh", "-c", "python3 -m determined.exec.prep_container --rendezvous --download_context_directory "
                 "--resources --proxy && exec python3 -m determined.exec.launch"]
DEFAULT_TRIAL_IMAGE = "determinedai/pytorch-ngc:0.38.1"
# The master's defaults for what the harness reads from the merged experiment config.
MASTER_DEFAULTS: dict[str, Any] = {
    "checkpoint_policy": "best", "debug": False, "max_restarts": 5, "min_checkpoint_period": {"batches": 0},
    "min_validation_period": {"batches": 0}, "perform_initial_validation": False, "records_per_epoch": 0,
    "scheduling_unit": 100, "data": {}, "bind_mounts": [], "labels": [],
    "optimizations": {"aggregation_frequency": 1, "average_aggregated_gradients": True,
                      "average_training_metrics": True, "gradient_compression": False, "mixed_precision": "O0",
                      "tensor_fusion_threshold": 64, "tensor_fusion_cycle_time": 1, "auto_tune_tensor_fusion": False,
                      "grad_updates_size_file": None},
    "profiling": {"enabled": False, "begin_on_batch": 0, "end_after_batch": None, "sync_timings": True},
    "reproducibility": {"experiment_seed": 0},
    "searcher": {"smaller_is_better": True, "source_trial_id": None, "source_checkpoint_uuid": None},
    "resources": {"slots_per_trial": 1, "native_parallel": False, "max_slots": None, "weight": 1,
                  "shm_size": None, "resource_pool": "default", "priority": None, "devices": []},
}


def merged_config(config: dict[str, Any]) -> dict[str, Any]:
    """The experiment config with the master's defaults under it, as a trial receives it."""
    out = copy.deepcopy(MASTER_DEFAULTS)
    for key, value in config.items():  # sections merge; a length (e.g. min_validation_period) replaces
        if key in ("optimizations", "profiling", "resources", "reproducibility", "searcher") and isinstance(value, dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


class TrialExecutor:
    """Runs the trials of the fake master's experiments, one at a time, each as Determined would:
    a container from the experiment's image (`environment.image`, else `default_image`) running
    Determined's own prep_container and launch entry points in an empty working directory, with
    the environment Determined sets for a trial (DET_*), the experiment config's
    `environment_variables` and the literal `env` of its `pod_spec` container, and nothing else.
    The trial reports metrics and checkpoints to the master through the Core API, as on a cluster.

    shared_fs checkpoint storage is mounted at /determined_shared_fs, as Determined does.
    adaptive_asha: the master preempts a trial that does not rank in the top 1/divisor at a rung
    (see `_asha_rungs`); trials run one after the other, so a rung's ranking only counts trials
    that reached it before. Not done: several trials at once, slots > 1 across containers,
    max_restarts, Secret references in the pod spec (refused with a clear error)."""

    def __init__(self, images: Any, work_dir: Path, default_image: str = "cdl/train",
                 master_url: str | None = None, secret_env: dict[str, str] | None = None) -> None:
        self.images = images
        self.work_dir = Path(work_dir)
        self.default_image = default_image
        self.master_url = master_url
        self.secret_env = secret_env or {}
        self._queue: list[tuple[FakeDeterminedMaster, Experiment]] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._running: dict[int, Any] = {}  # trial id -> Container
        self._thread: threading.Thread | None = None

    def submit(self, master: FakeDeterminedMaster, exp: Experiment) -> None:
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fake-determined-trials", daemon=True)
                self._thread.start()
            self._queue.append((master, exp))
            self._cv.notify_all()

    def kill(self, exp: Experiment) -> None:
        for t in exp.trials:
            container = self._running.get(t.id)
            if container is not None:
                threading.Thread(target=container.stop, args=(20,), daemon=True).start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for container in list(self._running.values()):
            container.stop(5)
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                master, exp = self._queue.pop(0)
            for trial in exp.trials:
                if self._stopping:
                    return
                if trial.state != "STATE_QUEUED":
                    continue
                try:
                    code, output = self._run(master, exp, trial)
                except Exception as exc:  # noqa: BLE001 - the trial fails with the reason, as a pod that cannot start
                    code, output = 1, f"the simulation could not start trial {trial.id}: {exc}"
                master.finish_trial(trial, code, output)

    def trial_env(self, master: FakeDeterminedMaster, exp: Experiment, trial: Trial, token: str) -> dict[str, str]:
        """The environment of a trial container: what Determined sets, then the experiment's."""
        url = self.master_url or master.url
        host, _, port = url.split("://", 1)[-1].partition(":")
        allocation = f"trial-{trial.id}.{trial.id}.1"
        env = {
            "DET_MASTER": url, "DET_MASTER_HOST": host, "DET_MASTER_IP": host, "DET_MASTER_PORT": port or "80",
            "DET_CLUSTER_ID": "cdl-simulation", "DET_AGENT_ID": "simulation", "DET_CONTAINER_ID": allocation,
            "DET_SLOT_IDS": "[0]", "DET_TASK_ID": f"trial-{trial.id}", "DET_ALLOCATION_ID": allocation,
            "DET_RESOURCES_ID": allocation, "DET_RESOURCES_TYPE": "k8s-job", "DET_KUBERNETES_POD_IP": "127.0.0.1",
            "DET_KUBERNETES_JOB_PARALLELISM": "1",
            "DET_SESSION_TOKEN": token, "DET_USER": exp.user, "DET_TASK_TYPE": "TRIAL",
            "DET_TRIAL_ID": str(trial.id), "DET_TRIAL_RUN_ID": "1", "DET_EXPERIMENT_ID": str(exp.id),
            "DET_TRIAL_SEED": str(((exp.config.get("reproducibility") or {}).get("experiment_seed", 0) + trial.id)
                                  % (2 ** 31)),
            "DET_HPARAMS": json.dumps(trial.hparams), "DET_EXPERIMENT_CONFIG": json.dumps(merged_config(exp.config)),
            "DET_STEPS_COMPLETED": "0", "DET_UNIQUE_PORT_OFFSET": "0",
        }
        environment = exp.config.get("environment") or {}
        variables = environment.get("environment_variables") or []
        if isinstance(variables, dict):
            variables = variables.get("cpu") or []
        for entry in variables:
            key, _, value = str(entry).partition("=")
            env[key] = value
        for container in ((environment.get("pod_spec") or {}).get("spec") or {}).get("containers") or []:
            for var in container.get("env") or []:
                if "value" in var:
                    env[var["name"]] = str(var["value"])
                elif var["name"] in self.secret_env:
                    env[var["name"]] = self.secret_env[var["name"]]
                else:
                    raise MasterError(3, f"pod_spec env {var['name']}: the simulation resolves only literal values "
                                         "and the Secret values it was given")
        return env

    def _run(self, master: FakeDeterminedMaster, exp: Experiment, trial: Trial) -> tuple[int, str]:
        from cdl.simulation import containers

        reference = (exp.config.get("environment") or {}).get("image") or self.default_image
        if isinstance(reference, dict):
            reference = reference.get("cpu") or reference.get("cuda") or self.default_image
        if reference == DEFAULT_TRIAL_IMAGE:
            reference = self.default_image
        image = self.images.image(reference)
        token = master.start_trial(trial)
        env = self.trial_env(master, exp, trial, token)
        base = self.work_dir / f"experiment-{exp.id}" / f"trial-{trial.id}"
        run_dir = base / "run"
        workdir = run_dir / "determined" / "workdir"
        (run_dir / "determined" / "info").mkdir(parents=True, exist_ok=True)
        (run_dir / "determined" / "train").mkdir(parents=True, exist_ok=True)
        mounts: dict[str, Path] = {"/run": run_dir}
        storage = exp.config.get("checkpoint_storage") or {}
        if storage.get("type") == "shared_fs":
            mounts["/determined_shared_fs"] = Path(storage["host_path"])
        env["HOME"] = str(base / "home")
        container = containers.start(f"trial-{trial.id}", image, TRIAL_COMMAND, env, workdir,
                                     base / "container.log", mounts)
        self._running[trial.id] = container
        try:
            code = container.wait()
        finally:
            self._running.pop(trial.id, None)
        return code, container.output()


def _length(searcher: dict[str, Any]) -> tuple[str, int]:
    if searcher.get("time_metric") and searcher.get("max_time"):
        return searcher["time_metric"], int(searcher["max_time"])
    max_length = searcher.get("max_length") or {"epochs": 1}
    unit, value = next(iter(max_length.items()))
    return unit, int(value)


__all__ = ["FakeDeterminedMaster", "MasterError", "TrialExecutor", "check_config"]
