"""The Determined training engine: Experiments as Determined experiments.

`experiment_config` turns an Experiment spec into a Determined 0.38 experiment configuration
(a pure function: the spec, the data version, the resolved secrets and the settings in, a dict
out); `DeterminedTrainingEngine` submits it with the model directory through the Determined SDK
(`determined.experimental.client`), follows state, progress, trials and the best checkpoint, and
kills it on delete. `DeterminedMaster` is the logged-in client the registry engine
(`cdl.engines.registry.determined`) shares.

Determined 0.38 specifics this follows: `searcher.max_length` is deprecated (training lengths
belong to the training code; every trial runs through `cdl.runtime.launch`, which takes the
length from `CDL_MAX_LENGTH`), kept for Determined's own progress figures; `adaptive_asha`
requires `time_metric` and `max_time` (the PyTorch Trainer reports
`epochs` and `batches` with every validation); `max_concurrent_trials` defaults to 16.

Errors: an unreachable master (or one answering 5xx) is a `TransientEngineError`; a request the
master refuses is a `PermanentEngineError` with the master's message. Passwords and keys never
appear in messages.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import urllib3
from determined.common import api
from determined.common.api import authentication, bindings, certs
from determined.common.api import errors as det_errors
from determined.experimental.client import Determined

from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import (
    ChangeListener,
    CheckpointInfo,
    DataRef,
    EngineRef,
    JobState,
    ResourceKey,
    TrainingRequest,
    TrainingStatus,
    TrialReport,
)
from cdl.engines.changes import ChangeFeed, ChangePoller
from cdl.engines.settings import DeterminedSettings
from cdl.errors import PermanentEngineError, TransientEngineError

log = logging.getLogger("cdl.engines.training.determined")
T = TypeVar("T")

SEARCHERS = {"single": "single", "random": "random", "grid": "grid", "asha": "adaptive_asha"}
CONTAINER = "determined-container"  # the trial container's name in Determined's pod spec
LABEL_RESOURCE = "cdl.dev/resource"
LABEL_UID = "cdl.dev/uid"
LABEL_GENERATION = "cdl.dev/generation"
LABEL_RUN = "cdl.dev/run"

EXPERIMENT_STATES: dict[str, JobState] = {
    "STATE_QUEUED": JobState.PENDING,
    "STATE_PULLING": JobState.PENDING,
    "STATE_STARTING": JobState.PENDING,
    "STATE_ACTIVE": JobState.RUNNING,
    "STATE_RUNNING": JobState.RUNNING,
    "STATE_PAUSED": JobState.RUNNING,
    "STATE_STOPPING_COMPLETED": JobState.RUNNING,
    "STATE_COMPLETED": JobState.SUCCEEDED,
    "STATE_STOPPING_CANCELED": JobState.CANCELED,
    "STATE_STOPPING_KILLED": JobState.CANCELED,
    "STATE_CANCELED": JobState.CANCELED,
    "STATE_STOPPING_ERROR": JobState.FAILED,
    "STATE_ERROR": JobState.FAILED,
    "STATE_DELETING": JobState.FAILED,
    "STATE_DELETED": JobState.FAILED,
    "STATE_DELETE_FAILED": JobState.FAILED,
}
TRIAL_STATES: dict[str, JobState] = {
    "STATE_QUEUED": JobState.PENDING,
    "STATE_PULLING": JobState.PENDING,
    "STATE_STARTING": JobState.PENDING,
    "STATE_ACTIVE": JobState.RUNNING,
    "STATE_RUNNING": JobState.RUNNING,
    "STATE_PAUSED": JobState.RUNNING,
    "STATE_STOPPING_COMPLETED": JobState.RUNNING,
    "STATE_COMPLETED": JobState.SUCCEEDED,
    "STATE_STOPPING_CANCELED": JobState.CANCELED,
    "STATE_STOPPING_KILLED": JobState.CANCELED,
    "STATE_CANCELED": JobState.CANCELED,
    "STATE_STOPPING_ERROR": JobState.FAILED,
    "STATE_ERROR": JobState.FAILED,
}


# --------------------------------------------------------------------------- the experiment config


def experiment_name(key: ResourceKey, generation: int, run: int) -> str:
    """Unique per Experiment resource, generation and run: how a resubmission finds its experiment."""
    return f"cdl-{key.namespace}-{key.name}-g{generation}-r{run}"


def experiment_labels(key: ResourceKey, generation: int, run: int) -> list[str]:
    labels = ["cdl", f"{LABEL_RESOURCE}={key.namespace}.{key.name}", f"{LABEL_GENERATION}={generation}",
              f"{LABEL_RUN}={run}"]
    if key.uid:
        labels.append(f"{LABEL_UID}={key.uid}")
    return labels


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merge key by key, anything else replaces;
    a `null` in the override removes the key."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def entrypoint_for(entrypoint: str, slots: int) -> str:
    """Determined's entrypoint for spec.model.entrypoint.

    `module:Class` (a PyTorchTrial) and `module:function` run through cdl's trial bootstrap
    (`python3 -m cdl.runtime.launch`, which reads `CDL_ENTRYPOINT`): it copies the data version
    into `CDL_DATA_DIR` and enforces early stopping before the user's code runs, and trains a
    PyTorchTrial with Determined's own Trainer API. `script.py` runs as a script. Several slots
    put either under Determined's torch_distributed launcher."""
    command = f"python3 {entrypoint}" if entrypoint.endswith(".py") else "python3 -m cdl.runtime.launch"
    if slots > 1:
        return f"python3 -m determined.launch.torch_distributed {command}"
    return command


