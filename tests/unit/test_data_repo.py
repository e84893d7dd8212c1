"""Repos, branches, immutable content-addressed commits, provenance, checkouts, datum globs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdl.engines.data.local.repo import RepoStore
from cdl.engines.data.local.steps import Datum, code_fingerprint, glob_datums
from cdl.engines.data.objects import ObjectStore


@pytest.fixture
def store(tmp_path: Path) -> RepoStore:
    return RepoStore(tmp_path, ObjectStore(tmp_path / "objects"))


def test_a_file_is_stored_once_however_many_commits_hold_it(store: RepoStore, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_text("same bytes")
    first = store.objects.put_file(src)
    (tmp_path / "b.txt").write_text("same bytes")
    second = store.objects.put_file(tmp_path / "b.txt")
    assert first == second and store.objects.count() == 1
    c1 = store.commit("r", {"x/a.txt": first})
    c2 = store.commit("r", {"x/a.txt": first, "y/b.txt": second})
    c3 = store.commit("other", {"a.txt": first})
    assert len({c1.id, c2.id, c3.id}) == 3
    assert store.objects.count() == 1
    assert store.objects.created == 1


def test_commits_are_immutable_and_branches_move_only_when_told(store: RepoStore) -> None:
    a = store.objects.put_bytes(b"one")
    b = store.objects.put_bytes(b"two")
    c1 = store.commit("r", {"f": a})
    assert store.head("r") is None  # a commit alone does not move the branch
    store.set_branch("r", "master", c1.id)
    c2 = store.commit("r", {"f": b})
    assert c2.parent == c1.id
    store.set_branch("r", "master", c2.id)
    assert store.head("r") == c2.id
    assert store.get_commit("r", c1.id).files["f"] == a  # the old version is still there


def test_an_identical_commit_is_the_parent_itself(store: RepoStore) -> None:
    entry = store.objects.put_bytes(b"one")
    c1 = store.commit("r", {"f": entry}, provenance=[{"repo": "raw", "commit": "c0"}], origin={"kind": "step", "job": "1"})
    store.set_branch("r", "master", c1.id)
    again = store.commit("r", {"f": entry}, provenance=[{"repo": "raw", "commit": "c0"}],
                         origin={"kind": "step", "job": "2"})
    assert again.id == c1.id
    moved = store.commit("r", {"f": entry}, provenance=[{"repo": "raw", "commit": "c9"}], origin={"kind": "step"})
    assert moved.id != c1.id and moved.provenance == [{"repo": "raw", "commit": "c9"}]


def test_a_commit_of_missing_objects_is_refused(store: RepoStore) -> None:
    from cdl.engines.data.objects import FileEntry

    with pytest.raises(FileNotFoundError, match="missing"):
        store.commit("r", {"f": FileEntry("0" * 64, 3)})


def test_checkout_is_a_read_only_directory_of_the_commits_files(store: RepoStore) -> None:
    commit = store.commit("r", {"sport/1.txt": store.objects.put_bytes(b"goal"),
                                "tech/2.txt": store.objects.put_bytes(b"chip")})
    path = store.checkout("r", commit.id)
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files == ["sport/1.txt", "tech/2.txt"]  # nothing but the data
    assert (path / "sport/1.txt").read_bytes() == b"goal"
    assert oct((path / "sport").stat().st_mode & 0o777) == "0o555"
    assert oct((path / "sport/1.txt").stat().st_mode & 0o777) == "0o444"
    assert store.checkout("r", commit.id) == path  # built once


def test_delete_repo_removes_its_checkouts(store: RepoStore) -> None:
    commit = store.commit("r", {"a": store.objects.put_bytes(b"a")})
    path = store.checkout("r", commit.id)
    store.delete_repo("r")
    assert not path.exists() and "r" not in store.list_repos()


def entries(store: RepoStore, paths: list[str]) -> dict:
    return {p: store.objects.put_bytes(p.encode()) for p in paths}


@pytest.mark.parametrize(("glob", "datums"), [
    ("/", ["/"]),
    ("/*", ["/README.TXT", "/business", "/sport"]),
    ("/*/*", ["/business/001.txt", "/business/002.txt", "/sport/001.txt"]),
    ("/sport/*", ["/sport/001.txt"]),
    ("/*/*.txt", ["/business/001.txt", "/business/002.txt", "/sport/001.txt"]),
    ("/**.TXT", ["/README.TXT"]),
])
def test_glob_datums_follow_pachyderm(store: RepoStore, glob: str, datums: list[str]) -> None:
    files = entries(store, ["README.TXT", "business/001.txt", "business/002.txt", "sport/001.txt"])
    found = glob_datums(files, glob)
    assert [d.path for d in found] == datums


def test_datum_hash_changes_with_content_not_with_other_datums(store: RepoStore) -> None:
    files = entries(store, ["a/1.txt", "b/1.txt"])
    before = {d.path: d.hash for d in glob_datums(files, "/*")}
    files["b/1.txt"] = store.objects.put_bytes(b"changed")
    after = {d.path: d.hash for d in glob_datums(files, "/*")}
    assert before["/a"] == after["/a"] and before["/b"] != after["/b"]
    assert Datum("/x", {}).hash != Datum("/y", {}).hash


def test_code_fingerprint_follows_the_steps_package(tmp_path: Path) -> None:
    (tmp_path / "mysteps").mkdir()
    (tmp_path / "mysteps" / "__init__.py").write_text("")
    (tmp_path / "mysteps" / "run.py").write_text("print(1)")
    command = ["python", "-m", "mysteps.run"]
    first = code_fingerprint(command, tmp_path)
    assert first and code_fingerprint(command, tmp_path) == first
    (tmp_path / "mysteps" / "run.py").write_text("print(2)")
    assert code_fingerprint(command, tmp_path) != first
    assert code_fingerprint(["sh", "-c", "true"], tmp_path) == ""


def test_unused_old_checkouts_are_pruned_and_rebuilt_on_demand(store: RepoStore) -> None:
    import os

    old = store.commit("r", {"a": store.objects.put_bytes(b"old")})
    new = store.commit("r", {"a": store.objects.put_bytes(b"new")}, parent=old.id)
    old_path, new_path = store.checkout("r", old.id), store.checkout("r", new.id)
    assert store.prune_checkouts("r", {new.id}, unused_for=3600) == 0  # used a moment ago
    marker = old_path.with_name(f".{old.id}.complete")
    os.utime(marker, (1, 1))
    os.utime(new_path.with_name(f".{new.id}.complete"), (1, 1))
    assert store.prune_checkouts("r", {new.id}, unused_for=3600) == 1
    assert not old_path.exists() and new_path.exists()
    assert (store.checkout("r", old.id) / "a").read_bytes() == b"old"
