"""Deployment: resolve the ModelVersions to serve (primary, canary, shadow), apply them to the
serving engine, report the endpoint, and watch the scoring data for drift (Model Maintenance)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cdl.api.deployment import DeploymentSpec
from cdl.engines.base import ServedModel, ServingRequest
from cdl.errors import DependencyNotReady
from cdl.reconcile.base import Context, Resource, Result, now, parse, set_condition
from cdl.reconcile.experiment import RETRAIN_ANNOTATION

KIND = "Deployment"


def engine_name(spec: DeploymentSpec, ctx: Context) -> str:
    return spec.engine or ctx.config.default_engine(KIND)


def _servable(ctx: Context, res: Resource, name: str, role: str) -> dict[str, Any]:
    mv = ctx.cluster.get("ModelVersion", res.namespace, name)
    if mv is None:
        raise DependencyNotReady(f"waiting for ModelVersion {name} ({role}) to exist")
    st = mv.get("status") or {}
    if st.get("phase") == "Rejected":
        raise DependencyNotReady(
            f"not deploying ModelVersion {name} ({role}): it was rejected by its evaluation gate", reason="ModelRejected"
        )
    if st.get("phase") != "Ready" or not st.get("artifact"):
        raise DependencyNotReady(f"waiting for ModelVersion {name} ({role}) to be Ready (phase {st.get('phase') or 'Pending'})")
    return mv


def _by_stage(ctx: Context, res: Resource, model: str, stage: str) -> dict[str, Any]:
    found = [
        mv for mv in ctx.cluster.list("ModelVersion", res.namespace)
        if (mv.get("spec") or {}).get("model") == model and (mv.get("status") or {}).get("stage") == stage
        and (mv.get("status") or {}).get("phase") == "Ready"
    ]
    if not found:
        raise DependencyNotReady(f"waiting for a Ready ModelVersion of {model} in stage {stage}")
    return max(found, key=lambda mv: mv["status"].get("version") or 0)


def served_models(res: Resource, spec: DeploymentSpec, ctx: Context) -> list[tuple[ServedModel, dict[str, Any]]]:
    primary = (
        _servable(ctx, res, spec.model_version_ref.name, "primary") if spec.model_version_ref
        else _by_stage(ctx, res, spec.model.name, spec.model.stage)  # type: ignore[union-attr]
    )
    canary_pct = spec.canary.traffic_percent if spec.canary else 0
    chosen = [(primary, "primary", 100 - canary_pct)]
    if spec.canary:
        chosen.append((_servable(ctx, res, spec.canary.model_version_ref.name, "canary"), "canary", canary_pct))
    if spec.shadow:
        chosen.append((_servable(ctx, res, spec.shadow.model_version_ref.name, "shadow"), "shadow", 0))
    out = []
    for mv, role, pct in chosen:
        art = mv["status"]["artifact"]
        out.append((ServedModel(mv["metadata"]["name"], art["uri"], art["sha256"], spec.predictor, role, pct), mv))
    return out


def reconcile(res: Resource, ctx: Context) -> Result:
    spec: DeploymentSpec = parse(res)
    engine = ctx.engines.serving(engine_name(spec, ctx))
    status, result = res.status, Result(requeue=True)
    models = served_models(res, spec, ctx)
    logging_on = spec.request_logging.enabled if spec.request_logging else True
    request = ServingRequest(
        key=res.key, generation=res.generation, models=[m for m, _ in models], replicas=spec.replicas,
        image=spec.image, resources=spec.resources.wire() if spec.resources else {},
        request_logging=logging_on, sample_rate=spec.request_logging.sample_rate if spec.request_logging else 1.0,
    )
    fingerprint = hashlib.sha256(json.dumps(
        [res.generation, [m.__dict__ for m, _ in models]], sort_keys=True).encode()).hexdigest()[:16]
    ref = status.get("engineRef") or {}
    if ref.get("fingerprint") != fingerprint or engine.status(res.key).state == "Pending":
        # New models or spec, or an engine that lost its state (it reports Pending): apply.
        applied = engine.apply(request)
        result.status["engineRef"] = {**applied.wire(), "fingerprint": fingerprint}
        names = ", ".join(f"{m.model_version} ({m.role} {m.percent}%)" for m, _ in models)
        result.event("Deploying", f"serving {names}")
    served = engine.status(res.key)
    primary = models[0][0]
    result.status.update(
        phase=served.state,
        url=served.url or None,
        replicas={"desired": served.desired, "ready": served.ready},
        traffic=[{"modelVersion": m.model_version, "percent": m.percent, "role": m.role} for m, _ in models],
        modelVersion=primary.model_version,
        message=served.message or f"{served.state.lower()}: {primary.model_version}",
    )
    ok = served.state == "Available"
    set_condition(result.status, status, "Ready", ok, served.state, result.status["message"], res.generation)
    if status.get("phase") != served.state:
        result.event(served.state, result.status["message"], warning=served.state in ("Degraded", "Failed"))
    if ok and ctx.database is not None and logging_on:
        _monitor(res, spec, ctx, models[0][1], result)
    return result


def _monitor(res: Resource, spec: DeploymentSpec, ctx: Context, primary: dict[str, Any], result: Result) -> None:
    from cdl.quality.monitoring import summarize

    drift = spec.monitoring.drift if spec.monitoring else None
    window = drift.window if drift else 1000
    rows = ctx.database.scoring_window(res.namespace, res.name, window)
    expected = ((primary.get("status") or {}).get("lineage") or {}).get("trainLabels") or {}
    summary = summarize(rows, expected)
    previous = res.status.get("monitoring") or {}
    monitoring = {
        "requests": summary.requests,
        "errors": summary.errors,
        "p50Ms": summary.p50_ms,
        "p99Ms": summary.p99_ms,
        "drift": summary.drift,
        "lastRetrain": previous.get("lastRetrain"),
    }
    detected = bool(drift and summary.drift is not None and summary.requests >= min(window, 50)
                    and summary.drift > drift.threshold)
    monitoring["driftDetected"] = detected
    if detected and not previous.get("driftDetected"):
        message = f"prediction drift PSI {summary.drift:.3f} > {drift.threshold} over {summary.requests} request(s)"
        result.event("DriftDetected", message, warning=True)
        retrain = spec.monitoring.retrain if spec.monitoring else None
        if retrain is not None:
            exp = ctx.cluster.get("Experiment", res.namespace, retrain.experiment_ref.name)
            if exp is not None:
                run = int(((exp.get("status") or {}).get("run")) or 1) + 1
                ctx.cluster.annotate("Experiment", res.namespace, retrain.experiment_ref.name,
                                     {RETRAIN_ANNOTATION: str(run)})
                monitoring["lastRetrain"] = now()
                result.event("RetrainStarted", f"started run {run} of Experiment {retrain.experiment_ref.name}")
    set_condition(result.status, res.status, "Drift", detected, "DriftDetected" if detected else "NoDrift",
                  f"PSI {summary.drift}" if summary.drift is not None else "not enough scoring data", res.generation)
    result.status["monitoring"] = {k: v for k, v in monitoring.items() if v is not None}


def cleanup(res: Resource, ctx: Context) -> None:
    spec: DeploymentSpec = parse(res)
    ctx.engines.serving(engine_name(spec, ctx)).delete(res.key)
