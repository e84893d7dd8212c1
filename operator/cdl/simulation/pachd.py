"""A protocol-level fake of pachd, Pachyderm 2.12's gRPC API (`pfs_v2.API`, `pps_v2.API`).

pachyderm-sdk 2.12.2 generates client stubs only (no server base classes), so this server is
built on grpcio's generic handlers with the SDK's own betterproto messages and method paths: the
engine talks to it through the unchanged `pachyderm_sdk.Client`, over real HTTP/2 gRPC.

What it checks, as pachd does:
- names (`^[a-zA-Z0-9_-]+$`), pipeline names of at most 51 characters and
  `<project>-<pipeline>-v<N>` of at most 63; glob patterns that parse; input repos that exist;
  `pipeline "x" already exists` without `update`; repos that exist (`repo p/r already exists`);
  writes only to open commits; no user commits on a pipeline's output branch; a repo that feeds a
  pipeline is only deleted with `force`;
- auth: with a token configured, every call must carry it in the `authn-token` metadata
  (UNAUTHENTICATED otherwise, with pachd's messages);
- commit sets: a commit on an input repo opens an output commit with the same id in every
  downstream repo and a job per pipeline (state JOB_CREATED), the job runs when its input commit
  finishes, `InspectCommitSet(wait)` and `InspectCommit(wait=FINISHED)` block until done;
- datums by glob; a datum already processed by the same pipeline salt is skipped (its output is
  reused), `reprocess` on update draws a new salt; what several datums write to the same path is
  concatenated in datum order; `datum_tries` attempts per datum; a failed
  datum fails the job (JOB_FAILURE, output commit finished with an error) and makes downstream
  jobs JOB_UNRUNNABLE; content-addressed file storage (no byte stored twice).

Running datums: with `images` (cdl.simulation.images), a datum runs the transform's `cmd` in a
container of the transform's image (only that image's files and packages, the spec's env, the
Secrets given as `secrets`, Pachyderm's variables, and PFS_ROOT); without, as a local subprocess
of this interpreter (the contract tests). Either way every argument or environment value starting
with `/pfs` is rewritten to a temporary directory that holds the datum's files under
`/pfs/<input name>/<path>` and collects `/pfs/out`.

What it cannot do:
- resource requests/limits, GPUs, parallelism and image pull secrets are recorded and returned
  by InspectPipeline but not enforced;
- fetch `s3://` URLs (`put_file_from_url` reads `file:`, `http:` and `https:` only); cron, join,
  group, cross and union inputs; services, spouts, egress, transactions, branch triggers,
  enterprise/identity APIs, logs (GetLogs returns the datum logs only).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import betterproto.lib.google.protobuf as pb
import grpc
from pachyderm_sdk.api import pfs, pps

NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
MAX_PIPELINE_NAME = 51
DNS_LABEL_LIMIT = 63
CHUNK = 1 << 20
NO_TOKEN = "no authentication token (try logging in)"
BAD_TOKEN = "provided auth token is corrupted or has expired (try logging in again)"


class Abort(Exception):
    """A gRPC error status to return."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- glob


def glob_regex(pattern: str) -> re.Pattern[str]:
    """pachd's glob syntax (`*`, `?`, `[...]`, `**`) as a regex over a path; ValueError if bad."""
    out, i = [], 0
    text = "/" + pattern.strip("/") if pattern.strip("/") else "/"
    while i < len(text):
        ch = text[i]
        if text.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            end = text.find("]", i + 1)
            if end < 0:
                raise ValueError(f"error parsing glob pattern {pattern!r}: unexpected end of input")
            body = text[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def datums(paths: list[str], pattern: str) -> dict[str, list[str]]:
    """{datum root: files under it} for the files of a commit and a glob pattern."""
    rx = glob_regex(pattern)
    if pattern.strip("/") == "":
        return {"/": sorted(paths)} if paths else {}
    found: dict[str, list[str]] = {}
    for path in sorted(paths):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:depth])
            if rx.match(prefix):
                found.setdefault(prefix, []).append(path)
                break
    return found


# --------------------------------------------------------------------------- state


@dataclass
class Commit:
    repo: tuple[str, str]
    id: str
    branch: str
    parent: str | None
    description: str = ""
    started: datetime = field(default_factory=_now)
    finished: datetime | None = None
    error: str = ""
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    origin: pfs.OriginKind = pfs.OriginKind.USER


@dataclass
class Repo:
    project: str
    name: str
    description: str = ""
    created: datetime = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit id
    commits: dict[str, Commit] = field(default_factory=dict)
    output_of: str | None = None  # pipeline name when this is an output repo


@dataclass
class Pipeline:
    project: str
    name: str
    request: pps.CreatePipelineRequest
    version: int = 1
    salt: str = field(default_factory=_new_id)
    created: datetime = field(default_factory=_now)

    @property
    def input(self) -> pps.PfsInput:
        return self.request.input.pfs

    @property
    def input_key(self) -> tuple[str, str]:
        return (self.input.project or self.project, self.input.repo)


@dataclass
class Job:
    pipeline: tuple[str, str]
    id: str
    version: int
    state: pps.JobState = pps.JobState.JOB_CREATED
    reason: str = ""
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    total: int = 0
    created: datetime = field(default_factory=_now)
    started: datetime | None = None
    finished: datetime | None = None
    logs: list[str] = field(default_factory=list)


