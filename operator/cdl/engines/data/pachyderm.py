"""The Pachyderm data engine: a DataPipeline as Pachyderm repos, commits and pipelines.

Layout, per DataPipeline `ns/name` (in Pachyderm project `settings.project`, else one project per
namespace):

- `<name>-raw`: the source, ingested as one commit per run. The source is read exactly as the
  local data engine reads it (`cdl.engines.data.ingest`: directories, archives with their
  wrapper folder stripped, s3 prefixes, URLs, gunzipped IDX), then put file by file; pachd
  deduplicates content, so unchanged files cost nothing and their datums are skipped downstream;
- `<name>-<step>`: one Pachyderm pipeline per step, chained (step 1 reads `-raw`, step k reads
  step k-1's output repo), with the step's image, command, glob, parallelism, resources (GPU as
  a limit), datum tries, env and secrets;
- `<name>-train` / `<name>-test`: the split of the last output by the rules of `cdl.engines.data.split` (the
  local engine's too, so both platforms split alike), written by the engine as commits: files are
  copied server-side, CSV rows and IDX records are split by the operator and written back.

A run is the raw commit: its id is the commit set every downstream output commit shares, so the
engine waits on that commit set and reads each step's job (`<pipeline>@<run id>`) for lineage.
Everything needed to resume a run (the spec, generation, source hash) is kept in the raw
commit's description, so a restarted operator picks an unfinished run up from Pachyderm alone.

Errors: an unreachable pachd is a `TransientEngineError`; a request pachd refuses is a
`PermanentEngineError` carrying pachd's own message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from pachyderm_sdk import Client
from pachyderm_sdk.api import pfs, pps

from cdl.api.datapipeline import DataPipelineSpec, Step
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
from cdl.engines.settings import GpuSettings, PachydermSettings
from cdl.errors import PermanentEngineError, TransientEngineError

log = logging.getLogger("cdl.engines.data.pachyderm")

SCHEME = "pfs://"
BRANCH = "master"
CHUNK = 1 << 20
MARK = "cdl.dev"  # key of cdl's JSON in commit and pipeline descriptions
MAX_PIPELINE_NAME = 51  # pachd: pipeline names
MAX_RC_NAME = 63  # pachd: "<project>-<pipeline>-v<N>" must stay a DNS label
TRANSIENT_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}
RUNNING_JOBS = {
    pps.JobState.JOB_CREATED,
    pps.JobState.JOB_STARTING,
    pps.JobState.JOB_RUNNING,
    pps.JobState.JOB_EGRESSING,
    pps.JobState.JOB_FINISHING,
    pps.JobState.JOB_STATE_UNKNOWN,
}
FAILED_JOBS = {pps.JobState.JOB_FAILURE, pps.JobState.JOB_KILLED, pps.JobState.JOB_UNRUNNABLE}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")


# --------------------------------------------------------------------------- names


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _clean(text: str) -> str:
    return _NAME_BAD.sub("_", text)


def _fit(name: str, limit: int) -> str:
    """`name` if it fits, else a prefix and a stable hash (names stay unique and readable)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-_')}-{digest}"


@dataclass(frozen=True)
class Names:
    """The Pachyderm project, repos and pipelines of one DataPipeline."""

    project: str
    base: str

    def repo(self, part: str) -> str:
        limit = min(MAX_PIPELINE_NAME, MAX_RC_NAME - len(self.project) - len("--v999"))
        return _fit(f"{self.base}-{_clean(part)}", limit)

    @property
    def raw(self) -> str:
        return self.repo("raw")

    def pipeline(self, step: str) -> str:
        return self.repo(step)


# --------------------------------------------------------------------------- descriptions


def _describe(**body: Any) -> str:
    return json.dumps({MARK: body}, sort_keys=True, separators=(",", ":"))


