"""Experiment: bind to a DataPipeline output, submit once per generation and run, follow the
trials, and publish the best trial for ModelVersions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdl.api.experiment import ExperimentSpec, ModelCode
from cdl.engines.base import EngineRef, JobState, ResourceKey, TrainingRequest, TrainingStatus
from cdl.engines.training.code_bundle import BundleError
from cdl.errors import DependencyNotReady, InvalidSpec
from cdl.reconcile.base import Context, Resource, Result, now, parse, set_condition
from cdl.stores.artifacts import ArtifactIntegrityError, ArtifactNotFound

KIND = "Experiment"
RETRAIN_ANNOTATION = "cdl.dev/retrain-run"
PHASES = {
    JobState.PENDING: "Submitted",
    JobState.RUNNING: "Running",
    JobState.SUCCEEDED: "Completed",
    JobState.FAILED: "Failed",
    JobState.CANCELED: "Canceled",
}


def engine_name(spec: ExperimentSpec, ctx: Context) -> str:
    return spec.engine or ctx.config.default_engine(KIND)


def desired_run(res: Resource) -> int:
    """Run 1 unless Model Maintenance asked for a retrain through the annotation."""
    try:
        asked = int(res.annotations.get(RETRAIN_ANNOTATION, "1"))
    except ValueError:
        asked = 1
    return max(asked, 1)


def engine_ref(status: dict[str, Any]) -> EngineRef | None:
    ref = status.get("engineRef")
    return EngineRef(ref["id"], ref.get("url", ""), ref.get("engine", "")) if ref and ref.get("id") else None


def resolve_output(ctx: Context, namespace: str, pipeline: str, output: str, commit: str = ""):
    """The DataRef of one DataPipeline output at a commit ('' = its current commit)."""
    dpl = ctx.cluster.get("DataPipeline", namespace, pipeline)
    if dpl is None:
        raise DependencyNotReady(f"waiting for DataPipeline {pipeline} to exist")
    outputs = (dpl.get("status") or {}).get("outputs") or {}
    if output not in outputs:
        phase = (dpl.get("status") or {}).get("phase") or "Pending"
        raise DependencyNotReady(f"waiting for DataPipeline {pipeline} output {output} (phase {phase})")
    key = ResourceKey(namespace, pipeline, (dpl.get("metadata") or {}).get("uid", ""))
    return data_engine_of(ctx, dpl).resolve(key, output, commit or outputs[output]["commit"])


def data_engine_of(ctx: Context, dpl: dict[str, Any]) -> Any:
    """The data engine that drives a DataPipeline (its spec.engine, else the default)."""
    return ctx.engines.data((dpl.get("spec") or {}).get("engine") or ctx.config.default_engine("DataPipeline"))


def output_engine(ctx: Context, namespace: str, pipeline: str) -> Any | None:
    dpl = ctx.cluster.get("DataPipeline", namespace, pipeline)
    return data_engine_of(ctx, dpl) if dpl is not None else None


def model_code_dir(model: ModelCode, ctx: Context, title: str) -> Path:
    """The model directory: the verified, unpacked bundle when the spec names one (a cluster),
    else spec.model.path on the operator's disk (the embedded platform)."""
    if model.bundle is not None:
        try:
            return ctx.engines.code_dir(model.bundle.uri, model.bundle.sha256)
        except (BundleError, ArtifactIntegrityError, ArtifactNotFound) as exc:
            raise InvalidSpec(title, [("spec.model.bundle", str(exc))]) from None
    model_dir = ctx.resolve_path(model.path or "")
    if not model_dir.is_dir():
        raise InvalidSpec(title, [("spec.model.path", f"directory {model_dir} does not exist")])
    return model_dir


def bind_data(res: Resource, spec: ExperimentSpec, ctx: Context):
    """The exact DataPipeline output commit this run trains on (pinned, or the latest)."""
    if spec.data is None:
        return None
    return resolve_output(ctx, res.namespace, spec.data.pipeline_ref.name, spec.data.output, spec.data.commit)


