"""Artifact stores against the real things: a directory, and moto's S3 server via the MinIO SDK.

Every behaviour test runs on both stores (parametrized `store`), since reconcilers and the
serving runtime must not care which one the operator was configured with.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from cdl.errors import TransientError
from cdl.stores.artifacts import S3Settings, StoredArtifact, file_uri_path
from cdl.stores.errors import ArtifactIntegrityError, ArtifactNotFound, InvalidArtifactKey, StoreUnavailable
from cdl.stores.opener import download_uri, open_artifact_store

pytestmark = pytest.mark.slow

MB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, str]:
    """A 20 MB file (more than one 16 MiB multipart chunk) and its sha256."""
    path = tmp_path_factory.mktemp("big") / "model.bin"
    data = os.urandom(20 * MB + 123)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_file_round_trip_keeps_its_checksum(store, big_file, tmp_path):
    path, sha = big_file
    stored = store.put_file("news/3/model.bin", path)

    assert stored == StoredArtifact(uri=store.uri_for("news/3/model.bin"), key="news/3/model.bin", sha256=sha,
                                    bytes=path.stat().st_size)
    assert stored.uri.startswith(store.base_uri + "/")
    assert store.stat("news/3/model.bin") == stored
    assert store.exists("news/3/model.bin")

    got = store.get_file("news/3/model.bin", tmp_path / "out" / "model.bin", sha256=sha)
    assert got == tmp_path / "out" / "model.bin"
    assert _sha256(got) == sha

    digest, size = hashlib.sha256(), 0
    with store.open_read("news/3/model.bin") as stream:
        while chunk := stream.read(1 * MB + 7):
            digest.update(chunk)
            size += len(chunk)
    assert (digest.hexdigest(), size) == (sha, stored.bytes)


def test_bytes_round_trip_and_overwrite(store):
    first = store.put_bytes("reports/news/1/report.json", b'{"accuracy": 0.9}')
    assert store.get_bytes("reports/news/1/report.json") == b'{"accuracy": 0.9}'
    second = store.put_bytes("reports/news/1/report.json", b'{"accuracy": 0.95}')
    assert store.get_bytes("reports/news/1/report.json") == b'{"accuracy": 0.95}'
    assert second.sha256 == hashlib.sha256(b'{"accuracy": 0.95}').hexdigest() != first.sha256
    assert store.stat("reports/news/1/report.json").sha256 == second.sha256
    assert store.list() == ["reports/news/1/report.json"]


def test_racing_writers_of_one_key_leave_a_whole_consistent_artifact(store):
    import threading

    contents = {w: (w * 5000).encode() for w in ("a", "b")}
    barrier = threading.Barrier(2)

    def write(w: str) -> None:
        barrier.wait()
        for _ in range(15):
            store.put_bytes("reports/latest.json", contents[w])

    threads = [threading.Thread(target=write, args=(w,)) for w in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    data = store.get_bytes("reports/latest.json")  # no false integrity error
    assert data in contents.values()
    assert store.stat("reports/latest.json").sha256 == hashlib.sha256(data).hexdigest()
    assert store.list() == ["reports/latest.json"]


def test_put_dir_and_get_dir_copy_a_whole_tree(store, tmp_path):
    src = tmp_path / "package"
    files = {"model.pt": b"weights" * 1000, "code/serve.py": b"class P: ...\n", "code/lib/util.py": b"x = 1\n",
             "meta/labels.json": b'["business", "tech"]'}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)

    stored = store.put_dir("packages/news/3", src)

    assert sorted(a.key for a in stored) == sorted(f"packages/news/3/{rel}" for rel in files)
    assert all(a.sha256 == hashlib.sha256(files[a.key.removeprefix("packages/news/3/")]).hexdigest() for a in stored)
    assert store.list("packages/news/3") == sorted(f"packages/news/3/{rel}" for rel in files)
    assert store.list("packages/news/3/") == store.list("packages/news/3")

    dest = store.get_dir("packages/news/3", tmp_path / "restored")
    restored = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert restored == files


def test_prefixes_name_folders_and_delete_prefix_removes_only_them(store):
    for key in ("runs/a/ck1/w.bin", "runs/a/ck1/meta.json", "runs/a/ck2/w.bin", "runs/ab/w.bin", "other.txt"):
        store.put_bytes(key, key.encode())

    assert store.list("runs/a") == ["runs/a/ck1/meta.json", "runs/a/ck1/w.bin", "runs/a/ck2/w.bin"]
    assert store.list("runs/") == ["runs/a/ck1/meta.json", "runs/a/ck1/w.bin", "runs/a/ck2/w.bin", "runs/ab/w.bin"]
    assert store.list("run") == []  # a prefix is a folder, not the start of a name
    assert store.list("nothing/here") == []

    assert store.delete_prefix("runs/a") == 3
    assert store.list() == ["other.txt", "runs/ab/w.bin"]
    assert not store.exists("runs/a/ck1/w.bin")
    assert store.delete_prefix("runs/a") == 0

    store.delete("other.txt")
    store.delete("other.txt")  # deleting what is gone is not an error
    assert store.list() == ["runs/ab/w.bin"]
    assert store.delete_prefix("") == 1
    assert store.list() == []


def _tamper(store, key: str, data: bytes, s3_server) -> None:
    """Change the stored bytes behind the store's back, leaving its recorded checksum in place."""
    if store.base_uri.startswith("file://"):
        file_uri_path(store.uri_for(key)).write_bytes(data)
        return
    import io

    from minio import Minio

    recorded = store.stat(key).sha256
    client = Minio(s3_server.endpoint.removeprefix("http://"), access_key=s3_server.access_key,
                   secret_key=s3_server.secret_key, secure=False, region=s3_server.region)
    client.put_object(store.bucket, f"{store.prefix}/{key}", io.BytesIO(data), len(data),
                      metadata={"sha256": recorded})