def _read_description(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return body.get(MARK, {}) if isinstance(body, dict) else {}


# --------------------------------------------------------------------------- engine


@dataclass
class _Driver:
    """The thread that drives one run: ingest, wait on the commit set, split."""

    thread: threading.Thread
    key: str
    error: Exception | None = None
    phase: str = "Ingesting"


@dataclass
class _RunInfo:
    spec: DataPipelineSpec
    generation: int
    source_hash: str
    source_uri: str
    names: Names
    key: ResourceKey
    base_dir: Path | None = None
    steps: list[str] = field(default_factory=list)


class PachydermDataEngine:
    """`DataEngine` on Pachyderm 2.x through pachyderm-sdk."""

    name = "pachyderm"

    def __init__(self, settings: PachydermSettings, client: Client | None = None,
                 work_dir: Path | None = None, gpu: GpuSettings | None = None) -> None:
        self.settings = settings
        self.gpu = gpu or GpuSettings.from_env({})
        self._client = client
        self._work_dir = work_dir
        self._drivers: dict[str, _Driver] = {}
        self._secrets: dict[str, dict[str, str]] = {}
        self._ingestor: Any = None
        self._finished: dict[str, DataRunStatus] = {}  # succeeded runs never change: answer from memory
        self._lock = threading.Lock()
        # Change reports (base.ReportsChanges): a run's driver waits on pachd (wait_commit_set)
        # anyway, so it reports each phase it reaches and its end; nothing polls per pipeline.
        self.changes = ChangeFeed()
        self.subscribe = self.changes.subscribe

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> Client:
        if self._client is None:
            root_certs = self.settings.root_certs.read_bytes() if self.settings.root_certs else None
            token = self.settings.token.get_secret_value() if self.settings.token else None
            self._client = Client(
                host=self.settings.host, port=self.settings.port, auth_token=token or "",
                root_certs=root_certs, tls=self.settings.tls,
            )
        return self._client

    @contextlib.contextmanager
    def _rpc(self, what: str) -> Iterator[None]:
        """Map pachd's answers onto cdl's error kinds, with pachd's message."""
        try:
            yield
        except (TransientEngineError, PermanentEngineError):
            raise
        except ConnectionError as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "auth" in text.lower() and "activated" in text.lower():
                raise PermanentEngineError(f"Pachyderm refused {what}: {text}", reason="EngineRejected") from None
            raise TransientEngineError(
                f"Pachyderm at {self.settings.host}:{self.settings.port} is unreachable ({what}): {text}"
            ) from None
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = (exc.details() if hasattr(exc, "details") else str(exc)) or str(code)
            if code in TRANSIENT_CODES:
                raise TransientEngineError(
                    f"Pachyderm at {self.settings.host}:{self.settings.port} is unavailable ({what}): {details}"
                ) from None
            raise PermanentEngineError(f"Pachyderm refused {what}: {details}", reason="EngineRejected") from None

    def names(self, key: ResourceKey) -> Names:
        if self.settings.project:
            return Names(self.settings.project, _clean(f"{key.namespace}--{key.name}"))
        return Names(_fit(_clean(key.namespace), 40), _clean(key.name))

    def _repo(self, names: Names, repo: str) -> pfs.Repo:
        return pfs.Repo(name=repo, type="user", project=pfs.Project(name=names.project))

    def _commit(self, names: Names, repo: str, commit_id: str = "", branch: str = BRANCH) -> pfs.Commit:
        r = self._repo(names, repo)
        return pfs.Commit(repo=r, id=commit_id, branch=pfs.Branch(repo=r, name=branch))

    def _uri(self, names: Names, repo: str, commit_id: str, branch: str = BRANCH) -> str:
        return f"{SCHEME}{names.project}/{repo}@{branch}={commit_id}"

    def _not_found(self, exc: grpc.RpcError) -> bool:
        return hasattr(exc, "code") and exc.code() == grpc.StatusCode.NOT_FOUND

    @property
    def ingestor(self) -> Any:
        """The local data engine's source reader (same files, paths and fingerprints as there),
        over a content-addressed scratch store under the work directory."""
        if self._ingestor is None:
            from cdl.engines.data.ingest import Ingestor
            from cdl.engines.data.objects import ObjectStore

            root = self._work_dir or Path(tempfile.gettempdir()) / "cdl-pachyderm"
            self._ingestor = Ingestor(root / "ingest", ObjectStore(root / "objects"), self.settings.s3_endpoint)
        return self._ingestor

    # ------------------------------------------------------------------ protocol

    def source_fingerprint(self, request: DataRunRequest) -> str:
        return self.ingestor.fingerprint(request.spec.source, request.secrets, request.base_dir)

    def start_run(self, request: DataRunRequest) -> EngineRef:
        key, spec = request.key, request.spec
        names = self.names(key)
        source_uri = spec.source.uri
        source_hash = self.source_fingerprint(request)
        with self._rpc(f"setting up the repos of DataPipeline {key}"):
            self._ensure_project(names.project)
            for repo in self._plain_repos(names, spec):
                self._ensure_repo(names, repo, f"cdl DataPipeline {key}: {repo.rsplit('-', 1)[-1]}")
        with self._rpc(f"checking the last run of DataPipeline {key}"):
            head = self._head(names, names.raw)
        if head is not None and not request.force:
            desc = _read_description(head.description)
            if desc.get("generation") == request.generation and desc.get("sourceHash") == source_hash:
                run_id = head.commit.id
                self._ensure_driver(run_id, key)
                return EngineRef(run_id, self._console(names, names.raw, run_id), self.name)
        with self._rpc(f"creating the pipelines of DataPipeline {key}"):
            self._ensure_pipelines(key, names, spec)
            if head is not None and not head.is_set("finished"):
                # An ingest a restart left open, for an older spec or source: close it as superseded.
                self.client.pfs.finish_commit(commit=head.commit,
                                              error=f"superseded by generation {request.generation}")
        description = _describe(
            resource=str(key), uid=key.uid, generation=request.generation, sourceHash=source_hash,
            source=source_uri, baseDir=str(request.base_dir) if request.base_dir else None, spec=spec.wire(),
        )
        with self._rpc(f"starting the ingest commit of DataPipeline {key}"):
            commit = self.client.pfs.start_commit(
                branch=pfs.Branch(repo=self._repo(names, names.raw), name=BRANCH), description=description)
        run_id = commit.id
        log.info("DataPipeline %s: run %s started (ingest %s)", key, run_id, source_uri)
        self._secrets[run_id] = dict(request.secrets)  # for the ingest; never written anywhere
        self._ensure_driver(run_id, key)
        return EngineRef(run_id, self._console(names, names.raw, run_id), self.name)

    def run_status(self, key: ResourceKey, run_id: str, request: DataRunRequest | None = None) -> DataRunStatus:
        if run_id in self._finished:
            return self._finished[run_id]
        names = self.names(key)
        with self._rpc(f"inspecting run {run_id} of DataPipeline {key}"):
            try:
                raw = self.client.pfs.inspect_commit(commit=self._commit(names, names.raw, run_id))
            except grpc.RpcError as exc:
                if not self._not_found(exc):
                    raise
                return DataRunStatus(run_id, JobState.FAILED, "Failed",
                                     f"run {run_id} is not in Pachyderm repo {names.project}/{names.raw}")
        info = self._run_info(key, names, raw)
        status = DataRunStatus(run_id, JobState.RUNNING, "Ingesting", source_hash=info.source_hash,
                               repos=self._repos_map(names, info.spec))
        driver = self._drivers.get(run_id)
        if driver is not None and driver.error is not None and isinstance(driver.error, PermanentEngineError):
            status.state, status.phase, status.message = JobState.FAILED, "Failed", driver.error.message
            return status
        if raw.error:
            status.state, status.phase = JobState.FAILED, "Failed"
            status.message = f"ingest of run {run_id} failed: {raw.error}"
            return status
        if not raw.is_set("finished"):
            self._ensure_driver(run_id, key)
            status.message = f"ingesting {info.source_uri} into {names.raw}@{run_id[:12]}"
            return status
        status.phase = "Processing"
        with self._rpc(f"reading the jobs of run {run_id} of DataPipeline {key}"):
            lineage, failed, waiting = self._step_reports(names, info, run_id)
        status.lineage = lineage
        if failed:
            status.state, status.phase, status.message = JobState.FAILED, "Failed", failed
            return status
        if waiting:
            self._ensure_driver(run_id, key)
            done = sum(1 for s in lineage if s.output_commit)
            status.message = f"{waiting}; {done}/{len(info.steps)} step(s) done"
            status.progress = done / (len(info.steps) + 1)
            return status
        with self._rpc(f"reading the outputs of run {run_id} of DataPipeline {key}"):
            outputs = self._split_outputs(names, info, run_id)
        if outputs is None:
            self._ensure_driver(run_id, key)
            status.message = f"splitting {self._last_repo(names, info)}@{run_id[:12]} into train/test"
            status.progress = len(info.steps) / (len(info.steps) + 1)
            return status
        with self._rpc(f"reading the outputs of run {run_id} of DataPipeline {key}"):
            status.outputs = {**self._step_outputs(names, info, run_id), **outputs}
        status.lineage += [
            StepReport(f"split/{side}", f"{self._last_repo(names, info)}@{run_id}",
                       f"{ref.repo}@{ref.commit}", "", datums_processed=ref.files)
            for side, ref in outputs.items()
        ]
        status.state, status.phase, status.progress = JobState.SUCCEEDED, "Ready", 1.0
        files = outputs["train"].files if "train" in outputs else 0
        status.message = f"run {run_id[:12]} done: {files} training file(s)"
        self._finished[run_id] = status
        return status

    def outputs(self, key: ResourceKey) -> dict[str, DataRef]:
        names = self.names(key)
        with self._rpc(f"reading the outputs of DataPipeline {key}"):
            train = self._last_finished(names, names.repo("train"))
            if train is None:
                return {}
            run_id = _read_description(train.description).get("run", "")
            try:
                raw = self.client.pfs.inspect_commit(commit=self._commit(names, names.raw, run_id))
            except grpc.RpcError as exc:
                if not self._not_found(exc):
                    raise
                return {}
            info = self._run_info(key, names, raw)
            split = self._split_outputs(names, info, run_id) or {}
            return {**self._step_outputs(names, info, run_id), **split}

    def resolve(self, key: ResourceKey, output: str, commit: str = "") -> DataRef:
        names = self.names(key)
        current = self.outputs(key)
        if output not in current and output not in ("raw", "train", "test"):
            raise PermanentEngineError(
                f"DataPipeline {key} has no output {output!r}; it has: {', '.join(sorted(current)) or 'none yet'}")
        if not commit or (output in current and current[output].commit == commit):
            if output in current:
                return current[output]
            raise PermanentEngineError(f"DataPipeline {key} has no {output!r} output yet")
        repo = names.raw if output == "raw" else names.repo(output)
        with self._rpc(f"resolving {output}@{commit} of DataPipeline {key}"):
            try:
                info = self.client.pfs.inspect_commit(commit=self._commit(names, repo, commit))
            except grpc.RpcError as exc:
                if self._not_found(exc):
                    raise PermanentEngineError(
                        f"DataPipeline {key}: output {output} has no commit {commit} in {names.project}/{repo}"
                    ) from None
                raise
            files, size = self._count(names, repo, info.commit.id)
        return DataRef(repo, info.commit.id, BRANCH, files, size, None, self._uri(names, repo, info.commit.id))

    def ensure_local(self, ref: DataRef) -> DataRef:
        """`ref` with `path`: the commit's files copied (once) under the engine's work directory,
        for what must read them as files on the operator's machine (the embedded evaluator)."""
        if ref.path or not ref.uri:
            return ref
        from cdl.runtime.data import copy_pfs_commit

        base = (self._work_dir or Path(tempfile.gettempdir()) / "cdl-pachyderm") / "commits"
        target = base / f"{_clean(ref.repo)}-{ref.commit}"
        if not target.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=_mkdir(base)))
            try:
                with self._rpc(f"copying {ref.uri}"):
                    copy_pfs_commit(self.client, ref.uri, staging)
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return dataclasses.replace(ref, path=str(target))

    def label_counts(self, ref: DataRef) -> dict[str, int]:
        """Files per top-level folder of a commit (labels from directory names): the training
        label distribution that drift is measured against, read from pachd without copying."""
        if ref.path or not ref.uri:
            return {}
        from cdl.runtime.data import PFS_URI

        match = PFS_URI.match(ref.uri)
        if match is None:
            return {}
        project = pfs.Project(name=match["project"] or "default")
        repo = pfs.Repo(name=match["repo"], type="user", project=project)
        commit = pfs.Commit(repo=repo, id=match["commit"], branch=pfs.Branch(repo=repo, name=match["branch"] or BRANCH))
        counts: dict[str, int] = {}
        with self._rpc(f"counting the labels of {ref.uri}"):
            for fi in self.client.pfs.walk_file(file=pfs.File(commit=commit, path="/")):
                parts = fi.file.path.strip("/").split("/")
                if fi.file_type == pfs.FileType.FILE and len(parts) > 1 and not parts[0].startswith("."):
                    counts[parts[0]] = counts.get(parts[0], 0) + 1
        return counts

    def delete(self, key: ResourceKey) -> None:
        names = self.names(key)
        with self._rpc(f"deleting the pipelines of DataPipeline {key}"):
            ours = []
            try:
                infos = list(self.client.pps.list_pipeline(projects=[pfs.Project(name=names.project)]))
            except grpc.RpcError as exc:
                if not self._not_found(exc):
                    raise
                infos = []
            for info in infos:
                desc = _read_description(info.details.description if info.details else "")
                if desc.get("resource") == str(key):
                    ours.append((int(desc.get("index", 0)), info.pipeline.name))
            for _, pipeline in sorted(ours, reverse=True):
                with contextlib.suppress(grpc.RpcError):
                    self.client.pps.delete_pipeline(
                        pipeline=pps.Pipeline(name=pipeline, project=pfs.Project(name=names.project)), force=True)
        with self._rpc(f"deleting the repos of DataPipeline {key}"):
            for part in ("train", "test", "raw"):
                try:
                    self.client.pfs.delete_repo(repo=self._repo(names, names.repo(part)), force=True)
                except grpc.RpcError as exc:
                    if not self._not_found(exc):
                        raise
        with self._lock:
            for run_id in [r for r, d in self._drivers.items() if d.key == str(key)]:
                self._drivers.pop(run_id, None)
                self._finished.pop(run_id, None)

    # ------------------------------------------------------------------ setup

    def _plain_repos(self, names: Names, spec: DataPipelineSpec) -> list[str]:
        return [names.raw, names.repo("train")] + ([names.repo("test")] if spec.split else [])

    def _repos_map(self, names: Names, spec: DataPipelineSpec) -> dict[str, str]:
        out = {"raw": names.raw, "train": names.repo("train")}
        if spec.split:
            out["test"] = names.repo("test")
        for step in spec.steps:
            out[step.name] = names.pipeline(step.name)
        return {k: f"{names.project}/{v}" for k, v in out.items()}

    def _ensure_project(self, project: str) -> None:
        try:
            self.client.pfs.inspect_project(project=pfs.Project(name=project))
        except grpc.RpcError as exc:
            if not self._not_found(exc):
                raise
            try:
                self.client.pfs.create_project(project=pfs.Project(name=project), description="cdl")
            except grpc.RpcError as again:
                if again.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise

    def _ensure_repo(self, names: Names, repo: str, description: str) -> None:
        try:
            self.client.pfs.create_repo(repo=self._repo(names, repo), description=description)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def pipeline_request(self, key: ResourceKey, names: Names, spec: DataPipelineSpec, index: int) -> \
            pps.CreatePipelineRequest:
        """The CreatePipelineRequest of step `index` (pure: no call to pachd)."""
        step = spec.steps[index]
        input_repo = names.raw if index == 0 else names.pipeline(spec.steps[index - 1].name)
        image = step.image or self.settings.default_image
        if not image:
            raise PermanentEngineError(
                f"DataPipeline {key}: spec.steps[{index}].image is required on Pachyderm "
                "(or set cluster.pachyderm.defaultImage)", reason="InvalidSpec")
        env = {
            **step.env,
            "CDL_INPUT_DIR": "/pfs/in",
            "CDL_OUTPUT_DIR": "/pfs/out",
            "CDL_STEP": step.name,
            "CDL_PIPELINE": str(key),
            "CDL_LABELS_FROM": spec.source.labels_from,
            "CDL_FORMAT": spec.source.format,
        }
        secrets = [
            pps.SecretMount(name=ref.name, key=ref.key, env_var=_env_name(ref.key)) for ref in step.secrets
        ]
        requests, limits = _resources(step, self.gpu.resource_name)
        request = pps.CreatePipelineRequest(
            pipeline=pps.Pipeline(name=names.pipeline(step.name), project=pfs.Project(name=names.project)),
            transform=pps.Transform(
                image=image, cmd=list(step.command), env=env, secrets=secrets,
                image_pull_secrets=list(self.settings.image_pull_secrets),
            ),
            input=pps.Input(pfs=pps.PfsInput(
                project=names.project, repo=input_repo, branch=BRANCH, glob=step.glob, name="in")),
            parallelism_spec=pps.ParallelismSpec(constant=step.parallelism or 0),
            datum_tries=step.datum_tries,
            output_branch=BRANCH,
        )
        if requests is not None:
            request.resource_requests = requests
        if limits is not None:
            request.resource_limits = limits
        spec_hash = hashlib.sha256(bytes(request)).hexdigest()[:16]
        request.description = _describe(resource=str(key), step=step.name, index=index, specHash=spec_hash)
        return request

    def _ensure_pipelines(self, key: ResourceKey, names: Names, spec: DataPipelineSpec) -> None:
        for index in range(len(spec.steps)):
            request = self.pipeline_request(key, names, spec, index)
            wanted = _read_description(request.description)["specHash"]
            try:
                current = self.client.pps.inspect_pipeline(pipeline=request.pipeline, details=True)
            except grpc.RpcError as exc:
                if not self._not_found(exc):
                    raise
                current = None
            if current is not None:
                have = _read_description(current.details.description if current.details else "")
                if have.get("specHash") == wanted:
                    continue
                if have.get("resource") not in (None, str(key)):
                    raise PermanentEngineError(
                        f"Pachyderm pipeline {names.project}/{request.pipeline.name} belongs to "
                        f"{have.get('resource')}, not DataPipeline {key}")
                request.update, request.reprocess = True, True
            self.client.pps.create_pipeline(**_request_kwargs(request))
            log.info("DataPipeline %s: pipeline %s %s", key, request.pipeline.name,
                     "updated (reprocess)" if request.update else "created")

    # ------------------------------------------------------------------ runs

    def _head(self, names: Names, repo: str) -> pfs.CommitInfo | None:
        try:
            return self.client.pfs.inspect_commit(commit=self._commit(names, repo))
        except grpc.RpcError as exc:
            if self._not_found(exc):
                return None
            raise

    def _last_finished(self, names: Names, repo: str) -> pfs.CommitInfo | None:
        info = self._head(names, repo)
        for _ in range(50):
            if info is None:
                return None
            if info.is_set("finished") and not info.error and _read_description(info.description).get("run"):
                return info
            parent = info.parent_commit
            if parent is None or not parent.id:
                return None
            info = self.client.pfs.inspect_commit(commit=self._commit(names, repo, parent.id))
        return None

    def _run_info(self, key: ResourceKey, names: Names, raw: pfs.CommitInfo) -> _RunInfo:
        desc = _read_description(raw.description)
        if not desc.get("spec"):
            raise PermanentEngineError(f"commit {raw.commit.id} of {names.raw} was not made by cdl (no spec)")
        spec = DataPipelineSpec.model_validate(desc["spec"])
        return _RunInfo(spec, int(desc.get("generation", 0)), desc.get("sourceHash", ""), desc.get("source", ""),
                        names, key, Path(desc["baseDir"]) if desc.get("baseDir") else None,
                        [s.name for s in spec.steps])

    def _last_repo(self, names: Names, info: _RunInfo) -> str:
        return names.pipeline(info.steps[-1]) if info.steps else names.raw

    def _step_reports(self, names: Names, info: _RunInfo, run_id: str) -> tuple[list[StepReport], str, str]:
        """(lineage so far, failure message, what is still running)."""
        reports: list[StepReport] = []
        upstream = names.raw
        for step in info.steps:
            pipeline = names.pipeline(step)
            job_ref = pps.Job(pipeline=pps.Pipeline(name=pipeline, project=pfs.Project(name=names.project)),
                              id=run_id)
            try:
                job = self.client.pps.inspect_job(job=job_ref, details=False)
            except grpc.RpcError as exc:
                if not self._not_found(exc):
                    raise
                reason = self._pipeline_trouble(names, pipeline)
                if reason:
                    return reports, f"step {step} (pipeline {pipeline}) failed: {reason}", ""
                return reports, "", f"waiting for the job of step {step}"
            report = StepReport(
                step, f"{upstream}@{run_id}", None, f"{pipeline}@{run_id}",
                datums_processed=int(job.data_processed), datums_skipped=int(job.data_skipped),
                datums_failed=int(job.data_failed),
            )
            reports.append(report)
            if job.state in FAILED_JOBS:
                reason = job.reason or pps.JobState(job.state).name.lower()
                return reports, (f"step {step} (job {pipeline}@{run_id[:12]}) failed: {reason}"
                                 f" ({job.data_failed} datum(s) failed)"), ""
            if job.state != pps.JobState.JOB_SUCCESS:
                done = job.data_processed + job.data_skipped
                state = pps.JobState(job.state).name.lower().removeprefix("job_")
                return reports, "", f"step {step}: job {state} ({done}/{job.data_total} datums)"
            report.output_commit = f"{pipeline}@{job.output_commit.id if job.output_commit else run_id}"
            report.report = self._step_report(names, pipeline, run_id)
            upstream = pipeline
        return reports, "", ""

    def _step_report(self, names: Names, repo: str, run_id: str) -> dict[str, Any]:
        """The step's `.cdl-report.json`: what it kept and discarded. Every datum writes its own, and
        pachd concatenates what datums write to the same path, so the documents are merged here."""
        from cdl.runtime.pfs import REPORT_NAME, merge_reports

        try:
            raw = self._read(pfs.File(commit=self._commit(names, repo, run_id), path="/" + REPORT_NAME))
        except grpc.RpcError as exc:
            if self._not_found(exc):
                return {}
            raise
        merged: dict[str, Any] = {}
        text, decoder, at = raw.decode("utf-8", "replace"), json.JSONDecoder(), 0
        while at < len(text):
            while at < len(text) and text[at].isspace():
                at += 1
            if at >= len(text):
                break
            try:
                doc, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                break  # a truncated report: keep what was read
            if isinstance(doc, dict):
                merged = merge_reports(merged, doc)
        return merged

    def _pipeline_trouble(self, names: Names, pipeline: str) -> str:
        try:
            info = self.client.pps.inspect_pipeline(
                pipeline=pps.Pipeline(name=pipeline, project=pfs.Project(name=names.project)))
        except grpc.RpcError as exc:
            if self._not_found(exc):
                return f"pipeline {pipeline} does not exist"
            raise
        if info.state in (pps.PipelineState.PIPELINE_FAILURE, pps.PipelineState.PIPELINE_CRASHING):
            return info.reason or pps.PipelineState(info.state).name.lower()
        return ""

    def _count(self, names: Names, repo: str, commit_id: str) -> tuple[int, int]:
        files = size = 0
        for fi in self.client.pfs.walk_file(file=pfs.File(commit=self._commit(names, repo, commit_id), path="/")):
            if fi.file_type == pfs.FileType.FILE:
                files += 1
                size += int(fi.size_bytes)
        return files, size

    def _step_outputs(self, names: Names, info: _RunInfo, run_id: str) -> dict[str, DataRef]:
        out: dict[str, DataRef] = {}
        for name, repo in [("raw", names.raw)] + [(s, names.pipeline(s)) for s in info.steps]:
            files, size = self._count(names, repo, run_id)
            out[name] = DataRef(repo, run_id, BRANCH, files, size, None, self._uri(names, repo, run_id))
        return out

    def _split_outputs(self, names: Names, info: _RunInfo, run_id: str) -> dict[str, DataRef] | None:
        """The train/test commits written for this run, or None while the split is not done."""
        sides = ["train", "test"] if info.spec.split else ["train"]
        out: dict[str, DataRef] = {}
        for side in sides:
            repo = names.repo(side)
            found = self._commit_for_run(names, repo, run_id)
            if found is None:
                return None
            desc = _read_description(found.description)
            out[side] = DataRef(repo, found.commit.id, BRANCH, int(desc.get("files", 0)), int(desc.get("bytes", 0)),
                                None, self._uri(names, repo, found.commit.id))
        return out

    def _commit_for_run(self, names: Names, repo: str, run_id: str) -> pfs.CommitInfo | None:
        info = self._head(names, repo)
        for _ in range(50):
            if info is None:
                return None
            desc = _read_description(info.description)
            if desc.get("run") == run_id:
                return info if info.is_set("finished") and not info.error else None
            parent = info.parent_commit
            if parent is None or not parent.id:
                return None
            info = self.client.pfs.inspect_commit(commit=self._commit(names, repo, parent.id))
        return None

    def _console(self, names: Names, repo: str, commit_id: str) -> str:
        if not self.settings.console_url:
            return ""
        return f"{self.settings.console_url.rstrip('/')}/lineage/{names.project}/repos/{repo}/commit/{commit_id}"

    # ------------------------------------------------------------------ the driver

    def _ensure_driver(self, run_id: str, key: ResourceKey) -> None:
        with self._lock:
            driver = self._drivers.get(run_id)
            if driver is not None and (driver.thread.is_alive() or isinstance(driver.error, PermanentEngineError)):
                return
            if driver is not None and driver.error is None and not driver.thread.is_alive() and \
                    driver.phase == "Done":
                return
            thread = threading.Thread(target=self._drive, args=(run_id, key), name=f"pachyderm-run-{run_id[:8]}",
                                      daemon=True)
            self._drivers[run_id] = _Driver(thread, str(key))
            thread.start()

    def _drive(self, run_id: str, key: ResourceKey) -> None:
        driver = self._drivers[run_id]
        try:
            names = self.names(key)
            with self._rpc(f"resuming run {run_id} of DataPipeline {key}"):
                raw = self.client.pfs.inspect_commit(commit=self._commit(names, names.raw, run_id))
            info = self._run_info(key, names, raw)
            if not raw.is_set("finished"):
                self._phase(driver, key, "Ingesting")
                try:
                    self._ingest(names, info, raw.commit)
                except PermanentEngineError:
                    # Another driver (an operator that overlapped this one) may have finished it.
                    with self._rpc(f"resuming run {run_id} of DataPipeline {key}"):
                        again = self.client.pfs.inspect_commit(commit=self._commit(names, names.raw, run_id))
                    if not again.is_set("finished") or again.error:
                        raise
            self._phase(driver, key, "Processing")
            with self._rpc(f"waiting on commit set {run_id} of DataPipeline {key}"):
                self.client.pfs.wait_commit_set(pfs.CommitSet(id=run_id))
                _, failed, _ = self._step_reports(names, info, run_id)
            if failed:
                self._phase(driver, key, "Done")
                return
            self._phase(driver, key, "Splitting")
            self._split(names, info, run_id)
            self._phase(driver, key, "Done")
        except (TransientEngineError, PermanentEngineError) as exc:
            driver.error = exc
            log.warning("DataPipeline %s run %s: %s", key, run_id, exc)
        except Exception as exc:  # a bug or an unexpected answer: fail the run with what happened
            driver.error = PermanentEngineError(f"run {run_id} of DataPipeline {key} failed: {exc}")
            log.exception("DataPipeline %s run %s", key, run_id)
        finally:
            self.changes.emit(key)  # finished, failed or stopped: the operator looks now

    def _phase(self, driver: _Driver, key: ResourceKey, phase: str) -> None:
        driver.phase = phase
        self.changes.emit(key)

    def _ingest(self, names: Names, info: _RunInfo, commit: pfs.Commit) -> None:
        """Read the source as the local engine does, then put every file into the open commit
        (pachd deduplicates content: unchanged files cost nothing downstream)."""
        secrets = self._secrets.get(commit.id, {})
        try:
            ingested = self.ingestor.ingest(info.spec.source, secrets, info.base_dir)
        except PermanentEngineError as exc:
            with self._rpc(f"closing the ingest commit {names.raw}@{commit.id}"):
                self.client.pfs.finish_commit(commit=commit, error=exc.message)
            raise PermanentEngineError(f"DataPipeline {info.key}: spec.source.uri: {exc.message}",
                                       reason=exc.reason) from None
        objects = self.ingestor.objects
        with self._rpc(f"ingesting {info.source_uri} into {names.raw}@{commit.id}"):
            self.client.pfs.delete_file(commit=commit, path="/")
            for rel, entry in sorted(ingested.files.items()):
                with open(objects.ensure_local(entry.sha256), "rb") as handle:
                    self.client.pfs.put_file_from_file(commit=commit, path="/" + rel, file=handle)
            self.client.pfs.finish_commit(commit=commit)
        self._secrets.pop(commit.id, None)

    def _split(self, names: Names, info: _RunInfo, run_id: str) -> None:
        """train/test by the rules of `cdl.engines.data.split`, as the local engine splits: files are copied
        server-side; CSV rows and IDX records are split here and written back."""
        from cdl.engines.data.split import TEST, TRAIN, is_data_file, split_files

        spec = info.spec
        source_repo = self._last_repo(names, info)
        src = self._commit(names, source_repo, run_id)
        with self._rpc(f"splitting {source_repo}@{run_id} of DataPipeline {info.key}"):
            if self._split_outputs(names, info, run_id) is not None:
                return
            listing = {fi.file.path.lstrip("/"): int(fi.size_bytes)
                       for fi in self.client.pfs.walk_file(file=pfs.File(commit=src, path="/"))
                       if fi.file_type == pfs.FileType.FILE and is_data_file(fi.file.path.lstrip("/"))}
            if spec.split is not None and spec.source.format in ("csv", "idx"):
                self._split_records(names, info, run_id, source_repo, listing)
                return
            if spec.split is not None:
                where = split_files(list(listing), spec.split.test, spec.split.seed, spec.split.stratify,
                                    spec.source.labels_from == "directory")
            else:
                where = dict.fromkeys(listing, TRAIN)
            for side in ([TRAIN, TEST] if spec.split else [TRAIN]):
                mine = sorted(rel for rel, s in where.items() if s == side)
                ops = [pfs.ModifyFileRequest(copy_file=pfs.CopyFile(dst="/" + rel, src=pfs.File(commit=src,
                                                                                                path="/" + rel)))
                       for rel in mine]
                self._write_side(names, names.repo(side), run_id, source_repo, ops, len(mine),
                                 sum(listing[rel] for rel in mine))

    def _split_records(self, names: Names, info: _RunInfo, run_id: str, source_repo: str,
                       listing: dict[str, int]) -> None:
        from cdl.engines.data.split import split_commit

        objects = self.ingestor.objects
        src = self._commit(names, source_repo, run_id)
        files = {rel: objects.put_bytes(self._read(pfs.File(commit=src, path="/" + rel))) for rel in listing}
        assert info.spec.split is not None
        try:
            result = split_commit(files, objects, info.spec.source.format, info.spec.source.labels_from,
                                  info.spec.split)
        except PermanentEngineError as exc:
            raise PermanentEngineError(f"DataPipeline {info.key}: cannot split {source_repo}: {exc.message}",
                                       reason=exc.reason) from None
        for side, entries in (("train", result.train), ("test", result.test)):
            ops = [op for rel, e in sorted(entries.items())
                   for op in _add_file("/" + rel, objects.ensure_local(e.sha256))]
            self._write_side(names, names.repo(side), run_id, source_repo, ops, len(entries),
                             sum(e.size for e in entries.values()))

    def _write_side(self, names: Names, repo: str, run_id: str, source_repo: str,
                    ops: list[pfs.ModifyFileRequest], files: int, size: int) -> None:
        description = _describe(run=run_id, source=f"{source_repo}@{run_id}", files=files, bytes=size)
        head = self._head(names, repo)
        if head is not None and not head.is_set("finished") and _read_description(head.description).get("run") == \
                run_id:
            commit = head.commit  # a split interrupted by a restart: redo it in the same commit
        else:
            commit = self.client.pfs.start_commit(
                branch=pfs.Branch(repo=self._repo(names, repo), name=BRANCH), description=description)

        def stream() -> Iterator[pfs.ModifyFileRequest]:
            yield pfs.ModifyFileRequest(set_commit=commit)
            yield pfs.ModifyFileRequest(delete_file=pfs.DeleteFile(path="/"))
            yield from ops

        self.client.pfs.modify_file(stream())
        self.client.pfs.finish_commit(commit=commit, description=description)

    def _read(self, file: pfs.File) -> bytes:
        return b"".join(chunk.value for chunk in self.client.pfs.get_file(file=file))