def reconcile(res: Resource, ctx: Context) -> Result:
    spec: ExperimentSpec = parse(res)  # schema, cross-field and hyperparameter rules, once
    engine = ctx.engines.training(engine_name(spec, ctx))
    status, result = res.status, Result()
    ref = status.get("engineRef") or {}
    run = desired_run(res)

    if ref.get("generation") != str(res.generation) or int(ref.get("run", "1")) != run:
        old = engine_ref(status)
        if old is not None and status.get("phase") in ("Submitted", "Running"):
            engine.kill(old)
            result.event("Superseded", f"stopped {old.id}: the spec changed or a retrain was asked for")
        data = bind_data(res, spec, ctx)
        model_dir = model_code_dir(spec.model, ctx, res.title)
        secrets = {}
        storage = spec.checkpoint_storage
        if storage is not None and storage.credentials_secret_ref is not None:
            ref_ = storage.credentials_secret_ref
            secrets[f"{ref_.name}/{ref_.key}"] = ctx.cluster.read_secret(res.namespace, ref_.name, ref_.key)
        request = TrainingRequest(res.key, spec, res.generation, run, model_dir, data, secrets)
        submitted = engine.submit(request)
        result.status.update(
            phase="Submitted",
            engineRef={**submitted.wire(), "generation": str(res.generation), "run": str(run)},
            run=run,
            data={"repo": data.repo, "commit": data.commit} if data else None,
            startTime=now(),
            completionTime=None,
            trials={"total": 0, "running": 0, "completed": 0, "earlyStopped": 0, "failed": 0},
            progress=0.0,
            message=f"submitted {submitted.id} to the {engine.name} engine (run {run})",
        )
        if data is None:
            result.status.pop("data")
        set_condition(result.status, status, "Ready", False, "Submitted", result.status["message"], res.generation)
        result.event("Submitted", result.status["message"])
        result.requeue = True
        return result

    current = engine_ref(status)
    assert current is not None
    report = engine.status(current)
    _publish(report, spec, result)
    phase = PHASES[report.state]
    counts = report.counts()
    result.status["phase"] = phase
    if report.state == JobState.SUCCEEDED:
        best = result.status.get("bestMetric")
        message = f"completed: {counts['total']} trial(s), best {spec.searcher.metric} {best}"
        result.status.setdefault("completionTime", status.get("completionTime") or now())
        set_condition(result.status, status, "Ready", True, "Completed", message, res.generation)
    elif report.state.finished:
        message = report.message or f"experiment {phase.lower()}"
        result.status.setdefault("completionTime", status.get("completionTime") or now())
        set_condition(result.status, status, "Ready", False, phase, message, res.generation)
    else:
        message = report.message or (
            f"{counts['running']} running, {counts['completed'] + counts['earlyStopped']} finished of "
            f"{spec.searcher.max_trials} trial(s)"
        )
        set_condition(result.status, status, "Ready", False, "Running", message, res.generation)
        result.requeue = True
    result.status["message"] = message
    if status.get("phase") != phase:
        result.event(phase, message, warning=report.state == JobState.FAILED)
    return result


def _publish(report: TrainingStatus, spec: ExperimentSpec, result: Result) -> None:
    result.status["trials"] = report.counts()
    result.status["progress"] = round(max(0.0, min(1.0, report.progress)), 4)
    best = report.best
    if best is not None:
        checkpoint = {"uuid": best.checkpoint.uuid, "uri": best.checkpoint.uri} if best.checkpoint else None
        result.status["bestTrial"] = {
            "id": best.id,
            "hparams": best.hparams,
            "metrics": best.metrics,
            **({"checkpoint": checkpoint} if checkpoint else {}),
        }
        metric = best.metrics.get(spec.searcher.metric)
        if metric is not None:
            result.status["bestMetric"] = round(float(metric), 6)


def cleanup(res: Resource, ctx: Context) -> None:
    spec: ExperimentSpec = parse(res)
    ref = engine_ref(res.status)
    if ref is not None:
        engine = ctx.engines.training(engine_name(spec, ctx))
        engine.kill(ref)
        remove = getattr(engine, "delete", None)  # engines that keep run state remove it too
        if remove is not None:
            remove(ref)
