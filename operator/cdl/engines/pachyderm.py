"""The Pachyderm data engine: a DataPipeline as Pachyderm repos, commits and pipelines.

Layout, per DataPipeline `ns/name` (in Pachyderm project `settings.project`, else one project per
namespace):

- `<name>-raw`: the source, ingested as one commit per run (files put from the source; pachd
  deduplicates content, so unchanged files cost nothing and their datums are skipped downstream);
- `<name>-<step>`: one Pachyderm pipeline per step, chained (step 1 reads `-raw`, step k reads
  step k-1's output repo), with the step's image, command, glob, parallelism, resources (GPU as
  a limit), datum tries, env and secrets;
- `<name>-train` / `<name>-test`: the reproducible split of the last output, written by the
  engine as commits (server-side copies; IDX and CSV sources are split record by record).

A run is the raw commit: its id is the commit set every downstream output commit shares, so the
engine waits on that commit set and reads each step's job (`<pipeline>@<run id>`) for lineage.
Everything needed to resume a run (the spec, generation, source hash) is kept in the raw
commit's description, so a restarted operator picks an unfinished run up from Pachyderm alone.

Errors: an unreachable pachd is a `TransientEngineError`; a request pachd refuses is a
`PermanentEngineError` carrying pachd's own message.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import struct
import tarfile
import tempfile
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

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
from cdl.engines.cluster_settings import GpuSettings, PachydermSettings
from cdl.errors import PermanentEngineError, TransientEngineError

log = logging.getLogger("cdl.engines.pachyderm")

SCHEME = "pfs://"
BRANCH = "master"
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
_IDX_PAIR = re.compile(r"^(?P<prefix>.*?)[-_.]?(?P<kind>images|labels)[-_.]idx(?P<dims>\d)-ubyte(\.gz)?$")


# --------------------------------------------------------------------------- names


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


# --------------------------------------------------------------------------- sources


@dataclass
class SourceFile:
    path: str  # path inside the repo, starting with "/"
    open: Any  # () -> binary file object
    size: int = 0


class SourceError(Exception):
    """The source can't be read (missing directory, unreachable URL); says which and why."""


def _resolve_uri(uri: str, base_dir: Path | None) -> str:
    """file:rel/dir relative to the operator's base directory becomes file:///abs/dir."""
    if not uri.startswith("file:"):
        return uri
    raw = unquote(uri[len("file:"):])
    if raw.startswith("//"):
        raw = urlparse(uri).path
    path = Path(raw)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path.resolve().as_uri()


def _archive_members(path: Path) -> Iterator[SourceFile]:
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
        for info in infos:
            if _hidden(info.filename):
                continue

            def opener(member: str = info.filename) -> Any:
                return io.BytesIO(zipfile.ZipFile(path).read(member))

            yield SourceFile("/" + info.filename.lstrip("/"), opener, info.file_size)
        return
    with tarfile.open(path) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
    for member in members:
        if _hidden(member.name):
            continue

        def topen(member_name: str = member.name) -> Any:
            with tarfile.open(path) as tar:
                extracted = tar.extractfile(member_name)
                assert extracted is not None
                return io.BytesIO(extracted.read())

        yield SourceFile("/" + member.name.lstrip("./"), topen, member.size)


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2"))


def _hidden(relpath: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in Path(relpath).parts)