def test_tampered_artifact_is_refused_on_every_read(store, tmp_path, request):
    s3_server = request.getfixturevalue("s3_server") if store.base_uri.startswith("s3://") else None
    stored = store.put_bytes("models/news/1/model.pt", b"the real weights")
    _tamper(store, "models/news/1/model.pt", b"the evil weights", s3_server)

    dest = tmp_path / "dl" / "model.pt"
    with pytest.raises(ArtifactIntegrityError) as err:
        store.get_file("models/news/1/model.pt", dest, sha256=stored.sha256)
    assert stored.sha256 in str(err.value) and stored.uri in str(err.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left behind

    with pytest.raises(ArtifactIntegrityError):  # the checksum recorded at write time is checked too
        store.get_file("models/news/1/model.pt", dest)
    with pytest.raises(ArtifactIntegrityError):
        store.get_bytes("models/news/1/model.pt")
    with pytest.raises(ArtifactIntegrityError), store.open_read("models/news/1/model.pt") as stream:
        stream.read()
    with pytest.raises(ArtifactIntegrityError):
        download_uri(stored.uri, tmp_path / "dl2" / "model.pt", s3_server.settings if s3_server else None)


def test_wrong_expected_checksum_is_refused(store, tmp_path):
    store.put_bytes("a.txt", b"abc")
    with pytest.raises(ArtifactIntegrityError, match="expected sha256 0{64}"):
        store.get_file("a.txt", tmp_path / "a.txt", sha256="0" * 64)
    assert not (tmp_path / "a.txt").exists()


@pytest.mark.parametrize(("key", "why"), [
    ("../escape.txt", "'..'"),
    ("models/../../escape.txt", "'..'"),
    ("/etc/passwd", "absolute"),
    ("a//b", "empty path segments"),
    ("a/./b", "'.'"),
    ("dir\\file", "backslash"),
    ("", "non-empty"),
    ("models/", "must not end with '/'"),
    ("bad\nname", "control characters"),
    (".cdl-meta/x", "reserved"),
])
def test_unsafe_keys_are_refused_with_a_reason(store, key, why, tmp_path):
    with pytest.raises(InvalidArtifactKey, match=why):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidArtifactKey):
        store.get_bytes(key)
    with pytest.raises(InvalidArtifactKey):
        store.uri_for(key)
    assert store.list() == []
    assert not (tmp_path / "escape.txt").exists()