def code_env(spec: ExperimentSpec) -> dict[str, str]:
    """The code version a trial runs, for its own records: the bundle's hash and the git commit."""
    out: dict[str, str] = {}
    bundle = getattr(spec.model, "bundle", None)
    if bundle is not None:
        out["CDL_CODE_SHA256"] = bundle.sha256
    git = getattr(spec.model, "git", None)
    if git is not None and git.commit:
        out["CDL_CODE_COMMIT"] = git.commit
    return out


def _length(spec: ExperimentSpec) -> tuple[str, int] | None:
    ml = spec.searcher.max_length
    return (ml.unit, ml.units) if ml is not None else None


def searcher_config(spec: ExperimentSpec) -> dict[str, Any]:
    """The 0.38 searcher section for spec.searcher."""
    s = spec.searcher
    out: dict[str, Any] = {"name": SEARCHERS[s.name], "metric": s.metric, "smaller_is_better": s.smaller_is_better}
    length = _length(spec)
    if length is not None:
        # Deprecated in 0.38, still how Determined's legacy Trial harness learns how long to train.
        out["max_length"] = {length[0]: length[1]}
    if s.name in ("random", "asha"):
        out["max_trials"] = s.max_trials
    if s.name in ("random", "grid", "asha"):
        out["max_concurrent_trials"] = s.max_concurrent_trials
    if s.name == "asha":
        assert length is not None  # the spec's validation requires maxLength for asha
        asha = s.asha
        out.update(
            time_metric=length[0], max_time=length[1], mode="standard",
            divisor=asha.divisor if asha else 4, max_rungs=asha.max_rungs if asha else 5,
        )
    return out


def checkpoint_uri(storage: dict[str, Any], uuid: str) -> str:
    """Where Determined writes checkpoint `uuid` for a checkpoint_storage section."""
    kind = storage.get("type")
    if kind == "s3":
        prefix = (storage.get("prefix") or "").strip("/")
        return f"s3://{storage.get('bucket')}/{prefix + '/' if prefix else ''}{uuid}"
    if kind == "shared_fs":
        base = Path(storage.get("host_path") or "/")
        if storage.get("storage_path"):
            base = base / str(storage["storage_path"]).lstrip("/")
        return f"{base.as_uri()}/{uuid}"
    if kind == "directory":
        return f"file://{storage.get('container_path', '')}/{uuid}"
    return f"{kind}://{uuid}"