def source_files(uri: str, work_dir: Path) -> Iterator[SourceFile]:
    """The files of a `file:` or `https:` source (archives unpacked), as repo paths.

    `s3://` sources are not listed here: pachd reads them itself (`put_file_from_url`)."""
    if uri.startswith(("http://", "https://")):
        target = work_dir / (Path(urlparse(uri).path).name or "download")
        if not target.exists():
            try:
                with urllib.request.urlopen(uri, timeout=60) as response, open(target, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as exc:
                target.unlink(missing_ok=True)
                raise SourceError(f"cannot download {uri}: {exc}") from exc
        if _is_archive(target):
            yield from _archive_members(target)
        else:
            yield SourceFile("/" + target.name, lambda: open(target, "rb"), target.stat().st_size)
        return
    root = Path(urlparse(uri).path)
    if not root.exists():
        raise SourceError(f"source {root} does not exist")
    if root.is_file():
        if _is_archive(root):
            yield from _archive_members(root)
        else:
            yield SourceFile("/" + root.name, lambda: open(root, "rb"), root.stat().st_size)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            full = Path(dirpath) / filename
            rel = full.relative_to(root).as_posix()
            yield SourceFile("/" + rel, lambda f=full: open(f, "rb"), full.stat().st_size)


def fingerprint(uri: str) -> str:
    """A cheap content hash of a source: names, sizes and modification times of its files
    (`file:`), the validators of the HTTP resource (`https:`), the URI itself (`s3:`)."""
    digest = hashlib.sha256(uri.encode())
    if uri.startswith("file:"):
        root = Path(urlparse(uri).path)
        if not root.exists():
            raise SourceError(f"source {root} does not exist")
        entries = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in entries:
            rel = path.name if path == root else path.relative_to(root).as_posix()
            if _hidden(rel):
                continue
            stat = path.stat()
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    elif uri.startswith(("http://", "https://")):
        request = urllib.request.Request(uri, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                for header in ("ETag", "Last-Modified", "Content-Length"):
                    digest.update(f"{header}:{response.headers.get(header, '')}\n".encode())
        except OSError as exc:
            raise SourceError(f"cannot reach {uri}: {exc}") from exc
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------- split


def assign_split(items: list[tuple[str, str]], test: float, seed: int, stratify: bool) -> dict[str, str]:
    """`{item: "train" | "test"}` for `(item, label)` pairs: reproducible for the same seed and
    items; with `stratify`, each label's share is the same in both outputs (at least one item of
    a label with two or more items goes to each side)."""
    groups: dict[str, list[str]] = {}
    for item, label in sorted(items):
        groups.setdefault(label if stratify else "", []).append(item)
    out: dict[str, str] = {}
    for label in sorted(groups):
        members = groups[label]
        rng = random.Random(f"{seed}:{label}")
        rng.shuffle(members)
        n_test = round(len(members) * test)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        for i, item in enumerate(members):
            out[item] = "test" if i < n_test else "train"
    return out


def _label_of(path: str, labels_from: str) -> str:
    parts = path.strip("/").split("/")
    return parts[-2] if labels_from == "directory" and len(parts) >= 2 else ""


def _idx_read(data: bytes) -> tuple[int, tuple[int, ...], bytes]:
    """(type code, dimensions, payload) of an IDX file (gzip or plain)."""
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise ValueError("not an IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dtype, dims, data[4 + 4 * ndim :]


def _idx_write(dtype: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, dtype, len(dims)) + struct.pack(">" + "I" * len(dims), *dims) + payload


_IDX_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def split_idx(files: dict[str, bytes], test: float, seed: int, stratify: bool) -> dict[str, dict[str, bytes]]:
    """Split paired IDX image/label files record by record into `{"train": {...}, "test": {...}}`.

    Every `X-images-idx3-ubyte` with its `X-labels-idx1-ubyte` is concatenated into one pool;
    the outputs hold `train-images-idx3-ubyte` / `train-labels-idx1-ubyte` and the same for test."""
    pairs: dict[str, dict[str, str]] = {}
    for path in files:
        m = _IDX_PAIR.match(Path(path).name)
        if m:
            pairs.setdefault(str(Path(path).parent / m.group("prefix")), {})[m.group("kind")] = path
    records: list[tuple[bytes, bytes, int]] = []
    img_meta: tuple[int, tuple[int, ...]] | None = None
    for key in sorted(pairs):
        pair = pairs[key]
        if set(pair) != {"images", "labels"}:
            raise ValueError(f"IDX files {sorted(pair.values())}: images and labels must come in pairs")
        itype, idims, ipay = _idx_read(files[pair["images"]])
        ltype, ldims, lpay = _idx_read(files[pair["labels"]])
        if idims[0] != ldims[0]:
            raise ValueError(f"{pair['images']} has {idims[0]} images but {pair['labels']} {ldims[0]} labels")
        size = _IDX_SIZES[itype]
        per = size
        for d in idims[1:]:
            per *= d
        img_meta = img_meta or (itype, idims[1:])
        for i in range(idims[0]):
            label = lpay[i : i + 1]
            records.append((ipay[i * per : (i + 1) * per], label, label[0]))
    if img_meta is None:
        raise ValueError("no IDX image/label pairs found (expected *-images-idx3-ubyte and *-labels-idx1-ubyte)")
    sides = assign_split([(str(i), str(r[2])) for i, r in enumerate(records)], test, seed, stratify)
    out: dict[str, dict[str, bytes]] = {}
    for side in ("train", "test"):
        chosen = [records[int(i)] for i in sorted(sides, key=int) if sides[i] == side]
        itype, shape = img_meta
        out[side] = {
            f"/{side}-images-idx{len(shape) + 1}-ubyte": _idx_write(itype, (len(chosen), *shape),
                                                                     b"".join(r[0] for r in chosen)),
            f"/{side}-labels-idx1-ubyte": _idx_write(0x08, (len(chosen),), b"".join(r[1] for r in chosen)),
        }
    return out


def split_csv(files: dict[str, bytes], test: float, seed: int, stratify: bool) -> dict[str, dict[str, bytes]]:
    """Split CSV files row by row (header kept in both outputs), stratified on a `label` column."""
    import csv

    out: dict[str, dict[str, bytes]] = {"train": {}, "test": {}}
    for path in sorted(files):
        text = files[path].decode("utf-8")
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        column = header.index("label") if "label" in header else None
        items = [(str(i), row[column] if column is not None and column < len(row) else "")
                 for i, row in enumerate(body)]
        sides = assign_split(items, test, seed, stratify)
        for side in ("train", "test"):
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(body[int(i)] for i in sorted(sides, key=int) if sides[i] == side)
            out[side][path] = buf.getvalue().encode()
    return out


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
        self._finished: dict[str, DataRunStatus] = {}  # succeeded runs never change: answer from memory
        self._lock = threading.Lock()

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

    def _scratch(self) -> Path:
        base = self._work_dir or Path(tempfile.gettempdir()) / "cdl-pachyderm"
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=base))

    # ------------------------------------------------------------------ protocol

    def source_fingerprint(self, request: DataRunRequest) -> str:
        uri = _resolve_uri(request.spec.source.uri, request.base_dir)
        try:
            return fingerprint(uri)
        except SourceError as exc:
            raise PermanentEngineError(f"DataPipeline {request.key}: spec.source.uri: {exc}") from None

    def start_run(self, request: DataRunRequest) -> EngineRef:
        key, spec = request.key, request.spec
        names = self.names(key)
        source_uri = _resolve_uri(spec.source.uri, request.base_dir)
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
            source=source_uri, spec=spec.wire(),
        )
        with self._rpc(f"starting the ingest commit of DataPipeline {key}"):
            commit = self.client.pfs.start_commit(
                branch=pfs.Branch(repo=self._repo(names, names.raw), name=BRANCH), description=description)
        run_id = commit.id
        log.info("DataPipeline %s: run %s started (ingest %s)", key, run_id, source_uri)
        self._ensure_driver(run_id, key)
        return EngineRef(run_id, self._console(names, names.raw, run_id), self.name)

    def run_status(self, key: ResourceKey, run_id: str) -> DataRunStatus:
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
                        names, key, [s.name for s in spec.steps])

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
            upstream = pipeline
        return reports, "", ""

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
                driver.phase = "Ingesting"
                try:
                    self._ingest(names, info, raw.commit)
                except PermanentEngineError:
                    # Another driver (an operator that overlapped this one) may have finished it.
                    with self._rpc(f"resuming run {run_id} of DataPipeline {key}"):
                        again = self.client.pfs.inspect_commit(commit=self._commit(names, names.raw, run_id))
                    if not again.is_set("finished") or again.error:
                        raise
            driver.phase = "Processing"
            with self._rpc(f"waiting on commit set {run_id} of DataPipeline {key}"):
                self.client.pfs.wait_commit_set(pfs.CommitSet(id=run_id))
                _, failed, _ = self._step_reports(names, info, run_id)
            if failed:
                driver.phase = "Done"
                return
            driver.phase = "Splitting"
            self._split(names, info, run_id)
            driver.phase = "Done"
        except (TransientEngineError, PermanentEngineError) as exc:
            driver.error = exc
            log.warning("DataPipeline %s run %s: %s", key, run_id, exc)
        except Exception as exc:  # a bug or an unexpected answer: fail the run with what happened
            driver.error = PermanentEngineError(f"run {run_id} of DataPipeline {key} failed: {exc}")
            log.exception("DataPipeline %s run %s", key, run_id)

    def _ingest(self, names: Names, info: _RunInfo, commit: pfs.Commit) -> None:
        uri = info.source_uri
        what = f"ingesting {uri} into {names.raw}@{commit.id}"
        with self._rpc(what):
            self.client.pfs.delete_file(commit=commit, path="/")
            if uri.startswith("s3://"):
                self.client.pfs.put_file_from_url(commit=commit, path="/", url=uri, recursive=True)
            else:
                scratch = self._scratch()
                try:
                    for item in source_files(uri, scratch):
                        with item.open() as handle:
                            self.client.pfs.put_file_from_file(commit=commit, path=item.path, file=handle)
                except SourceError as exc:
                    self.client.pfs.finish_commit(commit=commit, error=str(exc))
                    raise PermanentEngineError(f"DataPipeline {info.key}: spec.source.uri: {exc}") from None
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            self.client.pfs.finish_commit(commit=commit)

    def _split(self, names: Names, info: _RunInfo, run_id: str) -> None:
        spec = info.spec
        source_repo = self._last_repo(names, info)
        src = self._commit(names, source_repo, run_id)
        sides = ["train", "test"] if spec.split else ["train"]
        with self._rpc(f"splitting {source_repo}@{run_id} of DataPipeline {info.key}"):
            if self._split_outputs(names, info, run_id) is not None:
                return
            listing = [fi for fi in self.client.pfs.walk_file(file=pfs.File(commit=src, path="/"))
                       if fi.file_type == pfs.FileType.FILE]
            record_level = spec.split is not None and spec.source.format in ("idx", "csv")
            if record_level:
                contents = {fi.file.path: self._read(fi.file) for fi in listing}
                splitter = split_idx if spec.source.format == "idx" else split_csv
                try:
                    parts = splitter(contents, spec.split.test, spec.split.seed, spec.split.stratify)
                except ValueError as exc:
                    raise PermanentEngineError(f"DataPipeline {info.key}: cannot split {source_repo}: {exc}") from None
                for side in sides:
                    files = parts[side]
                    self._write_side(names, names.repo(side), run_id, source_repo,
                                     [pfs.ModifyFileRequest(add_file=pfs.AddFile(path=p, raw=data))
                                      for p, data in files.items()],
                                     len(files), sum(len(d) for d in files.values()))
                return
            paths = {fi.file.path: int(fi.size_bytes) for fi in listing}
            if spec.split is not None:
                labels = [(p, _label_of(p, spec.source.labels_from)) for p in paths]
                chosen = assign_split(labels, spec.split.test, spec.split.seed, spec.split.stratify)
            else:
                chosen = dict.fromkeys(paths, "train")
            for side in sides:
                mine = sorted(p for p, s in chosen.items() if s == side)
                ops = [pfs.ModifyFileRequest(copy_file=pfs.CopyFile(dst=p, src=pfs.File(commit=src, path=p)))
                       for p in mine]
                self._write_side(names, names.repo(side), run_id, source_repo, ops, len(mine),
                                 sum(paths[p] for p in mine))

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


__all__ = ["PachydermDataEngine", "Names", "assign_split", "split_idx", "split_csv", "source_files", "fingerprint"]