def test_prefix_validation(store):
    with pytest.raises(InvalidArtifactKey, match="'..'"):
        store.list("../")
    with pytest.raises(InvalidArtifactKey):
        store.delete_prefix("/")


def test_missing_artifacts(store, tmp_path):
    assert store.stat("no/such.bin") is None
    assert not store.exists("no/such.bin")
    with pytest.raises(ArtifactNotFound, match="no/such.bin"):
        store.get_bytes("no/such.bin")
    with pytest.raises(FileNotFoundError):  # ArtifactNotFound is also a FileNotFoundError
        store.get_file("no/such.bin", tmp_path / "x")
    with pytest.raises(ArtifactNotFound):
        store.open_read("no/such.bin")


def test_uri_and_key_are_inverse(store, tmp_path, request):
    s3 = request.getfixturevalue("s3_server").settings if store.base_uri.startswith("s3://") else None
    key = "reports/news classifier/3/report.md"
    stored = store.put_bytes(key, b"# report")
    assert stored.uri == store.uri_for(key)
    assert store.key_for(stored.uri) == key
    for foreign in ("s3://elsewhere/artifacts/x", "file:///somewhere/else/x", store.base_uri + "-other/x", "https://h/x"):
        with pytest.raises(ValueError, match="not in the artifact store"):
            store.key_for(foreign)

    # download_uri fetches any stored uri: a single object, or a folder of them
    assert download_uri(stored.uri, tmp_path / "one.md", s3).read_bytes() == b"# report"
    store.put_bytes("reports/news classifier/3/data.json", b"{}")
    folder = download_uri(store.uri_for("reports/news classifier/3"), tmp_path / "folder", s3)
    assert sorted(p.name for p in folder.iterdir()) == ["data.json", "report.md"]
    with pytest.raises(ArtifactNotFound):
        download_uri(store.uri_for("reports/none"), tmp_path / "none", s3)


def test_file_store_accepts_plain_paths_and_file_uris(tmp_path):
    by_path = open_artifact_store(str(tmp_path / "a"))
    by_uri = open_artifact_store((tmp_path / "a").as_uri())
    assert by_path.base_uri == by_uri.base_uri == (tmp_path / "a").as_uri()
    by_path.put_bytes("k", b"v")
    assert by_uri.get_bytes("k") == b"v"
    # checksums live beside, not among, the artifacts
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == ["k"]


def test_store_urls_and_settings_are_checked():
    with pytest.raises(ValueError, match="no S3 settings"):
        open_artifact_store("s3://bucket/prefix")
    with pytest.raises(ValueError, match="unsupported scheme"):
        open_artifact_store("gs://bucket/prefix")
    settings = S3Settings(endpoint="http://127.0.0.1:9000", access_key="AK", secret_key="very-secret", secure=False,
                          region=None)
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings)
    with pytest.raises(ValueError, match="invalid S3 bucket name"):
        open_artifact_store("s3://Bad_Bucket/x", settings)


def test_unreachable_s3_is_a_transient_error():
    closed = S3Settings(endpoint=f"127.0.0.1:{_closed_port()}", access_key="AK", secret_key="very-secret")
    store = open_artifact_store("s3://cdl-unreachable/x", closed)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        store.put_bytes("k", b"v")
    assert isinstance(err.value, TransientError)
    assert "unreachable" in str(err.value) and "very-secret" not in str(err.value)
    assert time.monotonic() - started < 10
    with pytest.raises(StoreUnavailable):
        store.stat("k")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
