"""`cdl.runtime.data` against a real S3 protocol server (moto): a trial or an evaluation Job
copies an `s3://` data version into a directory, and writes its result back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cdl.runtime import data


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    import boto3

    for name, value in (("CDL_S3_ENDPOINT", s3_server.endpoint), ("AWS_ACCESS_KEY_ID", s3_server.access_key),
                        ("AWS_SECRET_ACCESS_KEY", s3_server.secret_key), ("AWS_REGION", s3_server.region)):
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=s3_server.region)
    client.create_bucket(Bucket="cdl-data")
    return client


def test_an_s3_prefix_becomes_the_trials_data_dir(s3_env: Any, tmp_path: Path, monkeypatch) -> None:
    for key, body in (("news/c1/business/001.txt", b"shares rose"), ("news/c1/sport/002.txt", b"a late goal"),
                      ("news/c2/sport/003.txt", b"another version")):
        s3_env.put_object(Bucket="cdl-data", Key=key, Body=body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDL_DATA_DIR", raising=False)
    monkeypatch.setenv("CDL_DATA_URI", "s3://cdl-data/news/c1")
    monkeypatch.setenv("CDL_DATA_COMMIT", "c1")
    found = data.ensure_data_dir()
    assert found == tmp_path / ".cdl-data" / "c1"
    files = sorted(p.relative_to(found).as_posix() for p in found.rglob("*") if p.is_file())
    assert files == ["business/001.txt", "sport/002.txt"]  # the c2 version is not mixed in
    assert (found / "business" / "001.txt").read_text() == "shares rose"
    assert data.materialise("s3://cdl-data/news/c1", commit="c1") == found  # copied once
    with pytest.raises(data.DataUnavailable, match="no objects"):
        data.materialise("s3://cdl-data/news/missing/", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-copied left behind


def test_a_result_is_written_back_to_s3(s3_env: Any, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    out.write_text('{"evaluation": {}}')
    data.upload(out, "s3://cdl-data/evaluations/job-1/result.json")
    body = s3_env.get_object(Bucket="cdl-data", Key="evaluations/job-1/result.json")["Body"].read()
    assert body == b'{"evaluation": {}}'
    with pytest.raises(data.DataUnavailable, match="use file:// or s3://"):
        data.upload(out, "http://example.com/x")
