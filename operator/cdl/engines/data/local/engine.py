"""The local data engine: Pachyderm's model (repos, branches, immutable content-addressed commits,
provenance, datum-wise steps) on the local filesystem.

A run of DataPipeline `ns/name`:
1. Ingesting: the source is committed to repo `<ns>--<name>-raw`.
2. Processing: each step runs over the previous commit (the first over raw) and commits to
   `<ns>--<name>-<step>`; only new or changed datums run (see `steps`). Then the split (when
   `spec.split` is set) of the last step's output, so cleaning and validation happen before
   splitting and both sides are treated alike, commits to `<ns>--<name>-train` and `-test`.
   Without a split, `-train` holds the last step's data files (reports left out).
3. Ready: every output branch moves to its new commit at once; train and test are materialized as
   read-only checkouts (`DataRef.path`; the raw and step outputs when `resolve`d). A failed run
   moves nothing: the last good outputs stay current.

Runs execute in background threads owned by the engine; their state is persisted under the root
(`runs`), so `run_status` after a restart reports a finished run, or resumes an interrupted
one (its finished datums come from the cache, so that is cheap). `start_run` is idempotent for
the same key, generation and source fingerprint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cdl.api.datapipeline import DataPipelineSpec
from cdl.engines.base import (
    DataRef,
    DataRunRequest,
    DataRunStatus,
    EngineRef,
    JobState,
    ResourceKey,
    StepReport,
)
from cdl.engines.changes import ChangeFeed
from cdl.engines.data.ingest import Ingestor
from cdl.engines.data.local.repo import DEFAULT_BRANCH, Commit, RepoStore, now_iso
from cdl.engines.data.local.runs import RunRecord, RunStore
from cdl.engines.data.local.steps import StepRunner
from cdl.engines.data.objects import FileEntry, ObjectStore
from cdl.engines.data.split import data_files, label_counts, split_commit
from cdl.errors import DependencyNotReady, PermanentEngineError, TransientEngineError
from cdl.files import writable_tree
from cdl.runtime.pfs import REPORT_NAME

log = logging.getLogger("cdl.engines.data.local")

INPUT_NAME = "in"  # every step's input is /pfs/in, as the Pachyderm engine names it
INGEST_TRIES = 3
CHECKOUT_TTL = 24 * 3600.0  # old versions' checkouts are removed a day after their last use
SCRATCH_TTL = 3600.0  # leftovers of a crashed process in the scratch folders
EAGER_OUTPUTS = ("train", "test")  # materialized when a run ends; raw and step outputs on demand
MAX_ATTEMPTS = 3  # drivers started on one run before it is declared failed


class _Canceled(Exception):
    pass


class LocalDataEngine:
    """`cdl.engines.base.DataEngine` on the local filesystem (see the module docstring)."""

    name = "local"

    def __init__(self, root: Path, artifacts: Any | None = None, workers: int | None = None,
                 s3_endpoint: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.workers = workers or os.cpu_count() or 1
        self.objects = ObjectStore(self.root / "objects", artifacts)
        self.repos = RepoStore(self.root, self.objects)
        self.ingestor = Ingestor(self.root / "ingest", self.objects, s3_endpoint, self.workers)
        self.steps = StepRunner(self.root, self.objects, self.workers)
        self.runs = RunStore(self.root)
        self._lock = threading.RLock()
        self._threads: dict[str, threading.Thread] = {}  # run id -> driver
        self._cancels: dict[str, threading.Event] = {}  # run id -> cancel flag
        self._active: dict[str, str] = {}  # slug -> run id driven by this engine
        self._requests: dict[str, DataRunRequest] = {}  # slug -> last request (secrets to resume with)
        self._shutdown = False
        self._save_lock = threading.Lock()
        self.changes = ChangeFeed()  # state/phase changes of runs, for the operator (base.ReportsChanges)
        self.subscribe = self.changes.subscribe
        self._clean_scratch()

    # ------------------------------------------------------------------ names

    @staticmethod
    def repo_name(key: ResourceKey, output: str) -> str:
        return f"{key.slug}-{output}"

    def repo_names(self, key: ResourceKey, spec: DataPipelineSpec) -> dict[str, str]:
        names = {"raw": self.repo_name(key, "raw")}
        for step in spec.steps:
            names[step.name] = self.repo_name(key, step.name)
        names["train"] = self.repo_name(key, "train")
        if spec.split:
            names["test"] = self.repo_name(key, "test")
        return names

    # ------------------------------------------------------------------ the protocol

    def source_fingerprint(self, request: DataRunRequest) -> str:
        self._remember(request)
        return self.ingestor.fingerprint(request.spec.source, request.secrets, request.base_dir)

    def start_run(self, request: DataRunRequest) -> EngineRef:
        key = request.key
        fingerprint = self.source_fingerprint(request)
        base_id = f"g{request.generation}-{fingerprint[:12]}"
        with self._lock:
            existing = self.runs.load(key.slug, base_id)
            if existing is not None and not request.force:
                if not existing.job_state.finished:
                    self._drive(existing, request)
                return self._ref(base_id)
            if existing is not None:  # forced (schedule): the same run while it runs, else a new one
                active = self._active.get(key.slug)
                if active and active.startswith(base_id) and self._alive(active):
                    return self._ref(active)
                taken = {r.run_id for r in self.runs.list(key.slug)}
                run_id = next(f"{base_id}-r{n}" for n in range(2, 10_000) if f"{base_id}-r{n}" not in taken)
            else:
                run_id = base_id
            record = RunRecord(
                run_id=run_id, namespace=key.namespace, name=key.name, generation=request.generation,
                spec=request.spec.wire(), base_dir=str(request.base_dir) if request.base_dir else None,
                force=request.force, secret_names=sorted(request.secrets), source_hash=fingerprint,
                repos=self.repo_names(key, request.spec), message="queued",
            )
            self.runs.save(key.slug, record)
            self._drive(record, request)
        return self._ref(run_id)

    def run_status(self, key: ResourceKey, run_id: str, request: DataRunRequest | None = None) -> DataRunStatus:
        """Where a run stands; an interrupted run (its driver died) is resumed here."""
        if request is not None:
            self._remember(request)
        record = self.runs.load(key.slug, run_id)
        if record is None:
            return DataRunStatus(
                run_id=run_id, state=JobState.FAILED, phase="Failed",
                message=f"data run {run_id} of {key} is unknown to the local data engine (its state under "
                        f"{self.root} is gone); change the spec or the source to start a new run")
        if not record.job_state.finished and not self._alive(run_id):
            with self._lock:
                record = self.runs.load(key.slug, run_id) or record
                if not record.job_state.finished and not self._alive(run_id):
                    self._resume(record)
                    record = self.runs.load(key.slug, run_id) or record
        return record.to_status(self._paths(record) if record.state == JobState.SUCCEEDED.value else None)

    def outputs(self, key: ResourceKey) -> dict[str, DataRef]:
        current = self.runs.current(key.slug)
        return {name: self._ref_for(name, o) for name, o in current.get("outputs", {}).items()}

    def resolve(self, key: ResourceKey, output: str, commit: str = "") -> DataRef:
        current = self.runs.current(key.slug)
        outputs = current.get("outputs", {})
        if not outputs:
            raise DependencyNotReady(f"DataPipeline {key} has no data yet: its first run has not succeeded")
        if output not in outputs:
            raise PermanentEngineError(
                f"DataPipeline {key} has no output {output!r}; outputs: {', '.join(sorted(outputs))}",
                reason="UnknownOutput")
        if not commit or commit == outputs[output]["commit"]:
            return self._ref_for(output, outputs[output])
        repo = outputs[output]["repo"]
        found = self._find_commit(repo, commit)
        return self._ref_for(output, {"repo": repo, "branch": found.branch, "commit": found.id,
                                      "files": found.n_files, "bytes": found.n_bytes})

    def delete(self, key: ResourceKey) -> None:
        """Cancel the pipeline's run, remove its repos, checkouts and runs, then collect objects
        no other commit holds."""
        with self._lock:
            run_id = self._active.get(key.slug)
            if run_id:
                self._cancel(run_id)
        if run_id:
            thread = self._threads.get(run_id)
            if thread is not None:
                thread.join(timeout=60)
        with self._lock:
            for repo in self.repos.repos_of(key.slug):
                self.repos.delete_repo(repo)
            self.runs.forget(key.slug)
            self._requests.pop(key.slug, None)
            self._active.pop(key.slug, None)
            for logs in self.steps.logs.glob(f"{key.slug}_*"):
                shutil.rmtree(logs, ignore_errors=True)
            if not any(t.is_alive() for t in self._threads.values()):
                self.gc()

    # ------------------------------------------------------------------ more than the protocol

    def wait(self, key: ResourceKey, run_id: str, timeout: float = 600.0, poll: float = 0.05) -> DataRunStatus:
        """Block until the run finished (tests, the CLI); TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.run_status(key, run_id)
            if status.state.finished:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"data run {run_id} of {key} still {status.phase} after {timeout:.0f}s")
            thread = self._threads.get(run_id)
            if thread is not None and thread.is_alive():
                thread.join(timeout=poll)
            else:
                time.sleep(poll)

    def commit_info(self, repo: str, commit: str) -> Commit:
        return self._find_commit(repo, commit)

    def provenance(self, repo: str, commit: str) -> list[dict[str, Any]]:
        """The full provenance of a commit, nearest first: [{repo, commit, origin}] down to raw."""
        chain: list[dict[str, Any]] = []
        queue = list(self._find_commit(repo, commit).provenance)
        seen: set[tuple[str, str]] = set()
        while queue:
            ref = queue.pop(0)
            if (ref["repo"], ref["commit"]) in seen:
                continue
            seen.add((ref["repo"], ref["commit"]))
            found = self.repos.get_commit(ref["repo"], ref["commit"])
            chain.append({"repo": found.repo, "commit": found.id, "origin": found.origin})
            queue.extend(found.provenance)
        return chain

    def gc(self) -> int:
        """Remove objects no commit holds; returns how many."""
        keep = self.repos.referenced_objects()
        removed = 0
        for sha in self.objects.all() - keep:
            self.objects.remove(sha)
            removed += 1
        return removed

    def close(self, timeout: float = 30.0) -> None:
        """Cancel this engine's runs and stop their processes (operator shutdown, tests)."""
        with self._lock:
            self._shutdown = True  # interrupted runs stay Running on disk: the next engine resumes them
            for run_id in list(self._active.values()):
                self._cancel(run_id)
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=timeout)

    # ------------------------------------------------------------------ driving runs

    @staticmethod
    def _ref(run_id: str) -> EngineRef:
        return EngineRef(id=run_id, engine="local")

    def _remember(self, request: DataRunRequest) -> None:
        with self._lock:
            self._requests[request.key.slug] = request

    def _alive(self, run_id: str) -> bool:
        thread = self._threads.get(run_id)
        return thread is not None and thread.is_alive()

    def _cancel(self, run_id: str) -> None:
        event = self._cancels.get(run_id)
        if event is not None:
            event.set()
        self.steps.kill_jobs(f"_{run_id}_")

    def _resume(self, record: RunRecord) -> None:
        slug = f"{record.namespace}--{record.name}"
        remembered = self._requests.get(slug)
        key = ResourceKey(record.namespace, record.name)
        if remembered is not None and remembered.generation == record.generation:
            request = remembered
        else:
            request = DataRunRequest(
                key=key, spec=DataPipelineSpec.model_validate(record.spec), generation=record.generation,
                secrets={}, base_dir=Path(record.base_dir) if record.base_dir else None, force=record.force)
        if record.attempts >= MAX_ATTEMPTS and not _moved_on(record):
            self._finish(slug, record, JobState.FAILED, "Failed", self._failure(
                key, f"data run {record.run_id} was interrupted {record.attempts} times at the same point (its "
                     "driver died each time, e.g. out of memory); change the spec or the source to start a new run"))
            return
        missing = [name for name in record.secret_names if name not in request.secrets]
        if missing:
            record.message = (f"interrupted by a restart; waiting for secret(s) {', '.join(missing)} "
                              "to resume (the operator passes them with the next status check)")
            self.runs.save(slug, record)
            return
        self._drive(record, request)

    def _drive(self, record: RunRecord, request: DataRunRequest) -> None:
        """Start a driver thread for the record unless one (here or in another process) has it."""
        slug = request.key.slug
        if self._alive(record.run_id) or self._shutdown:
            return
        fd = self.runs.try_lock(slug, record.run_id)
        if fd is None:
            return  # another process drives it
        previous = self._active.get(slug)
        if previous and previous != record.run_id:
            self._cancel(previous)  # a newer generation or source supersedes it
        cancel = threading.Event()
        self._cancels[record.run_id] = cancel
        self._active[slug] = record.run_id
        if _moved_on(record):
            record.attempts = 0  # the run moved on since its last driver started: not a crash loop
        record.attempts += 1
        record.phase_at_start, record.progress_at_start = record.phase, record.progress
        self.runs.save(slug, record)
        thread = threading.Thread(target=self._execute, args=(record, request, cancel, fd),
                                  name=f"data-run-{slug}-{record.run_id}", daemon=True)
        self._threads[record.run_id] = thread
        thread.start()

    def _execute(self, record: RunRecord, request: DataRunRequest, cancel: threading.Event, fd: int) -> None:
        slug = request.key.slug
        try:
            self._run(record, request, cancel)
        except _Canceled:
            if self._shutdown:  # an orderly stop does not count against the run's attempts
                self._save_record(slug, record, attempts=max(record.attempts - 1, 0),
                                  message="interrupted: the engine stopped; resumes on the next check")
            else:
                self._finish(slug, record, JobState.CANCELED, "Failed", "run canceled: a newer run superseded it")
        except (PermanentEngineError, TransientEngineError) as exc:
            self._finish(slug, record, JobState.FAILED, "Failed", self._failure(request.key, str(exc)))
        except Exception as exc:  # a bug or an environment problem; reported, never raised into a thread
            log.error("data run %s of %s failed:\n%s", record.run_id, request.key, traceback.format_exc())
            self._finish(slug, record, JobState.FAILED, "Failed",
                         self._failure(request.key, f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            self.runs.unlock(fd)
            with self._lock:
                if self._active.get(slug) == record.run_id:
                    self._active.pop(slug, None)
                self._cancels.pop(record.run_id, None)

    def _failure(self, key: ResourceKey, message: str) -> str:
        current = self.runs.current(key.slug).get("outputs", {})
        if current:
            kept = ", ".join(f"{k}@{v['commit'][:12]}" for k, v in sorted(current.items()) if k in ("train", "test"))
            return f"{message}; the previous outputs stay current ({kept})"
        return f"{message}; no outputs yet"

    def _finish(self, slug: str, record: RunRecord, state: JobState, phase: str, message: str) -> None:
        self._save_record(slug, record, state=state.value, phase=phase, message=message, finished=now_iso())

    def _save_record(self, slug: str, record: RunRecord, **changes: Any) -> None:
        with self._save_lock:
            before = (record.state, record.phase)
            for k, v in changes.items():
                setattr(record, k, v)
            self.runs.save(slug, record)
        if (record.state, record.phase) != before:  # progress alone is not worth a reconcile
            self.changes.emit(ResourceKey(record.namespace, record.name))

    def _save(self, slug: str, record: RunRecord, cancel: threading.Event, **changes: Any) -> None:
        if cancel.is_set():
            raise _Canceled()
        self._save_record(slug, record, **changes)

    def _run(self, record: RunRecord, request: DataRunRequest, cancel: threading.Event) -> None:
        key, spec = request.key, request.spec
        slug = key.slug
        repos = self.repo_names(key, spec)
        for repo in repos.values():
            self.repos.ensure_repo(repo, owner=slug)
        n_stages = len(spec.steps) + (2 if spec.split else 1)
        self._save(slug, record, cancel, state=JobState.RUNNING.value, phase="Ingesting", lineage=[],
                   message=f"ingesting {spec.source.uri}", progress=0.0)

        # 1. ingest
        ingested = None
        for attempt in range(1, INGEST_TRIES + 1):
            try:
                ingested = self.ingestor.ingest(spec.source, request.secrets, request.base_dir)
                break
            except TransientEngineError:
                if attempt == INGEST_TRIES or cancel.wait(2.0 * attempt):
                    raise
        assert ingested is not None
        fingerprint = ingested.fingerprint
        raw = self.repos.commit(repos["raw"], ingested.files, origin={
            "kind": "ingest", "source": spec.source.uri, "format": spec.source.format, "fingerprint": fingerprint},
            check=False)
        commits: dict[str, Commit] = {"raw": raw}
        notes = [f"ingested {raw.n_files} file(s) ({ingested.new_objects} new object(s))"]
        self._save(slug, record, cancel, source_hash=fingerprint, phase="Processing",
                   progress=1 / (n_stages + 1), message=notes[0])

        # 2. steps, each over the previous output
        previous, lineage = raw, []
        for index, step in enumerate(spec.steps):
            job = job_id(slug, record.run_id, step.name)

            last_save = [0.0]

            def progress(done: int, total: int, index: int = index, step_name: str = step.name,
                         last_save: list[float] = last_save) -> None:
                changes = {"progress": (1 + index + done / max(total, 1)) / (n_stages + 1),
                           "message": f"step {step_name}: {done}/{total} datum(s)"}
                if time.monotonic() - last_save[0] > 0.5 or done == total:
                    last_save[0] = time.monotonic()
                    self._save_record(slug, record, **changes)

            inputs = {rel: e for rel, e in previous.files.items() if rel != REPORT_NAME}
            try:
                result = self.steps.run(step, INPUT_NAME, inputs, job, request.base_dir, request.secrets,
                                        cancel, progress)
            except KeyError as exc:  # a step secret not provided
                raise PermanentEngineError(str(exc.args[0]), reason="SecretMissing")
            if cancel.is_set():
                raise _Canceled()
            report = StepReport(step.name, previous.id, None, job, result.processed, result.skipped, result.failed,
                                result.failed_log, _summary(result.report))
            if result.error:
                lineage.append(report)
                self._save(slug, record, cancel, lineage=[asdict(s) for s in lineage])
                raise PermanentEngineError(result.error, reason="StepFailed")
            files = dict(result.files)
            if result.report:
                files[REPORT_NAME] = self.objects.put_bytes(
                    json.dumps(result.report, indent=1, sort_keys=True).encode())
            out = self.repos.commit(repos[step.name], files,
                                    provenance=[{"repo": previous.repo, "commit": previous.id}],
                                    origin={"kind": "step", "step": step.name, "job": job,
                                            "command": step.command, "glob": step.glob})
            report.output_commit = out.id
            lineage.append(report)
            commits[step.name] = out
            notes.append(f"{step.name}: {result.processed} processed, {result.skipped} skipped"
                         + (f" ({_discards(result.report)})" if _discards(result.report) else ""))
            self._save(slug, record, cancel, lineage=[asdict(s) for s in lineage],
                       progress=(2 + index) / (n_stages + 1), message="; ".join(notes))
            previous = out

        # 3. split (or pass the last output through as train)
        provenance = [{"repo": previous.repo, "commit": previous.id}]
        if spec.split:
            split = split_commit(previous.files, self.objects, spec.source.format, spec.source.labels_from,
                                 spec.split)
            origin = {"kind": "split", "test": spec.split.test, "seed": spec.split.seed,
                      "stratify": spec.split.stratify, "format": spec.source.format}
            commits["train"] = self.repos.commit(repos["train"], split.train, provenance, origin | {"side": "train"},
                                                 check=False)
            commits["test"] = self.repos.commit(repos["test"], split.test, provenance, origin | {"side": "test"},
                                                check=False)
            lineage.append(StepReport("split", previous.id, commits["train"].id, job_id(slug, record.run_id, "split"),
                                      datums_processed=split.items["train"] + split.items["test"],
                                      report={"train": split.items["train"], "test": split.items["test"],
                                              "labels": split.labels}))
            notes.append(f"split: {split.items['train']} train / {split.items['test']} test")
        else:
            files = data_files(previous.files)
            commits["train"] = self.repos.commit(repos["train"], files, provenance, {"kind": "output"}, check=False)
            labels = label_counts(files) if spec.source.labels_from == "directory" else {}
            notes.append(f"train: {len(files)} file(s)" + (f", {len(labels)} label(s)" if labels else ""))

        # 4. publish: every branch at once, then the checkouts readers use
        with self._lock:
            if cancel.is_set():
                raise _Canceled()
            for commit in commits.values():
                self.repos.set_branch(commit.repo, DEFAULT_BRANCH, commit.id)
            outputs = {name: _wire(c) for name, c in commits.items()}
            self.runs.set_current(slug, {"run": record.run_id, "generation": record.generation,
                                         "sourceHash": fingerprint, "repos": repos, "outputs": outputs,
                                         "updated": now_iso()})
        for name, commit in commits.items():
            if name in EAGER_OUTPUTS:  # what Experiments read; the others on `resolve`
                self.repos.checkout(commit.repo, commit.id)
            self.repos.prune_checkouts(commit.repo, {commit.id}, CHECKOUT_TTL)
        self._save_record(slug, record, lineage=[asdict(s) for s in lineage], outputs=outputs, progress=1.0)
        self._finish(slug, record, JobState.SUCCEEDED, "Ready", "; ".join(notes))

    # ------------------------------------------------------------------ outputs

    def _find_commit(self, repo: str, commit: str) -> Commit:
        try:
            return self.repos.get_commit(repo, commit)
        except KeyError:
            pass
        matches = [c for c in self.repos.list_commits(repo) if c.id.startswith(commit)] if len(commit) >= 6 else []
        if len(matches) == 1:
            return matches[0]
        raise PermanentEngineError(f"commit {commit!r} not found in repo {repo}", reason="CommitNotFound")

    def _ref_for(self, name: str, output: dict[str, Any]) -> DataRef:
        path = self.repos.checkout(output["repo"], output["commit"])
        return DataRef(repo=output["repo"], commit=output["commit"], branch=output.get("branch", DEFAULT_BRANCH),
                       files=output.get("files", 0), bytes=output.get("bytes", 0), path=str(path))

    def _paths(self, record: RunRecord) -> dict[str, str]:
        """Checkout paths of a finished run's outputs: train and test always, others once
        materialized (`resolve` materializes any output)."""
        paths = {}
        for name, output in record.outputs.items():
            with contextlib.suppress(KeyError, FileNotFoundError):
                if name in EAGER_OUTPUTS:
                    paths[name] = str(self.repos.checkout(output["repo"], output["commit"]))
                elif self.repos.is_checked_out(output["repo"], output["commit"]):
                    paths[name] = str(self.repos.checkouts / output["repo"] / output["commit"])
        return paths

    def _clean_scratch(self) -> None:
        """Remove what a crashed process left in the scratch folders (datum sandboxes, partial objects)."""
        cutoff = time.time() - SCRATCH_TTL
        for folder in (self.steps.work, self.objects.tmp):
            for entry in folder.iterdir():
                with contextlib.suppress(OSError):
                    if entry.lstat().st_mtime < cutoff:
                        if entry.is_dir():
                            writable_tree(entry)
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            entry.unlink()

    def remove_checkouts(self) -> None:
        """Drop every materialized checkout (they are rebuilt on demand)."""
        writable_tree(self.repos.checkouts)
        shutil.rmtree(self.repos.checkouts, ignore_errors=True)
        self.repos.checkouts.mkdir()


def job_id(slug: str, run_id: str, step: str) -> str:
    """`<ns>--<name>_<run>_<step>`: '_' never occurs in resource names, so a job names its pipeline."""
    return f"{slug}_{run_id}_{step}"


def _wire(commit: Commit) -> dict[str, Any]:
    return {"repo": commit.repo, "branch": commit.branch, "commit": commit.id, "files": commit.n_files,
            "bytes": commit.n_bytes}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The counts of a step report (its per-file list stays in the report file)."""
    return {k: v for k, v in report.items() if k != "files"}


def _discards(report: dict[str, Any]) -> str:
    discarded = report.get("discarded") or {}
    repaired = report.get("repaired") or {}
    parts = [f"{n} discarded: {reason}" for reason, n in sorted(discarded.items()) if n]
    parts += [f"{n} repaired: {reason}" for reason, n in sorted(repaired.items()) if n]
    return ", ".join(parts)


__all__ = ["LocalDataEngine", "FileEntry"]


def _moved_on(record: RunRecord) -> bool:
    """Whether the run got further (another phase, more progress) since its last driver started."""
    return (record.phase, record.progress) != (record.phase_at_start, record.progress_at_start)
