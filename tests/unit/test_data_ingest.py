"""Ingestion of local sources: directories, archives (zip, tar.gz), IDX files, fingerprints."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from cdl.api.datapipeline import Source
from cdl.engines.data.ingest import Ingestor, is_missing, resolve_file_uri
from cdl.engines.data.objects import ObjectStore
from cdl.errors import PermanentEngineError


@pytest.fixture
def ingestor(tmp_path: Path) -> Ingestor:
    return Ingestor(tmp_path / "state", ObjectStore(tmp_path / "objects"))


def source(uri: str, fmt: str = "files") -> Source:
    return Source.model_validate({"uri": uri, "format": fmt})


def read(ingestor: Ingestor, files: dict, rel: str) -> bytes:
    return ingestor.objects.path(files[rel].sha256).read_bytes()


def test_directory_keeps_paths_and_leaves_hidden_files_out(ingestor: Ingestor, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sport").mkdir(parents=True)
    (src / "sport" / "1.txt").write_text("goal")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref")
    (src / "sport" / ".DS_Store").write_bytes(b"\0")
    result = ingestor.ingest(source(src.as_uri()), {}, None)
    assert set(result.files) == {"sport/1.txt"}
    assert read(ingestor, result.files, "sport/1.txt") == b"goal"


def test_relative_file_uris_resolve_against_the_base_dir(tmp_path: Path) -> None:
    assert resolve_file_uri("file:data/bbc", tmp_path) == tmp_path / "data/bbc"
    assert resolve_file_uri("file:///abs/dir", tmp_path) == Path("/abs/dir")


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_archive_is_unpacked_without_its_wrapper_folder(ingestor: Ingestor, tmp_path: Path) -> None:
    archive = tmp_path / "bbc-fulltext.zip"
    archive.write_bytes(zip_bytes({"bbc/README.TXT": b"readme", "bbc/sport/001.txt": b"goal",
                                   "__MACOSX/bbc/._001.txt": b"junk"}))
    result = ingestor.ingest(source(archive.as_uri()), {}, None)
    assert set(result.files) == {"README.TXT", "sport/001.txt"}


def test_tar_gz_archive(ingestor: Ingestor, tmp_path: Path) -> None:
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in {"a/1.txt": b"one", "b/2.txt": b"two"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = ingestor.ingest(source(archive.as_uri()), {}, None)
    assert {k: read(ingestor, result.files, k) for k in result.files} == {"a/1.txt": b"one", "b/2.txt": b"two"}


def test_a_truncated_archive_is_a_clear_permanent_error(ingestor: Ingestor, tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    archive.write_bytes(zip_bytes({"a/1.txt": b"x" * 5000})[:-40])
    with pytest.raises(PermanentEngineError, match="not a valid zip archive"):
        ingestor.ingest(source(archive.as_uri()), {}, None)


def test_archive_members_may_not_leave_the_extraction_folder(ingestor: Ingestor, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    archive.write_bytes(zip_bytes({"../../etc/evil.txt": b"x"}))
    with pytest.raises(PermanentEngineError, match="would leave"):
        ingestor.ingest(source(archive.as_uri()), {}, None)


def test_missing_and_empty_sources_fail_with_the_uri(ingestor: Ingestor, tmp_path: Path) -> None:
    with pytest.raises(PermanentEngineError, match="no such file or directory"):
        ingestor.ingest(source((tmp_path / "nope").as_uri()), {}, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PermanentEngineError, match="holds no files"):
        ingestor.ingest(source((tmp_path / "empty").as_uri()), {}, None)
    assert is_missing(ingestor.fingerprint(source((tmp_path / "nope").as_uri()), {}, None))


def test_gzipped_idx_files_are_stored_uncompressed(ingestor: Ingestor, tmp_path: Path) -> None:
    src = tmp_path / "fashion"
    src.mkdir()
    (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
    result = ingestor.ingest(source(src.as_uri(), "idx"), {}, None)
    assert read(ingestor, result.files, "train-labels-idx1-ubyte") == b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"


def test_fingerprint_follows_content_not_timestamps(ingestor: Ingestor, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("one")
    first = ingestor.fingerprint(source(src.as_uri()), {}, None)
    os.utime(src / "a.txt", (1, 1))
    assert ingestor.fingerprint(source(src.as_uri()), {}, None) == first
    (src / "b.txt").write_text("two")
    second = ingestor.fingerprint(source(src.as_uri()), {}, None)
    assert second != first
    (src / "b.txt").write_text("TWO")
    assert ingestor.fingerprint(source(src.as_uri()), {}, None) not in (first, second)


def test_reingesting_unchanged_files_stores_no_new_objects(ingestor: Ingestor, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"{i}.txt").write_text(f"file {i}")
    assert ingestor.ingest(source(src.as_uri()), {}, None).new_objects == 20
    (src / "copy.txt").write_text("file 3")  # same bytes as 3.txt
    again = ingestor.ingest(source(src.as_uri()), {}, None)
    assert again.new_objects == 0 and len(again.files) == 21
