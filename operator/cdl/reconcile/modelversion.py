"""ModelVersion: register the chosen checkpoint as version N, evaluate it on the test output,
apply the gates, write the report, and move it between stages."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from cdl.api.experiment import ModelCode
from cdl.api.modelversion import ModelVersionSpec
from cdl.engines.base import CheckpointInfo, EngineRef, RegistrationRequest, registered_name
from cdl.errors import DependencyNotReady, PermanentEngineError
from cdl.quality.promotion import PromotionRefused, VersionState, plan_promotion
from cdl.reconcile.base import Context, Resource, Result, condition, now, parse, set_condition
from cdl.reconcile.experiment import model_code_dir, output_engine, resolve_output

KIND = "ModelVersion"


def spec_hash(spec: ModelVersionSpec) -> str:
    """Everything but the stage: a change re-registers and re-evaluates, a stage change promotes."""
    body = spec.wire()
    body.pop("stage", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def engine_name(exp_spec: dict[str, Any], ctx: Context) -> str:
    return exp_spec.get("engine") or ctx.config.default_engine("Experiment")


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def code_lineage(code: ModelCode, model_dir: Path) -> dict[str, Any]:
    """Which code trained the model: the bundle (hash, where) and the git commit it came from."""
    out: dict[str, Any] = {"gitCommit": code.git.commit if code.git else git_commit(model_dir), "image": code.image}
    if code.git is not None and code.git.url:
        out["gitUrl"] = code.git.url
    if code.bundle is not None:
        out.update(bundleSha256=code.bundle.sha256, bundleUri=code.bundle.uri)
    return out


def siblings(ctx: Context, res: Resource, model: str) -> list[dict[str, Any]]:
    """Other ModelVersions of the same registered model in this namespace."""
    return [
        mv for mv in ctx.cluster.list(KIND, res.namespace)
        if (mv.get("spec") or {}).get("model") == model and mv["metadata"]["name"] != res.name
    ]


def allocate_version(ctx: Context, res: Resource, model: str) -> int:
    if ctx.database is not None:
        return int(ctx.database.next_model_version(model, namespace=res.namespace, resource=res.name))
    versions = [(mv.get("status") or {}).get("version") or 0 for mv in siblings(ctx, res, model)]
    return max(versions, default=0) + 1


def reconcile(res: Resource, ctx: Context) -> Result:
    spec: ModelVersionSpec = parse(res)
    status, result = res.status, Result()
    fingerprint = spec_hash(spec)
    if status.get("specHash") != fingerprint or not status.get("artifact"):
        return _register(res, spec, ctx, fingerprint)
    if spec.evaluation is not None and (status.get("evaluation") or {}).get("passed") is None:
        return _evaluate(res, spec, ctx)
    _promote(res, spec, ctx, result)
    return result


def _experiment(res: Resource, spec: ModelVersionSpec, ctx: Context) -> dict[str, Any]:
    name = spec.source.experiment_ref.name
    exp = ctx.cluster.get("Experiment", res.namespace, name)
    if exp is None:
        raise DependencyNotReady(f"waiting for Experiment {name} to exist")
    est = exp.get("status") or {}
    if est.get("phase") != "Completed":
        progress = est.get("progress") or 0
        raise DependencyNotReady(
            f"waiting for Experiment {name} to complete (phase {est.get('phase') or 'Pending'}, "
            f"{progress:.0%} done)",
            reason="DependencyFailed" if est.get("phase") in ("Failed", "Canceled") else None,
        )
    return exp


def _checkpoint(res: Resource, spec: ModelVersionSpec, ctx: Context, exp: dict[str, Any]) -> tuple[str, CheckpointInfo, dict]:
    est = exp["status"]
    best = est.get("bestTrial") or {}
    if spec.source.checkpoint and "://" in spec.source.checkpoint:
        return spec.source.trial or "", CheckpointInfo(uuid=Path(spec.source.checkpoint).name,
                                                       uri=spec.source.checkpoint), {}
    wanted_trial = spec.source.trial
    if wanted_trial or spec.source.checkpoint:
        ref = est.get("engineRef") or {}
        engine = ctx.engines.training(engine_name(exp.get("spec") or {}, ctx))
        report = engine.status(EngineRef(ref.get("id", ""), ref.get("url", ""), ref.get("engine", "")))
        for trial in report.trials:
            ck = trial.checkpoint
            if ck and (trial.id == wanted_trial or ck.uuid == spec.source.checkpoint):
                return trial.id, ck, trial.hparams
        what = f"trial {wanted_trial}" if wanted_trial else f"checkpoint {spec.source.checkpoint}"
        raise PermanentEngineError(f"{res.title}: spec.source: {what} not found in Experiment "
                                   f"{spec.source.experiment_ref.name}")
    ck = best.get("checkpoint") or {}
    if not ck.get("uri"):
        raise PermanentEngineError(f"Experiment {spec.source.experiment_ref.name} has no best checkpoint to register")
    return best.get("id", ""), CheckpointInfo(uuid=ck.get("uuid", ""), uri=ck["uri"], path=_local(ck["uri"])), best.get(
        "hparams", {})


def _training_figures(ctx: Context, exp: dict[str, Any], trial_id: str) -> dict[str, Any]:
    """The registered trial's resource figures and the metadata the training runtime captured
    (model description, packages, environment, data facts), for the package and its report."""
    ref = (exp.get("status") or {}).get("engineRef") or {}
    figures: dict[str, Any] = {}
    if ctx.database is not None and ref.get("id"):
        with contextlib.suppress(Exception):  # nice to have; registration does not depend on it
            record = next((t for t in ctx.database.trials(ref["id"]) if t.trial_id == str(trial_id)), None)
            meta = (record.metadata if record else None) or {}
            for key in ("model", "packages", "environment"):
                if meta.get(key):
                    figures[key] = meta[key]
            if meta.get("data"):
                figures["trainingData"] = meta["data"]
    try:
        engine = ctx.engines.training(engine_name(exp.get("spec") or {}, ctx))
        report = engine.status(EngineRef(ref.get("id", ""), ref.get("url", ""), ref.get("engine", "")))
    except Exception:  # figures are nice to have; registration does not depend on them
        return figures
    trial = next((t for t in report.trials if t.id == trial_id), None)
    if trial is None:
        return figures
    return {**figures, "training": {"wallSeconds": trial.wall_seconds, "cpuSeconds": trial.cpu_seconds,
                                    "peakRssBytes": trial.peak_rss_bytes, "gpuUtilization": trial.gpu_utilization}}


def _local(uri: str) -> str | None:
    return uri.removeprefix("file://") if uri.startswith("file://") else None


def _label_counts(path: str | None) -> dict[str, int]:
    """The training label distribution (files per label folder), the baseline for drift."""
    if not path or not Path(path).is_dir():
        return {}
    counts: dict[str, int] = {}
    for child in Path(path).iterdir():
        if child.is_dir() and not child.name.startswith("."):
            counts[child.name] = sum(1 for p in child.rglob("*") if p.is_file())
    return counts


def _register(res: Resource, spec: ModelVersionSpec, ctx: Context, fingerprint: str) -> Result:
    result = Result()
    exp = _experiment(res, spec, ctx)
    exp_spec, est = exp.get("spec") or {}, exp["status"]
    trial, checkpoint, hparams = _checkpoint(res, spec, ctx, exp)
    code = ModelCode.model_validate(exp_spec.get("model") or {})
    model_dir = model_code_dir(code, ctx, res.title)
    version = res.status.get("version") if res.status.get("specHash") == fingerprint else None
    version = version or allocate_version(ctx, res, spec.model)
    data = est.get("data") or {}
    train_labels: dict[str, int] = {}
    binding = exp_spec.get("data") or {}
    if binding and data.get("commit"):
        with contextlib.suppress(DependencyNotReady):
            pipeline = binding["pipelineRef"]["name"]
            ref = resolve_output(ctx, res.namespace, pipeline, binding.get("output", "train"), data["commit"])
            train_labels = _label_counts(ref.path)
            counter = getattr(output_engine(ctx, res.namespace, pipeline), "label_counts", None)
            if not train_labels and counter is not None:  # Pachyderm: counted from pachd, nothing copied
                train_labels = counter(ref)
    figures = _training_figures(ctx, exp, trial)
    # Label folders counted here, else the examples per label the training runtime counted.
    train_labels = train_labels or dict((figures.pop("trainingData", None) or {}).get("perLabel") or {})
    figures.pop("trainingData", None)
    lineage = {
        "experiment": exp["metadata"]["name"],
        "run": est.get("run") or 1,
        "runId": (est.get("engineRef") or {}).get("id"),  # the knowledge base's key of the run's records
        "trial": trial,
        "checkpoint": checkpoint.uuid,
        "data": data,
        "code": code_lineage(code, model_dir),
        "trainLabels": train_labels,
    }
    registry = ctx.engines.registry(engine_name(exp_spec, ctx))
    registered = registry.register(RegistrationRequest(
        key=res.key, model_name=registered_name(res.namespace, spec.model), version=int(version), checkpoint=checkpoint, model_dir=model_dir,
        hparams=hparams, metadata={"lineage": lineage, "experiment": exp_spec, "trials": est.get("trials"),
                                   **figures},
    ))
    artifact = {"uri": registered.artifact_uri, "sha256": registered.sha256, "bytes": registered.bytes,
                "format": registered.format}
    evaluating = spec.evaluation is not None
    message = f"registered {spec.model} version {registered.version}" + ("; evaluating" if evaluating else "")
    result.status.update(
        phase="Evaluating" if evaluating else "Ready",
        version=registered.version,
        stage=res.status.get("stage") or "candidate",
        registry=registered.registry or {"engine": registry.name},
        artifact=artifact,
        lineage=lineage,
        specHash=fingerprint,
        evaluation=None,
        message=message,
    )
    set_condition(result.status, res.status, "Registered", True, "Registered", message, res.generation)
    set_condition(result.status, res.status, "Ready", not evaluating, "Evaluating" if evaluating else "Registered",
                  message, res.generation)
    result.event("Registered", f"{message} ({registered.sha256[:12]}, {registered.bytes} bytes)")
    if ctx.database is not None:
        ctx.database.record_model_version(
            model=spec.model, version=registered.version, namespace=res.namespace, resource=res.name,
            stage=result.status["stage"], artifact=artifact, lineage=lineage)
    result.requeue = True
    return result


def _evaluate(res: Resource, spec: ModelVersionSpec, ctx: Context) -> Result:
    from cdl.engines.registry.local import VARIANT_KEY_TEMPLATE
    from cdl.quality.evaluation_job import EvaluationRequest
    from cdl.quality.gates import apply_gates
    from cdl.quality.reports import render_report

    assert spec.evaluation is not None
    result = Result()
    ev = spec.evaluation
    evaluator = ctx.engines.evaluation(ctx.config.default_engine("Evaluation"))
    data = resolve_output(ctx, res.namespace, ev.data.pipeline_ref.name, ev.data.output)
    if evaluator.needs_local_copies and data.path is None:
        data = output_engine(ctx, res.namespace, ev.data.pipeline_ref.name).ensure_local(data)
    artifact = res.status["artifact"]
    compression = spec.compression.method if spec.compression else "none"
    registry = ctx.engines.registry((res.status.get("registry") or {}).get("engine") or "local")
    version = int(res.status["version"])
    exp = ctx.cluster.get("Experiment", res.namespace, (res.status.get("lineage") or {}).get("experiment", "")) or {}
    request = EvaluationRequest(
        job_id=f"eval-{res.namespace}-{res.name}-{res.status['specHash']}", namespace=res.namespace,
        resource=res.title, package_uri=artifact["uri"], package_sha256=artifact["sha256"],
        package_dir=ctx.engines.package_dir(artifact["uri"], artifact["sha256"]) if evaluator.needs_local_copies
        else None,
        entrypoint=ev.entrypoint, data=data, compression=compression,
        image=((exp.get("spec") or {}).get("model") or {}).get("image"),
        variant_key=VARIANT_KEY_TEMPLATE.format(name=_registry_name(res, spec.model), version=version,
                                                variant=compression),
        store_variant=lambda variant: registry.store_variant(_registry_name(res, spec.model), version, compression,
                                                             variant),
    )
    package = request.package_dir
    job = evaluator.ensure(request)
    if not job.state.finished:
        result.status.update(phase="Evaluating", message=f"evaluating on {data.repo}@{data.commit[:12]}")
        result.requeue = True
        return result
    if job.error or job.record is None:
        raise PermanentEngineError(f"evaluation of {res.title} failed: {job.error or 'no result'}")
    job_result = job.record
    metrics = job_result["metrics"]
    stage_metrics = {}
    for gate in ev.gates:
        if gate.max_drop_vs_stage:
            current = _in_stage(ctx, res, spec.model, gate.max_drop_vs_stage)
            if current is not None:
                stage_metrics[gate.max_drop_vs_stage] = ((current.get("status") or {}).get("evaluation") or {}).get(
                    "metrics", {})
    passed, gates = apply_gates(ev.gates, metrics, stage_metrics)
    gate_rows = [g.wire() for g in gates]
    evaluation = {"metrics": metrics, "gates": gate_rows, "passed": passed}
    if job_result.get("compressed"):
        evaluation["compressed"] = job_result["compressed"]
    markdown, report = render_report({
        "model": spec.model, "version": res.status.get("version"), "resource": res.title,
        "stage": res.status.get("stage") or "candidate",
        "metrics": metrics, "gates": gate_rows, "passed": passed, "confusion": job_result.get("confusion"),
        "classNames": job_result.get("classNames"), "lineage": res.status.get("lineage"),
        "artifact": res.status.get("artifact"), "compressed": job_result.get("compressed"),
        "packageDir": str(package) if package else None, "evaluation": job_result.get("evaluation"),
        "data": {"repo": data.repo, "commit": data.commit, "files": data.files},
        "experiment": _experiment_summary(ctx, res),
    })
    if ctx.artifacts is not None:
        base = f"reports/{spec.model}/{res.status.get('version')}"
        stored = ctx.artifacts.put_bytes(f"{base}/report.md", markdown.encode())
        ctx.artifacts.put_bytes(f"{base}/report.json", json.dumps(report, indent=2, default=str).encode())
        evaluation["reportUri"] = stored.uri
    failed = [g for g in gate_rows if not g.get("passed")]
    if passed:
        message = "evaluation passed: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        result.status["phase"] = "Ready"
        set_condition(result.status, res.status, "Ready", True, "GatesPassed", message, res.generation)
        result.event("GatesPassed", message)
    else:
        message = "rejected by the evaluation gate: " + "; ".join(
            f"{g['metric']} {g.get('value')} vs {g.get('rule') or g.get('threshold')}" for g in failed)
        result.status["phase"] = "Rejected"
        set_condition(result.status, res.status, "Ready", False, "GateFailed", message, res.generation)
        result.event("GateFailed", message, warning=True)
    set_condition(result.status, res.status, "Evaluated", True, "Evaluated", message, res.generation)
    result.status.update(evaluation=evaluation, message=message)
    if ctx.database is not None:
        ctx.database.record_evaluation(model=spec.model, version=res.status.get("version"), metrics=metrics,
                                       gates=gate_rows, passed=passed, report_uri=evaluation.get("reportUri"),
                                       namespace=res.namespace)
    result.requeue = True
    return result


def _experiment_summary(ctx: Context, res: Resource) -> dict[str, Any]:
    name = (res.status.get("lineage") or {}).get("experiment")
    exp = ctx.cluster.get("Experiment", res.namespace, name) if name else None
    return {"spec": exp.get("spec"), "status": exp.get("status")} if exp else {}


def _in_stage(ctx: Context, res: Resource, model: str, stage: str) -> dict[str, Any] | None:
    found = [mv for mv in siblings(ctx, res, model) if (mv.get("status") or {}).get("stage") == stage]
    return max(found, key=lambda mv: mv["status"].get("version") or 0, default=None)


def _version_state(mv: dict[str, Any]) -> VersionState:
    st = mv.get("status") or {}
    evaluation = st.get("evaluation") or {}
    gates = evaluation.get("gates") or []
    has_evaluation = (mv.get("spec") or {}).get("evaluation") is not None
    return VersionState(
        version=int(st.get("version") or 0),
        stage=st.get("stage") or "candidate",
        gates_passed=evaluation.get("passed") if has_evaluation else None,
        gates=len(gates),
        failures=tuple(g.get("rule") or g.get("metric", "") for g in gates if not g.get("passed")),
        resource=mv["metadata"]["name"],
    )


def _promote(res: Resource, spec: ModelVersionSpec, ctx: Context, result: Result) -> None:
    status = res.status
    current = status.get("stage") or "candidate"
    passed = (status.get("evaluation") or {}).get("passed")
    if status.get("phase") in ("Evaluating", "Registering", None):
        result.status["phase"] = "Rejected" if passed is False else "Ready"
    if spec.stage == current:
        return
    me = {"metadata": {"name": res.name}, "spec": res.spec, "status": status}
    others = [mv for mv in siblings(ctx, res, spec.model) if (mv.get("status") or {}).get("version")]
    try:
        changes = plan_promotion(spec.model, [_version_state(me), *map(_version_state, others)],
                                 int(status["version"]), spec.stage)
    except PromotionRefused as exc:
        message = exc.problems[0][1]
        if (condition(status, "Promoted") or {}).get("message") != message:
            result.event("PromotionRefused", message, warning=True)
        set_condition(result.status, status, "Promoted", False, "PromotionRefused", message, res.generation)
        if result.status.get("phase", status.get("phase")) != "Rejected":
            result.status["message"] = message
        return
    engine = (status.get("registry") or {}).get("engine") or "local"
    archived = []
    for change in changes:
        if change.resource != res.name:  # the previous production version: its own reconcile follows
            ctx.cluster.patch_spec(KIND, res.namespace, change.resource, {"stage": change.stage})
            archived.append(change.resource)
            continue
        ctx.engines.registry(engine).set_stage(_registry_name(res, spec.model), change.version, change.stage)
        if ctx.database is not None:
            ctx.database.set_model_stage(spec.model, change.version, change.stage, namespace=res.namespace)
    message = f"{spec.model} version {status.get('version')} moved from {current} to {spec.stage}"
    if archived:
        message += f"; archived {', '.join(archived)}"
    result.status.update(stage=spec.stage, promotedAt=now(), message=message)
    set_condition(result.status, status, "Promoted", True, "Promoted", message, res.generation)
    result.event("Promoted", message)


def _registry_name(res: Resource, model: str) -> str:
    """The name the registry engine holds this version under: as it said when registering
    (`registry.id` is `<name>/<version>`; versions registered before names carried the
    namespace keep theirs), else `<namespace>.<model>`."""
    registry_id = str((res.status.get("registry") or {}).get("id") or "")
    if "/" in registry_id:
        return registry_id.rsplit("/", 1)[0]
    return registered_name(res.namespace, model)


def cleanup(res: Resource, ctx: Context) -> None:
    version = res.status.get("version")
    if version:
        engine = (res.status.get("registry") or {}).get("engine") or "local"
        ctx.engines.registry(engine).delete(_registry_name(res, res.spec.get("model", "")), int(version))
    ctx.engines.jobs.forget(f"eval-{res.namespace}-{res.name}-")


__all__ = ["reconcile", "cleanup"]