def _split_credentials(value: str) -> tuple[str, str]:
    access, sep, secret = value.partition(":")
    if not sep or not access or not secret:
        raise PermanentEngineError(
            "spec.checkpointStorage.credentialsSecretRef: the Secret key must hold ACCESS_KEY:SECRET_KEY")
    return access, secret


def checkpoint_storage(spec: ExperimentSpec, secrets: dict[str, str], settings: DeterminedSettings,
                       key: ResourceKey | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(checkpoint_storage section, env entries for the trial container) for the spec.

    S3/MinIO credentials come from the Experiment's Secret (`credentialsSecretRef`, resolved into
    `secrets` by the reconciler, "ACCESS_KEY:SECRET_KEY") when it names one, since Determined's
    pods cannot read Secrets of the Experiment's namespace; otherwise from the Secret
    `settings.checkpoint_secret` in Determined's namespace, by reference (`secretKeyRef`)."""
    uri = spec.checkpoint_storage.uri if spec.checkpoint_storage else settings.checkpoint_storage
    if not uri:
        raise PermanentEngineError(
            f"Experiment {key or ''}: spec.checkpointStorage is required with the determined engine "
            "(or set cluster.determined.checkpointStorage in the operator configuration)".replace("  ", " "))
    env: list[dict[str, Any]] = []
    if uri.startswith("file://"):
        return {"type": "shared_fs", "host_path": urlparse(uri).path}, env
    parsed = urlparse(uri)
    storage: dict[str, Any] = {"type": "s3", "bucket": parsed.netloc}
    prefix = parsed.path.strip("/")
    if prefix:
        storage["prefix"] = prefix
    if settings.s3_endpoint_url:
        storage["endpoint_url"] = settings.s3_endpoint_url
    ref = spec.checkpoint_storage.credentials_secret_ref if spec.checkpoint_storage else None
    if ref is not None:
        value = secrets.get(f"{ref.name}/{ref.key}")
        if value is None:
            raise PermanentEngineError(
                f"Experiment {key or ''}: Secret {ref.name} key {ref.key} (spec.checkpointStorage."
                "credentialsSecretRef) was not resolved")
        storage["access_key"], storage["secret_key"] = _split_credentials(value)
    elif settings.checkpoint_secret:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": settings.checkpoint_secret, "key": var}}})
    return storage, env


