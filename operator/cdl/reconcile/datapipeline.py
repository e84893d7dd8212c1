"""DataPipeline: start a data run when the spec or the source changes (or on schedule), follow it,
publish its outputs for Experiments, and keep the labeling project in sync."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from croniter import croniter

from cdl.api.datapipeline import DataPipelineSpec
from cdl.engines.base import DataRunRequest, DataRunStatus, JobState, LabelingRequest
from cdl.errors import DependencyNotReady, InvalidSpec, TransientError
from cdl.reconcile.base import Context, Resource, Result, now, parse, secret, set_condition
from cdl.reconcile.labeling import label_items

log = logging.getLogger("cdl.reconcile.datapipeline")
KIND = "DataPipeline"
LABELING_SYNC_SECONDS = 15.0


def engine_name(spec: DataPipelineSpec, ctx: Context) -> str:
    return spec.engine or ctx.config.default_engine(KIND)


def run_request(res: Resource, spec: DataPipelineSpec, ctx: Context, force: bool = False) -> DataRunRequest:
    secrets: dict[str, str] = {}
    refs = [spec.source.credentials_secret_ref] + [s for step in spec.steps for s in step.secrets]
    for ref in refs:
        if ref is not None:
            secrets[f"{ref.name}/{ref.key}"] = ctx.cluster.read_secret(res.namespace, ref.name, ref.key)
    return DataRunRequest(res.key, spec, res.generation, secrets, base_dir=ctx.config.base_dir, force=force)


def _schedule_due(spec: DataPipelineSpec, last_run: str | None) -> bool:
    if not spec.trigger or not spec.trigger.schedule or not last_run:
        return False
    start = datetime.strptime(last_run, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return croniter(spec.trigger.schedule, start).get_next(datetime) <= datetime.now(UTC)


def reconcile(res: Resource, ctx: Context) -> Result:
    spec: DataPipelineSpec = parse(res)
    engine = ctx.engines.data(engine_name(spec, ctx))
    result = Result()
    status = res.status
    ref = status.get("engineRef") or {}
    request = run_request(res, spec, ctx)

    start_reason = None
    if ref.get("generation") != str(res.generation):
        start_reason = "spec changed" if ref else "new pipeline"
    else:
        previous = engine.run_status(res.key, ref["id"], request=request)
        if previous.state.finished:
            on_new_data = spec.trigger.on_new_data if spec.trigger else True
            ingested = previous.source_hash or status.get("sourceHash")
            if on_new_data and engine.source_fingerprint(request) != ingested:
                start_reason = "source changed"
            elif _schedule_due(spec, status.get("lastRunTime")):
                start_reason = "schedule"
                request.force = True
    if start_reason:
        engine_ref = engine.start_run(request)
        result.status.update(
            phase="Ingesting",
            engineRef={**engine_ref.wire(), "generation": str(res.generation)},
            lastRunTime=now(),
            message=f"run {engine_ref.id} started ({start_reason})",
        )
        set_condition(result.status, status, "Ready", False, "Running", f"data run started ({start_reason})",
                      res.generation)
        result.event("RunStarted", f"data run {engine_ref.id} started ({start_reason})")
        result.requeue = True
        return result

    run = engine.run_status(res.key, ref["id"], request=request)
    _publish(run, res, result)
    if run.state == JobState.FAILED:
        last_good = engine.outputs(res.key)
        result.status["outputs"] = {k: v.wire() for k, v in last_good.items()}
        result.status.update(phase="Failed", message=run.message)
        set_condition(result.status, status, "Ready", False, "RunFailed", run.message, res.generation)
        if status.get("phase") != "Failed":
            kept = ", ".join(f"{k}@{v.commit[:12]}" for k, v in last_good.items()) or "none"
            result.event("RunFailed", f"{run.message} (current outputs kept: {kept})", warning=True)
        return result
    if not run.state.finished:
        result.status.update(phase=run.phase or "Processing", message=run.message or "processing")
        result.requeue = True
        return result

    # Succeeded: the outputs are published; labeling follows them.
    files = run.outputs.get("train").files if "train" in run.outputs else 0
    set_condition(result.status, status, "DataAvailable", True, "OutputsPublished",
                  f"{len(run.outputs)} output(s) published", res.generation)
    phase, message = "Ready", f"outputs ready: {files} training file(s)"
    if spec.labeling and spec.labeling.label_studio:
        phase, message = _sync_labels(res, spec, ctx, run, result)
    if status.get("phase") not in ("Ready", "Labeling"):
        result.event("RunSucceeded", message)
    result.status.update(phase=phase, message=message)
    set_condition(result.status, status, "Ready", True, "OutputsReady", message, res.generation)
    # Labelers keep labeling: follow them closely. The source and the schedule are checked when
    # the resource is next looked at (the controller's idle interval).
    result.requeue = phase == "Labeling"
    result.requeue_after = LABELING_SYNC_SECONDS  # each sync reads the whole project once
    return result


def _publish(run: DataRunStatus, res: Resource, result: Result) -> None:
    result.status["repos"] = run.repos
    if run.outputs:
        result.status["outputs"] = {k: v.wire() for k, v in run.outputs.items()}
    if run.source_hash:
        result.status["sourceHash"] = run.source_hash
    result.status["lineage"] = [
        {
            "step": s.step,
            "inputCommit": s.input_commit,
            "outputCommit": s.output_commit,
            "job": s.job,
            "datumsProcessed": s.datums_processed,
            "datumsSkipped": s.datums_skipped,
            "datumsFailed": s.datums_failed,
        }
        for s in run.lineage
    ]


def _sync_labels(res: Resource, spec: DataPipelineSpec, ctx: Context, run: DataRunStatus,
                 result: Result) -> tuple[str, str]:
    ls = spec.labeling.label_studio
    assert ls is not None
    if not ctx.config.label_studio_allowed(ls.url):  # checked before any Secret is read
        raise InvalidSpec(res.title, [("spec.labeling.labelStudio.url", (
            f"{ls.url} is not a Label Studio server this operator allows "
            f"({', '.join(ctx.config.label_studio_urls)}; operator setting label_studio_urls)"))])
    db = spec.labeling.database
    database_url = secret(ctx, res, db.url_secret_ref.wire() if db and db.url_secret_ref else None)
    database_url = database_url or ctx.config.database_url or ""
    try:
        token = ctx.cluster.read_secret(res.namespace, ls.token_secret_ref.name, ls.token_secret_ref.key)
        train = run.outputs.get("train")
        items, labels = [], []
        for name, output in run.outputs.items():
            if name in ("train", "test") and output.path:
                found, classes = label_items(Path(output.path), name, output.repo, output.commit)
                items.extend(found)
                labels.extend(c for c in classes if c not in labels)
        request = LabelingRequest(
            key=res.key, labeling=spec.labeling, repo=train.repo if train else "", commit=train.commit if train else "",
            items=items, token=token, database_url=database_url, labels=sorted(labels),
        )
        done = ctx.engines.labeling().sync(request)
    except (TransientError, DependencyNotReady, OSError) as exc:
        message = f"labeling unavailable: {exc}"
        set_condition(result.status, res.status, "Labeled", False, "LabelingUnavailable", message, res.generation)
        return "Ready", f"outputs ready; {message}"
    result.status["labeling"] = {
        "project": done.project,
        "tasks": done.tasks,
        "annotated": done.annotated,
        "exportedRows": done.exported_rows,
    }
    complete = done.tasks > 0 and done.annotated >= done.tasks
    set_condition(result.status, res.status, "Labeled", complete, "AllAnnotated" if complete else "Annotating",
                  f"{done.annotated}/{done.tasks} annotated, {done.exported_rows} row(s) exported", res.generation)
    if complete:
        return "Ready", f"outputs ready; all {done.tasks} item(s) labeled"
    return "Labeling", f"outputs ready; labeling {done.annotated}/{done.tasks} in project {done.project}"


def cleanup(res: Resource, ctx: Context) -> None:
    spec: DataPipelineSpec = parse(res)
    ctx.engines.data(engine_name(spec, ctx)).delete(res.key)