# --------------------------------------------------------------------------- helpers


def _add_file(path: str, source: Path) -> Iterator[pfs.ModifyFileRequest]:
    """AddFile requests for one file in chunks (pachd appends the chunks of a path in one stream)."""
    with open(source, "rb") as handle:
        yield pfs.ModifyFileRequest(add_file=pfs.AddFile(path=path, raw=b""))
        while chunk := handle.read(CHUNK):
            yield pfs.ModifyFileRequest(add_file=pfs.AddFile(path=path, raw=chunk))


def _env_name(key: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", key).upper()
    return name if not name[:1].isdigit() else f"_{name}"


def _cpu(quantity: str | None) -> float:
    if not quantity:
        return 0.0
    text = str(quantity)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def _resources(step: Step, gpu_type: str) -> tuple[pps.ResourceSpec | None, pps.ResourceSpec | None]:
    r = step.resources
    if r is None:
        return None, None
    requests = pps.ResourceSpec(cpu=_cpu(r.cpu), memory=r.memory or "") if (r.cpu or r.memory) else None
    limits = None
    if r.memory or r.gpu:
        limits = pps.ResourceSpec(memory=r.memory or "")
        if r.gpu:
            limits.gpu = pps.GpuSpec(type=gpu_type, number=r.gpu)
    return requests, limits


def _request_kwargs(request: pps.CreatePipelineRequest) -> dict[str, Any]:
    """`client.pps.create_pipeline(**kwargs)` for the fields the engine sets."""
    names = ["pipeline", "transform", "input", "parallelism_spec", "datum_tries", "output_branch", "description",
             "update", "reprocess", "resource_requests", "resource_limits"]
    return {n: getattr(request, n) for n in names if request.is_set(n)}


__all__ = ["PachydermDataEngine", "Names"]