def experiment_config(
    spec: ExperimentSpec,
    data: DataRef | None,
    secrets: dict[str, str] | None = None,
    settings: DeterminedSettings | None = None,
    key: ResourceKey | None = None,
    generation: int = 1,
    run: int = 1,
) -> dict[str, Any]:
    """The Determined 0.38 experiment configuration for an Experiment spec (pure).

    Hyperparameters pass through in Determined's own syntax; the searcher maps onto
    single/random/grid/adaptive_asha; resources onto slots_per_trial and the resource pool; the
    data version reaches the trials as CDL_DATA_URI/CDL_DATA_REPO/CDL_DATA_COMMIT; `spec.determined`
    is deep-merged last, so a user can override any of it."""
    settings = settings or DeterminedSettings.from_env({})
    key = key or ResourceKey("default", "experiment")
    resources = spec.resources
    slots = resources.slots_per_trial if resources else 1
    length = _length(spec)

    env: dict[str, str] = dict(settings.trial_env)
    env.update({
        "CDL_EXPERIMENT": f"{key.namespace}/{key.name}",
        "CDL_SEED": str(spec.seed),
        "CDL_RUN": str(run),
        "CDL_ENTRYPOINT": spec.model.entrypoint,
        "CDL_METRIC": spec.searcher.metric,
        "CDL_SMALLER_IS_BETTER": "true" if spec.searcher.smaller_is_better else "false",
    })
    if settings.s3_endpoint_url:
        env.setdefault("CDL_S3_ENDPOINT", settings.s3_endpoint_url)
    env.update(code_env(spec))
    if length is not None:
        env["CDL_MAX_LENGTH"] = f"{length[0]}:{length[1]}"
    if data is not None:
        env.update({"CDL_DATA_REPO": data.repo, "CDL_DATA_COMMIT": data.commit})
        if data.uri:
            env["CDL_DATA_URI"] = data.uri
    early = spec.searcher.early_stopping
    if early is not None:
        env["CDL_EARLY_STOPPING"] = json.dumps(early.wire(), sort_keys=True)
        env["CDL_SMALLER_IS_BETTER"] = "true" if spec.searcher.smaller_is_better else "false"

    storage, secret_env = checkpoint_storage(spec, secrets or {}, settings, key)
    environment: dict[str, Any] = {"environment_variables": [f"{k}={v}" for k, v in sorted(env.items())]}
    image = spec.model.image or settings.default_image
    if image:
        environment["image"] = image
    container: dict[str, Any] = {"name": CONTAINER}
    if secret_env:
        container["env"] = secret_env
    if early is not None and early.max_trial_memory:
        container["resources"] = {"limits": {"memory": str(early.max_trial_memory)}}
    if len(container) > 1:
        environment["pod_spec"] = {"spec": {"containers": [container]}}

    config: dict[str, Any] = {
        "name": experiment_name(key, generation, run),
        "description": f"cdl Experiment {key.namespace}/{key.name} (generation {generation}, run {run})",
        "labels": experiment_labels(key, generation, run),
        "entrypoint": entrypoint_for(spec.model.entrypoint, slots),
        "hyperparameters": copy.deepcopy(spec.hyperparameters),
        "searcher": searcher_config(spec),
        "resources": {"slots_per_trial": slots},
        "reproducibility": {"experiment_seed": spec.seed},
        "environment": environment,
        "checkpoint_storage": storage,
    }
    if length is not None:
        unit, units = length
        config["min_validation_period"] = {"epochs": 1} if unit == "epochs" else {"batches": max(1, units // 10)}
    pool = resources.resource_pool if resources else None
    if pool is None:
        pool = settings.gpu_resource_pool if resources and resources.gpu else settings.cpu_resource_pool
    pool = pool or settings.resource_pool
    if pool:
        config["resources"]["resource_pool"] = pool
    if settings.max_restarts is not None:
        config["max_restarts"] = settings.max_restarts
    if spec.determined:
        config = deep_merge(config, spec.determined)
    return config


# --------------------------------------------------------------------------- the client


class DeterminedMaster:
    """A logged-in SDK client, logged in again when the session expires, with cdl's error kinds."""

    def __init__(self, settings: DeterminedSettings) -> None:
        self.settings = settings
        self._client: Determined | None = None
        self._lock = threading.Lock()

    def _login(self) -> Determined:
        s = self.settings
        master = api.canonicalize_master_url(s.master)
        cert = certs.default_load(master_url=master, explicit_path=str(s.cert_file) if s.cert_file else None,
                                  explicit_cert_name=None, explicit_noverify=s.noverify)
        password = s.password.get_secret_value() if s.password else ""
        # authentication.login, unlike Determined(), keeps no token cache in the operator's home.
        session = authentication.login(master, s.user, password, cert)
        # Connection failures are retried for every method (nothing was sent); 5xx answers only for
        # idempotent ones, so a create is never sent twice.
        retry = urllib3.util.retry.Retry(total=s.request_retries, connect=s.request_retries, backoff_factor=0.2,
                                         status_forcelist=[502, 503, 504], raise_on_status=False)
        return Determined._from_session(session.with_retry(retry))

    @property
    def client(self) -> Determined:
        with self._lock:
            if self._client is None:
                self._client = self._login()
            return self._client

    @property
    def session(self) -> api.Session:
        return self.client._session

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` against the master; log in again once on an expired session."""
        for attempt in (1, 2):
            try:
                return fn()
            except det_errors.UnauthenticatedException:
                with self._lock:
                    self._client = None
                if attempt == 2:
                    raise PermanentEngineError(
                        f"Determined refused {what}: not authenticated as {self.settings.user}",
                        reason="EngineRejected") from None
            except det_errors.MasterNotFoundException:
                raise TransientEngineError(
                    f"Determined master at {self.settings.master} is unreachable ({what})") from None
            except det_errors.ForbiddenException as exc:
                raise PermanentEngineError(f"Determined refused {what}: {exc.message}",
                                           reason="EngineRejected") from None
            except det_errors.NotFoundException:
                raise
            except det_errors.APIException as exc:
                status = getattr(exc, "status_code", 0) or 0
                if status >= 500 or status in (408, 429):
                    raise TransientEngineError(
                        f"Determined master at {self.settings.master} failed ({what}): {exc.message}") from None
                raise PermanentEngineError(f"Determined refused {what}: {exc.message}",
                                           reason="EngineRejected") from None
            except det_errors.BadRequestException as exc:  # timeouts and other transport trouble
                raise TransientEngineError(
                    f"Determined master at {self.settings.master} did not answer ({what}): {exc.message}") from None
            except bindings.APIHttpError as exc:
                raise PermanentEngineError(f"Determined gave an unexpected answer to {what}: {exc}") from None
        raise AssertionError("unreachable")


def paged(fetch: Callable[[int], Any], items: str) -> list[Any]:
    return [item for page in api.read_paginated(fetch) for item in (getattr(page, items) or [])]


def _state_name(state: Any) -> str:
    return getattr(state, "value", str(state))


EARLY_STOP_PREFIXES = ("early-stopped", "budget:", "median:", "predicted:", "resources:")  # cdl.runtime.stopping reasons


def _early_stop_reason(trial: Any) -> str | None:
    """Why the trial stopped itself (cdl.runtime.stopping sets it as the trial's runner state and
    reports it in the metrics group `cdl_early_stopping`), or None."""
    state = getattr(trial, "runnerState", None) or ""
    if state.startswith(EARLY_STOP_PREFIXES):
        return state
    group = (getattr(trial, "summaryMetrics", None) or {}).get("cdl_early_stopping") or {}
    reason = group.get("reason") if isinstance(group, dict) else None
    if isinstance(reason, dict):  # summary statistics: {"last": ..., "type": "string"}
        reason = reason.get("last")
    return reason if isinstance(reason, str) and reason else None


def _floats(metrics: dict[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = float(v)
    return out


# --------------------------------------------------------------------------- training


class DeterminedTrainingEngine:
    """`TrainingEngine` on a Determined master (0.38)."""

    name = "determined"

    def __init__(self, settings: DeterminedSettings, poll_seconds: float = 5.0) -> None:
        self.settings = settings
        self.master = DeterminedMaster(settings)
        # Change reports (base.ReportsChanges): the master has no push API for experiment state,
        # so one poller lists every cdl experiment in one call and reports the ones that moved.
        self.changes = ChangeFeed()
        self.poller = ChangePoller(self.changes, self.experiment_states, poll_seconds, "determined")

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        unsubscribe = self.changes.subscribe(listener)
        self.poller.start()
        return unsubscribe

    def experiment_states(self) -> dict[ResourceKey, object]:
        """Per Experiment resource, the state of its Determined experiments (one paged list)."""
        def fetch(offset: int) -> bindings.v1GetExperimentsResponse:
            return bindings.get_GetExperiments(self.master.session, labels=["cdl"], offset=offset)

        found = self.master.call("listing the cdl experiments", lambda: paged(fetch, "experiments"))
        states: dict[ResourceKey, object] = {}
        for exp in found:
            owner = next((label.split("=", 1)[1] for label in exp.labels or []
                          if label.startswith(f"{LABEL_RESOURCE}=")), "")
            namespace, _, name = owner.partition(".")  # a namespace has no dots
            if namespace and name:
                key = ResourceKey(namespace, name)
                states[key] = (*states.get(key, ()), (exp.id, _state_name(exp.state), exp.numTrials, exp.progress))
        return states

    def close(self, kill_trials: bool = False) -> None:
        """Operator shutdown: stop listing (experiments on the cluster go on)."""
        self.poller.stop()

    def ref(self, experiment_id: int) -> EngineRef:
        return EngineRef(str(experiment_id), f"{self.settings.web_url}/det/experiments/{experiment_id}", self.name)

    def submit(self, request: TrainingRequest) -> EngineRef:
        key = request.key
        config = experiment_config(request.spec, request.data, request.secrets, self.settings, key,
                                   request.generation, request.run)
        name = config.get("name") or experiment_name(key, request.generation, request.run)
        if not Path(request.model_dir).is_dir():
            raise PermanentEngineError(f"Experiment {key}: spec.model.path {request.model_dir} is not a directory")
        existing = self._find(name, experiment_labels(key, request.generation, request.run))
        if existing is not None:
            log.info("Experiment %s: found Determined experiment %s (%s)", key, existing, name)
            return self.ref(existing)
        def create() -> Any:
            try:
                return self.master.client.create_experiment(config, model_dir=str(request.model_dir),
                                                            project_id=self.settings.project_id)
            except ValueError as exc:  # the SDK's checks of the model directory (size, paths)
                raise PermanentEngineError(f"Experiment {key}: spec.model.path {request.model_dir}: {exc}") from None

        created = self.master.call(f"creating the experiment of Experiment {key}", create)
        log.info("Experiment %s: submitted Determined experiment %s", key, created.id)
        return self.ref(created.id)

    def _find(self, name: str, labels: list[str]) -> int | None:
        def fetch(offset: int) -> bindings.v1GetExperimentsResponse:
            return bindings.get_GetExperiments(self.master.session, name=name, offset=offset)

        found = self.master.call(f"looking up experiment {name}", lambda: paged(fetch, "experiments"))
        wanted = {label for label in labels if label.startswith((LABEL_RESOURCE, LABEL_UID))}
        for exp in sorted(found, key=lambda e: e.id):
            state = _state_name(exp.state)
            if exp.name == name and not exp.archived and wanted <= set(exp.labels or []) and \
                    state not in ("STATE_DELETED", "STATE_DELETING"):
                return int(exp.id)
        return None

    def _experiment(self, ref: EngineRef) -> bindings.v1Experiment:
        def get() -> bindings.v1Experiment:
            try:
                return bindings.get_GetExperiment(self.master.session, experimentId=int(ref.id)).experiment
            except det_errors.NotFoundException:
                raise PermanentEngineError(f"Determined experiment {ref.id} no longer exists") from None

        return self.master.call(f"reading experiment {ref.id}", get)

    def _trials(self, experiment_id: int) -> list[bindings.trialv1Trial]:
        def fetch(offset: int) -> bindings.v1GetExperimentTrialsResponse:
            return bindings.get_GetExperimentTrials(self.master.session, experimentId=experiment_id, offset=offset)

        return self.master.call(f"reading the trials of experiment {experiment_id}",
                                lambda: paged(fetch, "trials"))

    def status(self, ref: EngineRef) -> TrainingStatus:
        exp = self._experiment(ref)
        config = exp.config or {}
        searcher = config.get("searcher") or {}
        storage = config.get("checkpoint_storage") or {}
        state = EXPERIMENT_STATES.get(_state_name(exp.state), JobState.RUNNING)
        reports = [self._report(t, searcher, storage) for t in self._trials(int(exp.id))]
        best = self._best(reports, searcher, getattr(exp, "bestTrialId", None))
        progress = float(exp.progress or 0.0)
        if state == JobState.SUCCEEDED:
            progress = 1.0
        status = TrainingStatus(state=state, progress=progress, trials=reports, best=best)
        failed = [t for t in reports if t.state == JobState.FAILED]
        if state == JobState.FAILED:
            status.message = f"Determined experiment {exp.id} ended in {_state_name(exp.state)}" + (
                f": trial {failed[0].id} failed" if failed else "")
        elif state == JobState.CANCELED:
            status.message = f"Determined experiment {exp.id} was canceled"
        elif state == JobState.PENDING:
            status.message = f"Determined experiment {exp.id} is {_state_name(exp.state)[6:].lower()}"
        return status

    def _report(self, trial: bindings.trialv1Trial, searcher: dict[str, Any], storage: dict[str, Any]) -> TrialReport:
        state = TRIAL_STATES.get(_state_name(trial.state), JobState.RUNNING)
        best_validation = getattr(trial, "bestValidation", None)
        latest = getattr(trial, "latestValidation", None)
        metrics = _floats(best_validation.metrics.avgMetrics) if best_validation else {}
        latest_metrics = _floats(latest.metrics.avgMetrics) if latest else {}
        unit = searcher.get("time_metric") or next(iter(searcher.get("max_length") or {"batches": 0}))
        if unit == "epochs" and "epochs" in latest_metrics:
            done = int(latest_metrics["epochs"])
        elif unit == "batches":
            done = int(trial.totalBatchesProcessed or 0)
        else:
            done = int(latest_metrics.get(unit, trial.totalBatchesProcessed or 0))
        target = searcher.get("max_time") or next(iter((searcher.get("max_length") or {0: 0}).values()))
        stop_reason = _early_stop_reason(trial)
        if stop_reason is None and state == JobState.SUCCEEDED and target and done < int(target) \
                and searcher.get("name") in ("adaptive_asha", "async_halving"):
            stop_reason = "asha: not promoted"
        elif stop_reason is None and state == JobState.CANCELED:
            stop_reason = "canceled"
        checkpoint = None
        best_ck = getattr(trial, "bestCheckpoint", None)
        if best_ck is not None and getattr(best_ck, "uuid", None):
            checkpoint = CheckpointInfo(uuid=best_ck.uuid, uri=checkpoint_uri(storage, best_ck.uuid))
        return TrialReport(
            id=str(trial.id), state=state, hparams=dict(trial.hparams or {}), metrics=metrics,
            stop_reason=stop_reason, checkpoint=checkpoint, length_done=done,
            wall_seconds=getattr(trial, "wallClockTime", None),
        )

    def _best(self, reports: list[TrialReport], searcher: dict[str, Any], best_id: Any) -> TrialReport | None:
        metric = searcher.get("metric")
        candidates = [t for t in reports if metric in t.metrics and t.checkpoint is not None]
        if best_id is not None:
            for t in candidates:
                if t.id == str(best_id):
                    return t
        if not candidates:
            return None
        smaller = bool(searcher.get("smaller_is_better", True))
        return (min if smaller else max)(candidates, key=lambda t: t.metrics[metric])

    def kill(self, ref: EngineRef) -> None:
        def kill() -> None:
            try:
                bindings.post_KillExperiment(self.master.session, id=int(ref.id))
            except det_errors.NotFoundException:
                pass

        self.master.call(f"killing experiment {ref.id}", kill)

    def logs(self, ref: EngineRef, trial_id: str | None = None) -> str:
        if trial_id is None:
            trials = self._trials(int(ref.id))
            if not trials:
                return ""
            trial_id = str(trials[0].id)

        def read() -> str:
            lines = [entry.log or entry.message for entry in
                     bindings.get_TrialLogs(self.master.session, trialId=int(trial_id), follow=False)]
            return "".join(line if line.endswith("\n") else line + "\n" for line in lines if line)

        return self.master.call(f"reading the logs of trial {trial_id}", read)


__all__ = [
    "DeterminedTrainingEngine",
    "DeterminedMaster",
    "experiment_config",
    "searcher_config",
    "checkpoint_storage",
    "checkpoint_uri",
    "entrypoint_for",
    "deep_merge",
]
