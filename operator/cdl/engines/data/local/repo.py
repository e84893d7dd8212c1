"""Repositories, branches and immutable commits with provenance, as Pachyderm keeps them.

A commit is a JSON file naming its files (path -> object sha256 and size), its parent on the
branch, the commits it was computed from (provenance) and how (origin: ingest of a source, a
step's spec hash and job, or the split). Commits never change; a branch is a file naming its
head commit. A checkout materializes a commit as a read-only directory of hardlinks to the
object store, which is what trials and Label Studio read.

Layout under the root: `repos/<repo>/repo.json`, `repos/<repo>/commits/<id>.json`,
`repos/<repo>/branches/<branch>`, `checkouts/<repo>/<commit>/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cdl.engines.data.objects import FileEntry, ObjectStore
from cdl.files import read_only_tree, writable_tree, write_json_atomic

DEFAULT_BRANCH = "master"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Commit:
    """One immutable version of a repo."""

    id: str
    repo: str
    branch: str
    files: dict[str, FileEntry]
    parent: str | None = None
    provenance: list[dict[str, str]] = field(default_factory=list)  # [{"repo", "commit"}]
    origin: dict[str, Any] = field(default_factory=dict)  # {"kind": ingest|step|split, ...}
    created: str = ""

    @property
    def n_files(self) -> int:
        return len(self.files)

    @property
    def n_bytes(self) -> int:
        return sum(e.size for e in self.files.values())

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repo": self.repo,
            "branch": self.branch,
            "parent": self.parent,
            "provenance": self.provenance,
            "origin": self.origin,
            "created": self.created,
            "files": {p: e.wire() for p, e in self.files.items()},
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Commit:
        return cls(
            id=data["id"],
            repo=data["repo"],
            branch=data.get("branch", DEFAULT_BRANCH),
            files={p: FileEntry.from_wire(v) for p, v in data.get("files", {}).items()},
            parent=data.get("parent"),
            provenance=list(data.get("provenance", [])),
            origin=dict(data.get("origin", {})),
            created=data.get("created", ""),
        )


class RepoStore:
    """Repos, branches and commits over one object store."""

    def __init__(self, root: Path, objects: ObjectStore) -> None:
        self.root = root
        self.repos = root / "repos"
        self.checkouts = root / "checkouts"
        self.repos.mkdir(parents=True, exist_ok=True)
        self.checkouts.mkdir(parents=True, exist_ok=True)
        self.objects = objects
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, str], Commit] = {}

    # ------------------------------------------------------------------ repos and branches

    def _repo_dir(self, repo: str) -> Path:
        if not repo or "/" in repo or repo.startswith("."):
            raise ValueError(f"bad repo name {repo!r}")
        return self.repos / repo

    def ensure_repo(self, repo: str, owner: str = "", description: str = "") -> None:
        """Create the repo if missing; `owner` (a pipeline) is what `repos_of` and delete go by."""
        meta = self._repo_dir(repo) / "repo.json"
        if not meta.exists():
            write_json_atomic(meta, {"name": repo, "owner": owner, "description": description, "created": now_iso()})

    def repos_of(self, owner: str) -> list[str]:
        found = []
        for repo in self.list_repos():
            with contextlib.suppress(OSError, ValueError):
                if json.loads((self.repos / repo / "repo.json").read_text()).get("owner") == owner:
                    found.append(repo)
        return found

    def list_repos(self, prefix: str = "") -> list[str]:
        return sorted(p.name for p in self.repos.iterdir() if p.is_dir() and p.name.startswith(prefix))

    def head(self, repo: str, branch: str = DEFAULT_BRANCH) -> str | None:
        path = self._repo_dir(repo) / "branches" / branch
        return path.read_text().strip() if path.exists() else None

    def set_branch(self, repo: str, branch: str, commit: str) -> None:
        self.get_commit(repo, commit)  # must exist
        path = self._repo_dir(repo) / "branches" / branch
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{branch}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, path)

    def delete_repo(self, repo: str) -> None:
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != repo}
        shutil.rmtree(self._repo_dir(repo), ignore_errors=True)
        target = self.checkouts / repo
        if target.exists():
            writable_tree(target)
            shutil.rmtree(target, ignore_errors=True)

    # ------------------------------------------------------------------ commits

    def get_commit(self, repo: str, commit: str) -> Commit:
        key = (repo, commit)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        path = self._repo_dir(repo) / "commits" / f"{commit}.json"
        if not commit or "/" in commit or not path.exists():
            raise KeyError(f"commit {commit!r} not found in repo {repo}")
        found = Commit.from_wire(json.loads(path.read_text()))
        with self._lock:
            self._cache[key] = found
        return found

    def list_commits(self, repo: str) -> list[Commit]:
        folder = self._repo_dir(repo) / "commits"
        if not folder.exists():
            return []
        commits = [self.get_commit(repo, p.stem) for p in folder.glob("*.json")]
        return sorted(commits, key=lambda c: c.created)

    def commit(
        self,
        repo: str,
        files: dict[str, FileEntry],
        provenance: list[dict[str, str]] | None = None,
        origin: dict[str, Any] | None = None,
        branch: str = DEFAULT_BRANCH,
        parent: str | None = None,
        check: bool = True,
    ) -> Commit:
        """A new commit of these files, or the parent itself when nothing at all changed.

        Files must already be in the object store (`check=False`: the caller just put them there).
        The branch does not move (see `set_branch`),
        so a run that fails later leaves the current outputs as they were."""
        self.ensure_repo(repo)
        provenance = provenance or []
        origin = origin or {}
        missing = [p for p, e in files.items() if not self.objects.has(e.sha256)] if check else []
        if missing:
            raise FileNotFoundError(f"repo {repo}: objects of {len(missing)} file(s) missing, e.g. {missing[0]}")
        parent = parent if parent is not None else self.head(repo, branch)
        if parent:
            previous = self.get_commit(repo, parent)
            same_origin = {k: v for k, v in previous.origin.items() if k != "job"} == {
                k: v for k, v in origin.items() if k != "job"
            }
            if previous.files == files and previous.provenance == provenance and same_origin:
                return previous
        created = Commit(uuid.uuid4().hex, repo, branch, dict(sorted(files.items())), parent, provenance,
                         origin, now_iso())
        write_json_atomic(self._repo_dir(repo) / "commits" / f"{created.id}.json", created.wire())
        with self._lock:
            self._cache[(repo, created.id)] = created
        return created

    def referenced_objects(self) -> set[str]:
        """Every sha256 some commit of some repo holds (what garbage collection keeps)."""
        found: set[str] = set()
        for repo in self.list_repos():
            for commit in self.list_commits(repo):
                found.update(e.sha256 for e in commit.files.values())
        return found

    # ------------------------------------------------------------------ checkouts

    def is_checked_out(self, repo: str, commit: str) -> bool:
        return (self.checkouts / repo / f".{commit}.complete").exists()

    def checkout(self, repo: str, commit: str) -> Path:
        """A read-only directory holding the commit's files (built once, then reused)."""
        target = self.checkouts / repo / commit
        done = target.with_name(f".{commit}.complete")  # beside, not inside: readers see only data
        if done.exists() and target.exists():
            with contextlib.suppress(OSError):
                os.utime(done)  # last use: what pruning goes by
            return target
        found = self.get_commit(repo, commit)
        with self._lock:
            if done.exists() and target.exists():
                return target
            build = target.with_name(f".{commit}.building")
            if build.exists():
                writable_tree(build)
                shutil.rmtree(build)
            build.mkdir(parents=True)
            base = str(build)
            for folder in sorted({rel.rsplit("/", 1)[0] for rel in found.files if "/" in rel}):
                os.makedirs(f"{base}/{folder}", exist_ok=True)
            for rel, entry in found.files.items():
                self.objects.link(entry.sha256, f"{base}/{rel}")
            read_only_tree(build)
            if target.exists():
                writable_tree(target)
                shutil.rmtree(target)
            os.replace(build, target)
            done.write_text(commit)
        return target


    def prune_checkouts(self, repo: str, keep: set[str], unused_for: float) -> int:
        """Remove checkouts of `repo` not in `keep` and not handed out for `unused_for` seconds
        (a reader of an old version gets it back from `checkout`, rebuilt from the objects)."""
        import time

        folder = self.checkouts / repo
        if not folder.exists():
            return 0
        removed = 0
        cutoff = time.time() - unused_for
        for done in folder.glob(".*.complete"):
            commit = done.name[1:-len(".complete")]
            if commit in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                if done.stat().st_mtime > cutoff:
                    continue
                done.unlink()
                target = folder / commit
                writable_tree(target)
                shutil.rmtree(target, ignore_errors=True)
                removed += 1
        return removed