class FakePachd:
    """The fake server. `start()` returns its port; `stop()` ends it and its datum processes."""

    def __init__(self, work_dir: Path, token: str | None = None, images: Any | None = None,
                 secrets: dict[str, dict[str, str]] | None = None) -> None:
        """`images` (a `cdl.simulation.images.ImageBuilder`): run each datum in a container of the
        transform's image; `secrets`: {secret name: {key: value}} for the transform's `secrets`."""
        self.images = images
        self.secrets = secrets
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.projects: dict[str, datetime] = {"default": _now()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.pipelines: dict[tuple[str, str], Pipeline] = {}
        self.jobs: dict[tuple[str, str, str], Job] = {}
        self.blobs: dict[str, bytes] = {}
        self.done_datums: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {}
        self.commit_sets: dict[str, list[tuple[str, str]]] = {}
        self.calls: list[str] = []
        self._cv = threading.Condition(threading.RLock())
        self._work: queue.Queue[tuple[tuple[str, str], str] | None] = queue.Queue()
        self._server: grpc.Server | None = None
        self._worker: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=24))
        server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler("pfs_v2.API", self._pfs_handlers()),
            grpc.method_handlers_generic_handler("pps_v2.API", self._pps_handlers()),
        ])
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self._worker = threading.Thread(target=self._run_jobs, name="fake-pachd-jobs", daemon=True)
        self._worker.start()
        return self.port

    def stop(self) -> None:
        self._work.put(None)
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
        if self._worker is not None:
            self._worker.join(10)

    def wait_idle(self, timeout: float = 30) -> None:
        """Until no job is queued or running (tests)."""
        with self._cv:
            self._cv.wait_for(lambda: self._work.unfinished_tasks == 0, timeout)

    # ------------------------------------------------------------------ wiring

    def _wrap(self, fn: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        def check(context: grpc.ServicerContext) -> None:
            if self.token is None:
                return
            given = dict(context.invocation_metadata()).get("authn-token")
            if not given:
                raise Abort(grpc.StatusCode.UNAUTHENTICATED, NO_TOKEN)
            if given != self.token:
                raise Abort(grpc.StatusCode.UNAUTHENTICATED, BAD_TOKEN)

        if streaming:
            def stream_handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    check(context)
                    self.calls.append(fn.__name__)
                    yield from fn(request)
                except Abort as exc:
                    context.abort(exc.code, exc.details)
            return stream_handler

        def unary_handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                check(context)
                self.calls.append(fn.__name__)
                return fn(request)
            except Abort as exc:
                context.abort(exc.code, exc.details)
        return unary_handler

    def _handlers(self, table: dict[str, tuple[str, Any, Callable[..., Any]]]) -> dict[str, Any]:
        kinds = {
            "uu": (grpc.unary_unary_rpc_method_handler, False),
            "us": (grpc.unary_stream_rpc_method_handler, True),
            "su": (grpc.stream_unary_rpc_method_handler, False),
        }
        out = {}
        for method, (kind, request_type, fn) in table.items():
            factory, streaming = kinds[kind]
            out[method] = factory(self._wrap(fn, streaming), request_deserializer=request_type.FromString,
                                  response_serializer=bytes)
        return out

    def _pfs_handlers(self) -> dict[str, Any]:
        return self._handlers({
            "CreateProject": ("uu", pfs.CreateProjectRequest, self.create_project),
            "InspectProject": ("uu", pfs.InspectProjectRequest, self.inspect_project),
            "ListProject": ("us", pfs.ListProjectRequest, self.list_project),
            "CreateRepo": ("uu", pfs.CreateRepoRequest, self.create_repo),
            "InspectRepo": ("uu", pfs.InspectRepoRequest, self.inspect_repo),
            "ListRepo": ("us", pfs.ListRepoRequest, self.list_repo),
            "DeleteRepo": ("uu", pfs.DeleteRepoRequest, self.delete_repo),
            "StartCommit": ("uu", pfs.StartCommitRequest, self.start_commit),
            "FinishCommit": ("uu", pfs.FinishCommitRequest, self.finish_commit),
            "InspectCommit": ("uu", pfs.InspectCommitRequest, self.inspect_commit),
            "ListCommit": ("us", pfs.ListCommitRequest, self.list_commit),
            "InspectCommitSet": ("us", pfs.InspectCommitSetRequest, self.inspect_commit_set),
            "InspectBranch": ("uu", pfs.InspectBranchRequest, self.inspect_branch),
            "ModifyFile": ("su", pfs.ModifyFileRequest, self.modify_file),
            "GetFile": ("us", pfs.GetFileRequest, self.get_file),
            "InspectFile": ("uu", pfs.InspectFileRequest, self.inspect_file),
            "ListFile": ("us", pfs.ListFileRequest, self.list_file),
            "WalkFile": ("us", pfs.WalkFileRequest, self.walk_file),
            "GlobFile": ("us", pfs.GlobFileRequest, self.glob_file),
        })

    def _pps_handlers(self) -> dict[str, Any]:
        return self._handlers({
            "CreatePipeline": ("uu", pps.CreatePipelineRequest, self.create_pipeline),
            "InspectPipeline": ("uu", pps.InspectPipelineRequest, self.inspect_pipeline),
            "ListPipeline": ("us", pps.ListPipelineRequest, self.list_pipeline),
            "DeletePipeline": ("uu", pps.DeletePipelineRequest, self.delete_pipeline),
            "InspectJob": ("uu", pps.InspectJobRequest, self.inspect_job),
            "ListJob": ("us", pps.ListJobRequest, self.list_job),
            "GetLogs": ("us", pps.GetLogsRequest, self.get_logs),
        })

    # ------------------------------------------------------------------ lookups

    def _project(self, project: pfs.Project | None) -> str:
        name = project.name if project is not None and project.name else "default"
        if name not in self.projects:
            raise Abort(grpc.StatusCode.NOT_FOUND, f'project "{name}" not found')
        return name

    def _repo(self, repo: pfs.Repo | None) -> Repo:
        if repo is None or not repo.name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "repo cannot be nil")
        project = self._project(repo.project)
        found = self.repos.get((project, repo.name))
        if found is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"repo {project}/{repo.name} not found")
        return found

    def _commit(self, commit: pfs.Commit | None) -> Commit:
        if commit is None:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "commit cannot be nil")
        repo_msg = commit.repo if commit.repo is not None and commit.repo.name else (
            commit.branch.repo if commit.branch is not None else None)
        repo = self._repo(repo_msg)
        if commit.id:
            found = repo.commits.get(commit.id)
            if found is None:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"commit {repo.project}/{repo.name}@{commit.id} not found")
            return found
        branch = commit.branch.name if commit.branch is not None and commit.branch.name else "master"
        head = repo.branches.get(branch)
        if head is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f'branch "{branch}" not found in repo {repo.project}/{repo.name}')
        return repo.commits[head]

    def _commit_msg(self, c: Commit) -> pfs.Commit:
        repo = pfs.Repo(name=c.repo[1], type="user", project=pfs.Project(name=c.repo[0]))
        return pfs.Commit(repo=repo, id=c.id, branch=pfs.Branch(repo=repo, name=c.branch))

    def _commit_info(self, c: Commit) -> pfs.CommitInfo:
        info = pfs.CommitInfo(
            commit=self._commit_msg(c), origin=pfs.CommitOrigin(kind=c.origin), description=c.description,
            started=c.started, error=c.error, size_bytes_upper_bound=self._size(c.files),
            details=pfs.CommitInfoDetails(size_bytes=self._size(c.files)),
        )
        if c.parent:
            info.parent_commit = self._commit_msg(self.repos[c.repo].commits[c.parent])
        if c.finished is not None:
            info.finished = c.finished
            info.finishing = c.finished
        return info

    def _size(self, files: dict[str, str]) -> int:
        return sum(len(self.blobs[sha]) for sha in files.values())

    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs.setdefault(sha, data)
        return sha

    # ------------------------------------------------------------------ projects and repos

    def create_project(self, request: pfs.CreateProjectRequest) -> pb.Empty:
        with self._cv:
            name = request.project.name if request.project else ""
            if not NAME.match(name):
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"name ({name}) invalid: only alphanumeric "
                                                              "characters, underscores, and dashes are allowed")
            if name in self.projects and not request.update:
                raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"project {name} already exists")
            self.projects.setdefault(name, _now())
        return pb.Empty()

    def inspect_project(self, request: pfs.InspectProjectRequest) -> pfs.ProjectInfo:
        with self._cv:
            name = self._project(request.project)
            return pfs.ProjectInfo(project=pfs.Project(name=name), created_at=self.projects[name])

    def list_project(self, request: pfs.ListProjectRequest) -> Iterator[pfs.ProjectInfo]:
        with self._cv:
            items = [pfs.ProjectInfo(project=pfs.Project(name=n), created_at=t) for n, t in self.projects.items()]
        yield from items

    def create_repo(self, request: pfs.CreateRepoRequest) -> pb.Empty:
        with self._cv:
            project = self._project(request.repo.project if request.repo else None)
            name = request.repo.name if request.repo else ""
            if not NAME.match(name):
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"name ({name}) invalid: only alphanumeric "
                                                              "characters, underscores, and dashes are allowed")
            existing = self.repos.get((project, name))
            if existing is not None:
                if not request.update:
                    raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"repo {project}/{name} already exists")
                existing.description = request.description
                return pb.Empty()
            self.repos[(project, name)] = Repo(project, name, request.description)
        return pb.Empty()

    def _repo_info(self, repo: Repo) -> pfs.RepoInfo:
        msg = pfs.Repo(name=repo.name, type="user", project=pfs.Project(name=repo.project))
        size = sum(self._size(c.files) for c in repo.commits.values())
        return pfs.RepoInfo(repo=msg, created=repo.created, description=repo.description,
                            size_bytes_upper_bound=size,
                            branches=[pfs.Branch(repo=msg, name=b) for b in sorted(repo.branches)])

    def inspect_repo(self, request: pfs.InspectRepoRequest) -> pfs.RepoInfo:
        with self._cv:
            return self._repo_info(self._repo(request.repo))

    def list_repo(self, request: pfs.ListRepoRequest) -> Iterator[pfs.RepoInfo]:
        with self._cv:
            wanted = {p.name for p in request.projects}
            items = [self._repo_info(r) for r in self.repos.values() if not wanted or r.project in wanted]
        yield from items

    def delete_repo(self, request: pfs.DeleteRepoRequest) -> pfs.DeleteRepoResponse:
        with self._cv:
            try:
                repo = self._repo(request.repo)
            except Abort as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    return pfs.DeleteRepoResponse(deleted=False)
                raise
            if repo.output_of is not None:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"cannot delete repo {repo.project}/{repo.name}: it is the output of pipeline "
                            f"{repo.output_of}; delete the pipeline instead")
            readers = [p.name for p in self.pipelines.values() if p.input_key == (repo.project, repo.name)]
            if readers and not request.force:
                raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"cannot delete repo {repo.project}/{repo.name}: it is an input of pipeline(s) "
                            f"{', '.join(readers)} (use force)")
            del self.repos[(repo.project, repo.name)]
        return pfs.DeleteRepoResponse(deleted=True)

    # ------------------------------------------------------------------ commits

    def _downstream(self, key: tuple[str, str], branch: str) -> list[Pipeline]:
        """Pipelines reading `key@branch`, transitively, in topological order."""
        out: list[Pipeline] = []
        frontier = [(key, branch)]
        while frontier:
            repo_key, br = frontier.pop(0)
            for p in self.pipelines.values():
                if p.input_key == repo_key and (p.input.branch or "master") == br and p not in out:
                    out.append(p)
                    frontier.append(((p.project, p.name), p.request.output_branch or "master"))
        return out

    def _open_commit(self, repo: Repo, branch: str, set_id: str, description: str = "",
                     origin: pfs.OriginKind = pfs.OriginKind.USER) -> Commit:
        parent = repo.branches.get(branch)
        files = dict(repo.commits[parent].files) if parent else {}
        commit = Commit((repo.project, repo.name), set_id, branch, parent, description, files=files, origin=origin)
        repo.commits[set_id] = commit
        repo.branches[branch] = set_id
        self.commit_sets.setdefault(set_id, []).append((repo.project, repo.name))
        return commit

    def _propagate(self, key: tuple[str, str], branch: str, set_id: str) -> None:
        for p in self._downstream(key, branch):
            out = self.repos[(p.project, p.name)]
            self._open_commit(out, p.request.output_branch or "master", set_id, origin=pfs.OriginKind.AUTO)
            self.jobs[(p.project, p.name, set_id)] = Job((p.project, p.name), set_id, p.version)

    def start_commit(self, request: pfs.StartCommitRequest) -> pfs.Commit:
        with self._cv:
            branch = request.branch
            repo = self._repo(branch.repo if branch else None)
            name = branch.name or "master"
            if repo.output_of is not None:
                raise Abort(grpc.StatusCode.UNKNOWN,
                            f"cannot start a commit on an output branch: {repo.project}/{repo.name}@{name}")
            head = repo.branches.get(name)
            if head is not None and repo.commits[head].finished is None:
                raise Abort(grpc.StatusCode.UNKNOWN,
                            f"parent commit {repo.project}/{repo.name}@{head} has not been finished")
            set_id = _new_id()
            commit = self._open_commit(repo, name, set_id, request.description)
            self._propagate((repo.project, repo.name), name, set_id)
            return self._commit_msg(commit)

    def finish_commit(self, request: pfs.FinishCommitRequest) -> pb.Empty:
        with self._cv:
            commit = self._commit(request.commit)
            if commit.finished is not None:
                raise Abort(grpc.StatusCode.UNKNOWN, f"commit {commit.repo[0]}/{commit.repo[1]}@{commit.id} "
                                                     "has already finished")
            if request.description:
                commit.description = request.description
            self._finish(commit, request.error)
        return pb.Empty()

    def _finish(self, commit: Commit, error: str = "") -> None:
        commit.error = error
        commit.finished = _now()
        for p in self._downstream(commit.repo, commit.branch):
            if p.input_key == commit.repo:
                self._work.put(((p.project, p.name), commit.id))
        self._cv.notify_all()

    def inspect_commit(self, request: pfs.InspectCommitRequest) -> pfs.CommitInfo:
        with self._cv:
            commit = self._commit(request.commit)
            if request.wait == pfs.CommitState.FINISHED:
                self._cv.wait_for(lambda: commit.finished is not None, timeout=600)
            return self._commit_info(commit)

    def list_commit(self, request: pfs.ListCommitRequest) -> Iterator[pfs.CommitInfo]:
        with self._cv:
            repo = self._repo(request.repo)
            items = sorted(repo.commits.values(), key=lambda c: c.started, reverse=not request.reverse)
            if request.number:
                items = items[: request.number]
            infos = [self._commit_info(c) for c in items]
        yield from infos

    def inspect_commit_set(self, request: pfs.InspectCommitSetRequest) -> Iterator[pfs.CommitInfo]:
        set_id = request.commit_set.id if request.commit_set else ""
        with self._cv:
            if set_id not in self.commit_sets:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"no commits found for commitset {set_id}")

            def members() -> list[Commit]:
                return [self.repos[k].commits[set_id] for k in self.commit_sets[set_id]
                        if k in self.repos and set_id in self.repos[k].commits]

            if request.wait:
                self._cv.wait_for(lambda: all(c.finished is not None for c in members()), timeout=600)
            infos = [self._commit_info(c) for c in members()]
        yield from infos

    def inspect_branch(self, request: pfs.InspectBranchRequest) -> pfs.BranchInfo:
        with self._cv:
            head = self._commit(pfs.Commit(branch=request.branch))
            return pfs.BranchInfo(branch=request.branch, head=self._commit_msg(head))

    # ------------------------------------------------------------------ files

    def modify_file(self, requests: Iterator[pfs.ModifyFileRequest]) -> pb.Empty:
        commit: Commit | None = None
        pending: dict[str, bytearray] = {}

        def flush() -> None:
            assert commit is not None
            for path, data in pending.items():
                commit.files[path] = self._store(bytes(data))
            pending.clear()

        for request in requests:
            with self._cv:
                which, body = betterproto_one_of(request, "body")
                if which == "set_commit":
                    if commit is not None:
                        flush()
                    commit = self._commit(body)
                    if commit.finished is not None:
                        raise Abort(grpc.StatusCode.UNKNOWN,
                                    f"commit {commit.repo[0]}/{commit.repo[1]}@{commit.id} has already finished")
                    continue
                if commit is None:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first ModifyFile request must set the commit")
                if which == "add_file":
                    path = _norm(body.path)
                    source, payload = betterproto_one_of(body, "source")
                    if source == "url":
                        for rel, data in self._fetch(payload.url, payload.recursive):
                            commit.files[_norm(path + "/" + rel if rel else path)] = self._store(data)
                        continue
                    buf = pending.setdefault(path, bytearray(self.blobs[commit.files[path]]
                                                             if path in commit.files else b""))
                    buf.extend(payload or b"")
                elif which == "delete_file":
                    flush()
                    path = _norm(body.path)
                    for existing in [p for p in commit.files if p == path or p.startswith(path.rstrip("/") + "/")]:
                        del commit.files[existing]
                elif which == "copy_file":
                    flush()
                    src = self._commit(body.src.commit)
                    src_path = _norm(body.src.path)
                    dst = _norm(body.dst)
                    matched = {p: s for p, s in src.files.items()
                               if p == src_path or p.startswith(src_path.rstrip("/") + "/")}
                    if not matched:
                        raise Abort(grpc.StatusCode.NOT_FOUND, f"file {src_path} not found in repo "
                                                               f"{src.repo[0]}/{src.repo[1]} at commit {src.id}")
                    for p, sha in matched.items():
                        target = dst if p == src_path else _norm(dst.rstrip("/") + p[len(src_path.rstrip("/")):])
                        if body.append and target in commit.files:
                            sha = self._store(self.blobs[commit.files[target]] + self.blobs[sha])
                        commit.files[target] = sha
        with self._cv:
            if commit is not None:
                flush()
        return pb.Empty()

    def _fetch(self, url: str, recursive: bool) -> Iterator[tuple[str, bytes]]:
        if url.startswith("file://"):
            root = Path(url[len("file://"):])
            if root.is_dir():
                for p in sorted(root.rglob("*")):
                    if p.is_file():
                        yield p.relative_to(root).as_posix(), p.read_bytes()
                return
            yield "", root.read_bytes()
            return
        if url.startswith(("http://", "https://")):
            with urllib.request.urlopen(url, timeout=30) as response:
                yield "", response.read()
            return
        raise Abort(grpc.StatusCode.UNIMPLEMENTED, f"the fake pachd cannot fetch {url} (only file:, http:, https:)")

    def _file_infos(self, commit: Commit, path: str) -> list[pfs.FileInfo]:
        path = _norm(path)
        prefix = path.rstrip("/") + "/"
        files = {p: s for p, s in commit.files.items() if p == path or p.startswith(prefix) or path == "/"}
        if not files:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"file {path} not found in repo {commit.repo[0]}/{commit.repo[1]}"
                                                   f" at commit {commit.id}")
        dirs: dict[str, int] = {}
        for p, sha in files.items():
            parts = p.strip("/").split("/")
            for depth in range(len(parts)):
                d = "/" + "/".join(parts[:depth]) + ("/" if depth else "")
                dirs[d] = dirs.get(d, 0) + len(self.blobs[sha])
        out = []
        msg = self._commit_msg(commit)
        for d, size in dirs.items():
            if d == "/" or d.startswith(prefix) or path == "/" or d == prefix:
                out.append(pfs.FileInfo(file=pfs.File(commit=msg, path=d), file_type=pfs.FileType.DIR,
                                        size_bytes=size, committed=commit.finished or commit.started))
        for p, sha in files.items():
            out.append(pfs.FileInfo(file=pfs.File(commit=msg, path=p), file_type=pfs.FileType.FILE,
                                    size_bytes=len(self.blobs[sha]), hash=bytes.fromhex(sha),
                                    committed=commit.finished or commit.started))
        return sorted(out, key=lambda f: f.file.path)

    def walk_file(self, request: pfs.WalkFileRequest) -> Iterator[pfs.FileInfo]:
        with self._cv:
            commit = self._commit(request.file.commit)
            infos = self._file_infos(commit, request.file.path or "/")
        yield from infos

    def list_file(self, request: pfs.ListFileRequest) -> Iterator[pfs.FileInfo]:
        with self._cv:
            commit = self._commit(request.file.commit)
            base = _norm(request.file.path or "/")
            depth = 0 if base == "/" else len(base.strip("/").split("/"))
            infos = [i for i in self._file_infos(commit, base)
                     if len(i.file.path.strip("/").split("/")) == depth + 1 and i.file.path.strip("/")]
        yield from infos

    def glob_file(self, request: pfs.GlobFileRequest) -> Iterator[pfs.FileInfo]:
        with self._cv:
            commit = self._commit(request.commit)
            try:
                rx = glob_regex(request.pattern)
            except ValueError as exc:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            infos = [i for i in self._file_infos(commit, "/") if rx.match(i.file.path.rstrip("/") or "/")]
        yield from infos

    def inspect_file(self, request: pfs.InspectFileRequest) -> pfs.FileInfo:
        with self._cv:
            commit = self._commit(request.file.commit)
            path = _norm(request.file.path)
            for info in self._file_infos(commit, path):
                if info.file.path.rstrip("/") == path.rstrip("/") or (path == "/" and info.file.path == "/"):
                    return info
            raise Abort(grpc.StatusCode.NOT_FOUND, f"file {path} not found")

    def get_file(self, request: pfs.GetFileRequest) -> Iterator[pb.BytesValue]:
        with self._cv:
            commit = self._commit(request.file.commit)
            path = _norm(request.file.path)
            if path not in commit.files:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"file {path} not found in repo "
                                                       f"{commit.repo[0]}/{commit.repo[1]} at commit {commit.id}")
            data = self.blobs[commit.files[path]]
        for i in range(0, max(len(data), 1), CHUNK):
            yield pb.BytesValue(value=data[i : i + CHUNK])

    # ------------------------------------------------------------------ pipelines

    def create_pipeline(self, request: pps.CreatePipelineRequest) -> pb.Empty:
        with self._cv:
            if request.pipeline is None or not request.pipeline.name:
                raise Abort(grpc.StatusCode.UNKNOWN, "invalid pipeline spec: request.Pipeline.Name cannot be empty")
            project = self._project(request.pipeline.project)
            name = request.pipeline.name
            if not NAME.match(name):
                raise Abort(grpc.StatusCode.UNKNOWN, f"invalid pipeline name: name ({name}) invalid: only "
                                                     "alphanumeric characters, underscores, and dashes are allowed")
            if len(name) > MAX_PIPELINE_NAME:
                raise Abort(grpc.StatusCode.UNKNOWN, f'pipeline name "{name}" is {len(name) - MAX_PIPELINE_NAME} '
                                                     f"characters longer than the {MAX_PIPELINE_NAME} max")
            rc = f"{project.lower()}-{name.lower()}-v99".replace("_", "-")
            if len(rc) > DNS_LABEL_LIMIT:
                raise Abort(grpc.StatusCode.UNKNOWN, f'Kubernetes name "{rc}" is {len(rc) - DNS_LABEL_LIMIT} '
                                                     f"characters longer than the {DNS_LABEL_LIMIT} max")
            if request.transform is None or not request.transform.cmd:
                raise Abort(grpc.StatusCode.UNKNOWN, "invalid pipeline spec: transform.cmd must be set")
            if request.input is None or request.input.pfs is None or not request.input.pfs.repo:
                raise Abort(grpc.StatusCode.UNKNOWN, "invalid pipeline spec: the fake pachd supports one pfs input")
            try:
                glob_regex(request.input.pfs.glob)
            except ValueError as exc:
                raise Abort(grpc.StatusCode.UNKNOWN, f"error parsing glob: {exc}") from None
            in_project = request.input.pfs.project or project
            if (in_project, request.input.pfs.repo) not in self.repos:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"input repo {in_project}/{request.input.pfs.repo} not found")
            key = (project, name)
            existing = self.pipelines.get(key)
            if existing is not None and not request.update:
                raise Abort(grpc.StatusCode.ALREADY_EXISTS, f'pipeline "{project}/{name}" already exists')
            if existing is None and (project, name) in self.repos:
                raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"repo {project}/{name} already exists")
            stored = pps.CreatePipelineRequest.FromString(bytes(request))
            if existing is None:
                pipeline = Pipeline(project, name, stored)
                self.pipelines[key] = pipeline
                repo = Repo(project, name, f"Output repo for pipeline {project}/{name}.", output_of=name)
                self.repos[key] = repo
            else:
                pipeline = existing
                pipeline.request = stored
                pipeline.version += 1
                if request.reprocess:
                    pipeline.salt = _new_id()
            # A new or changed pipeline processes what its input branch holds now.
            input_repo = self.repos[pipeline.input_key]
            head = input_repo.branches.get(pipeline.input.branch or "master")
            if head is not None and input_repo.commits[head].finished is not None:
                set_id = _new_id()
                out = self.repos[key]
                self._open_commit(out, stored.output_branch or "master", set_id, origin=pfs.OriginKind.AUTO)
                self.jobs[(project, name, set_id)] = Job(key, set_id, pipeline.version)
                for down in self._downstream(key, stored.output_branch or "master"):
                    self._open_commit(self.repos[(down.project, down.name)], down.request.output_branch or "master",
                                      set_id, origin=pfs.OriginKind.AUTO)
                    self.jobs[(down.project, down.name, set_id)] = Job((down.project, down.name), set_id,
                                                                        down.version)
                self._work.put((key, set_id, head))  # type: ignore[arg-type]
        return pb.Empty()

    def _pipeline(self, msg: pps.Pipeline | None) -> Pipeline:
        project = self._project(msg.project if msg else None)
        name = msg.name if msg else ""
        found = self.pipelines.get((project, name))
        if found is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, f'pipeline "{project}/{name}" not found')
        return found

    def _pipeline_info(self, p: Pipeline) -> pps.PipelineInfo:
        r = p.request
        details = pps.PipelineInfoDetails(
            transform=r.transform, parallelism_spec=r.parallelism_spec, created_at=p.created,
            output_branch=r.output_branch or "master", input=r.input, description=r.description, salt=p.salt,
            datum_tries=r.datum_tries or 3,
        )
        if r.is_set("resource_requests"):
            details.resource_requests = r.resource_requests
        if r.is_set("resource_limits"):
            details.resource_limits = r.resource_limits
        jobs = [j for j in self.jobs.values() if j.pipeline == (p.project, p.name)]
        last = max(jobs, key=lambda j: j.created, default=None)
        busy = any(j.state in (pps.JobState.JOB_CREATED, pps.JobState.JOB_RUNNING) for j in jobs)
        return pps.PipelineInfo(
            pipeline=pps.Pipeline(name=p.name, project=pfs.Project(name=p.project)), version=p.version,
            state=pps.PipelineState.PIPELINE_RUNNING if busy else pps.PipelineState.PIPELINE_STANDBY,
            last_job_state=last.state if last else pps.JobState.JOB_STATE_UNKNOWN,
            parallelism=r.parallelism_spec.constant if r.parallelism_spec else 0,
            type=pps.PipelineInfoPipelineType.PIPELINE_TYPE_TRANSFORM, details=details,
            spec_commit=pfs.Commit(id=p.salt),
        )

    def inspect_pipeline(self, request: pps.InspectPipelineRequest) -> pps.PipelineInfo:
        with self._cv:
            return self._pipeline_info(self._pipeline(request.pipeline))

    def list_pipeline(self, request: pps.ListPipelineRequest) -> Iterator[pps.PipelineInfo]:
        with self._cv:
            wanted = {p.name for p in request.projects}
            infos = [self._pipeline_info(p) for p in self.pipelines.values() if not wanted or p.project in wanted]
        yield from infos

    def delete_pipeline(self, request: pps.DeletePipelineRequest) -> pb.Empty:
        with self._cv:
            try:
                p = self._pipeline(request.pipeline)
            except Abort:
                if request.must_exist:
                    raise
                return pb.Empty()
            readers = [q.name for q in self.pipelines.values() if q.input_key == (p.project, p.name)]
            if readers and not request.force:
                raise Abort(grpc.StatusCode.UNKNOWN, f"cannot delete pipeline {p.project}/{p.name}: pipeline(s) "
                                                     f"{', '.join(readers)} read its output (use force)")
            del self.pipelines[(p.project, p.name)]
            if not request.keep_repo:
                self.repos.pop((p.project, p.name), None)
            else:
                self.repos[(p.project, p.name)].output_of = None
        return pb.Empty()

    # ------------------------------------------------------------------ jobs

    def _job_info(self, job: Job) -> pps.JobInfo:
        project, name = job.pipeline
        info = pps.JobInfo(
            job=pps.Job(pipeline=pps.Pipeline(name=name, project=pfs.Project(name=project)), id=job.id),
            pipeline_version=job.version, state=job.state, reason=job.reason, data_processed=job.processed,
            data_skipped=job.skipped, data_failed=job.failed, data_total=job.total, created=job.created,
        )
        repo = self.repos.get(job.pipeline)
        if repo is not None and job.id in repo.commits:
            info.output_commit = self._commit_msg(repo.commits[job.id])
        if job.started:
            info.started = job.started
        if job.finished:
            info.finished = job.finished
        return info

    def inspect_job(self, request: pps.InspectJobRequest) -> pps.JobInfo:
        with self._cv:
            p = self._pipeline(request.job.pipeline if request.job else None)
            job = self.jobs.get((p.project, p.name, request.job.id))
            if job is None:
                raise Abort(grpc.StatusCode.NOT_FOUND, f"job {p.project}/{p.name}@{request.job.id} not found")
            if request.wait:
                self._cv.wait_for(lambda: job.finished is not None, timeout=600)
            return self._job_info(job)

    def list_job(self, request: pps.ListJobRequest) -> Iterator[pps.JobInfo]:
        with self._cv:
            infos = [self._job_info(j) for j in sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)
                     if request.pipeline is None or not request.pipeline.name or j.pipeline[1] == request.pipeline.name]
        yield from infos

    def get_logs(self, request: pps.GetLogsRequest) -> Iterator[pps.LogMessage]:
        with self._cv:
            job = None
            if request.job is not None and request.job.id:
                p = self._pipeline(request.job.pipeline)
                job = self.jobs.get((p.project, p.name, request.job.id))
            lines = list(job.logs) if job else []
        for line in lines:
            yield pps.LogMessage(message=line)

    def _run_jobs(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                self._work.task_done()
                return
            try:
                key, set_id, *head = item
                self._run_job(key, set_id, head[0] if head else set_id)
            except Exception as exc:  # keep serving; the job records the failure
                with self._cv:
                    job = self.jobs.get((*item[0], item[1]))
                    if job is not None and job.finished is None:
                        job.state, job.reason, job.finished = pps.JobState.JOB_FAILURE, f"fake pachd: {exc}", _now()
            finally:
                with self._cv:
                    self._work.task_done()
                    self._cv.notify_all()

    def _run_job(self, key: tuple[str, str], set_id: str, input_id: str) -> None:
        with self._cv:
            p = self.pipelines.get(key)
            job = self.jobs.get((*key, set_id))
            out_repo = self.repos.get(key)
            if p is None or job is None or out_repo is None or job.finished is not None:
                return
            in_repo = self.repos[p.input_key]
            in_commit = in_repo.commits[input_id]
            out_commit = out_repo.commits[set_id]
            job.state, job.started = pps.JobState.JOB_RUNNING, _now()
            self._cv.notify_all()
            if in_commit.error:
                self._fail(job, out_commit, pps.JobState.JOB_UNRUNNABLE,
                           f"unrunnable because the following upstream pipelines failed: {in_repo.name}")
                return
            files = dict(in_commit.files)
            request = p.request
            salt = p.salt
        groups = datums(list(files), request.input.pfs.glob)
        outputs: dict[str, str] = {}
        done = self.done_datums.setdefault((*key, salt), {})
        tries = max(request.datum_tries or 3, 1)
        failed: list[str] = []
        for root, members in sorted(groups.items()):
            datum_id = hashlib.sha256("".join(f"{m}:{files[m]}\n" for m in members).encode()).hexdigest()[:32]
            job.total += 1
            if datum_id in done:
                job.skipped += 1
                self._merge(outputs, done[datum_id])
                continue
            result = None
            for attempt in range(tries):
                result = self._run_datum(p, job, datum_id, {m: files[m] for m in members}, root, attempt)
                if result is not None:
                    break
            if result is None:
                job.failed += 1
                failed.append(datum_id)
                continue
            job.processed += 1
            done[datum_id] = result
            self._merge(outputs, result)
        with self._cv:
            if failed:
                self._fail(job, out_commit, pps.JobState.JOB_FAILURE,
                           f"datum {failed[0]} failed" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
                return
            out_commit.files = outputs
            job.state, job.finished = pps.JobState.JOB_SUCCESS, _now()
            self._finish(out_commit)

    def _merge(self, outputs: dict[str, str], datum: dict[str, str]) -> None:
        """pachd's merge of datum outputs: a path several datums write holds their contents one
        after the other (in datum order)."""
        for path, sha in datum.items():
            outputs[path] = self._store(self.blobs[outputs[path]] + self.blobs[sha]) if path in outputs else sha

    def _fail(self, job: Job, out_commit: Commit, state: pps.JobState, reason: str) -> None:
        job.state, job.reason, job.finished = state, reason, _now()
        self._finish(out_commit, reason)

    def _run_datum(self, p: Pipeline, job: Job, datum_id: str, files: dict[str, str], root: str,
                   attempt: int) -> dict[str, str] | None:
        """Run the transform on one datum; its /pfs/out files, or None when it failed."""
        base = Path(tempfile.mkdtemp(prefix=f"datum-{datum_id[:8]}-", dir=self.work_dir))
        pfs_root = base / "pfs"
        name = p.input.name or p.input.repo
        try:
            for path, sha in files.items():
                target = pfs_root / name / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.blobs[sha])
            (pfs_root / "out").mkdir(parents=True)

            def local(value: str) -> str:
                return str(pfs_root) + value[len("/pfs"):] if value == "/pfs" or value.startswith("/pfs/") else value

            t = p.request.transform
            log_path = self.work_dir / f"{p.name}-{job.id[:12]}-{datum_id[:8]}-{attempt}.log"
            pach_env = {
                name: local(f"/pfs/{name}{root if root != '/' else ''}"), "PFS_ROOT": str(pfs_root),
                "PACH_JOB_ID": job.id, "PACH_DATUM_ID": datum_id, "PACH_OUTPUT_COMMIT_ID": job.id,
                "PPS_PIPELINE_NAME": p.name, "PPS_PROJECT_NAME": p.project,
            }
            if self.images is not None:
                code = self._run_container(p, t, pach_env, local, base, log_path)
            else:
                code = self._run_local(t, pach_env, local, base, log_path)
            job.logs.append(log_path.read_text(errors="replace"))
            if code not in [0, *t.accept_return_code]:
                return None
            out: dict[str, str] = {}
            for path in sorted((pfs_root / "out").rglob("*")):
                if path.is_file():
                    out["/" + path.relative_to(pfs_root / "out").as_posix()] = self._store(path.read_bytes())
            return out
        finally:
            shutil.rmtree(base, ignore_errors=True)

    def _secret_env(self, t: pps.Transform) -> dict[str, str]:
        env: dict[str, str] = {}
        for secret in t.secrets:
            if not secret.env_var:
                continue
            if self.secrets is None:
                env[secret.env_var] = f"fake-secret-{secret.name}-{secret.key}"
            elif secret.key in self.secrets.get(secret.name, {}):
                env[secret.env_var] = self.secrets[secret.name][secret.key]
            else:
                raise RuntimeError(f"transform.secrets: Secret {secret.name} has no key {secret.key}")
        return env

    def _run_container(self, p: Pipeline, t: pps.Transform, pach_env: dict[str, str], local: Callable[[str], str],
                       base: Path, log_path: Path) -> int:
        """The datum in a container of the transform's image: its command, the spec's env and
        Pachyderm's variables (with /pfs mapped to the datum's folder), nothing else."""
        from cdl.simulation import containers

        image = self.images.image(t.image)  # type: ignore[union-attr]
        env = {k: local(v) for k, v in t.env.items()}
        env.update(self._secret_env(t))
        env.update(pach_env)
        work = base / "work"
        container = containers.start(f"{p.name}-datum", image, [local(a) for a in t.cmd], env, work, log_path)
        try:
            return container.wait(timeout=300)
        except subprocess.TimeoutExpired:
            return container.stop(1) or -9

    def _run_local(self, t: pps.Transform, pach_env: dict[str, str], local: Callable[[str], str], base: Path,
                   log_path: Path) -> int:
        """The datum as a subprocess of this interpreter (the contract tests' mode, no images)."""
        cmd = [local(a) for a in t.cmd]
        if cmd and cmd[0] in ("python", "python3"):
            cmd[0] = sys.executable
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "TMPDIR")}
        env.update({k: local(v) for k, v in t.env.items()})
        env.update(pach_env)
        env.update(self._secret_env(t))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                return proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                return -9


# --------------------------------------------------------------------------- helpers


def _norm(path: str) -> str:
    path = "/" + path.strip().lstrip("/")
    return path if path == "/" else path.rstrip("/") or "/"


def betterproto_one_of(message: Any, group: str) -> tuple[str, Any]:
    import betterproto

    return betterproto.which_one_of(message, group)


__all__ = ["FakePachd", "glob_regex", "datums"]
