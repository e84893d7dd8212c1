"""Code bundles: model code reaches a cluster pinned by content, never from the operator's disk."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cdl.cli.main import app
from cdl.engines.training.code_bundle import BundleError, build, unpack
from cdl.stores.opener import open_artifact_store
from tests.integration.test_operator_core import dpl, exp, mv
from tests.unit.test_reconcile_chain import world  # noqa: F401 - the fixture


def model_dir(root: Path) -> Path:
    code = root / "model"
    (code / "data").mkdir(parents=True)
    (code / "__pycache__").mkdir()
    (code / "model_def.py").write_text("class Trial:\n    pass\n")
    (code / "evaluate.py").write_text("def evaluate(model_dir, data_dir):\n    return {}\n")
    (code / "data" / "big.csv").write_text("x\n" * 1000)
    (code / "__pycache__" / "model_def.cpython-311.pyc").write_bytes(b"\0")
    (code / ".detignore").write_text("data/\n")
    return code


def test_a_bundle_is_the_code_minus_detignore_and_the_same_bytes_every_time(tmp_path: Path) -> None:
    code = model_dir(tmp_path)
    first = build(code, tmp_path / "a.tar.gz")
    os.utime(code / "model_def.py", (1, 1))  # a checkout at another time: same code, same bundle
    second = build(code, tmp_path / "b.tar.gz")
    assert first.sha256 == second.sha256 and first.files == 3
    with tarfile.open(first.archive) as tar:
        assert tar.getnames() == [".detignore", "evaluate.py", "model_def.py"]
    (code / "model_def.py").write_text("class Trial:\n    lr = 2\n")
    assert build(code, tmp_path / "c.tar.gz").sha256 != first.sha256


def test_a_bundle_whose_bytes_differ_is_refused(tmp_path: Path) -> None:
    bundle = build(model_dir(tmp_path), tmp_path / "a.tar.gz")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        unpack(bundle.archive, "0" * 64, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert (unpack(bundle.archive, bundle.sha256, tmp_path / "out") / "model_def.py").is_file()


def test_cdl_push_uploads_the_bundle_and_fills_the_manifest(tmp_path: Path, monkeypatch) -> None:
    code = model_dir(tmp_path)
    manifest = tmp_path / "experiment.yaml"
    manifest.write_text(yaml.safe_dump(exp()))
    store_url = (tmp_path / "store").as_uri()
    monkeypatch.setenv("CI_COMMIT_SHA", "9c1e" * 10)
    monkeypatch.setenv("CI_PROJECT_URL", "https://gitlab.example.com/team/news")
    result = CliRunner().invoke(app, ["push", str(code), "--artifacts", store_url, "-f", str(manifest),
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    filled = yaml.safe_load((tmp_path / "out" / "experiment.yaml").read_text())
    bundle = filled["spec"]["model"]["bundle"]
    assert filled["spec"]["model"]["git"] == {"commit": "9c1e" * 10, "url": "https://gitlab.example.com/team/news"}
    assert bundle["uri"] == f"{store_url}/code/{bundle['sha256']}.tar.gz"
    assert open_artifact_store(store_url).stat(f"code/{bundle['sha256']}.tar.gz").sha256 == bundle["sha256"]
    plain = CliRunner().invoke(app, ["push", str(code), "--artifacts", store_url])
    assert json.loads(plain.stdout.strip().splitlines()[-1])["bundle"] == bundle


def test_the_operator_trains_and_registers_the_bundle_not_its_own_disk(world, tmp_path: Path) -> None:  # noqa: F811
    """On a cluster the operator's working directory holds no checkout: spec.model.path does not
    resolve there, the bundle does; lineage records the bundle and the commit."""
    cluster, ctx, data, train, reg, srv = world
    store = open_artifact_store((tmp_path / "store").as_uri())
    bundle = build(model_dir(tmp_path), tmp_path / "b.tar.gz")
    stored = store.put_file(bundle.key, bundle.archive)
    body = exp()
    body["spec"]["model"] = {"path": "no/such/dir/in/the/pod", "entrypoint": "model_def:Trial",
                             "bundle": {"uri": stored.uri, "sha256": bundle.sha256},
                             "git": {"url": "https://gitlab.example.com/team/news", "commit": "ab12" * 10}}
    for b in (dpl(), body, mv()):
        cluster.add(b)
    for _ in range(3):
        for kind, name in (("DataPipeline", "news"), ("Experiment", "train"), ("ModelVersion", "clf-v1")):
            cluster.reconcile(ctx, kind, name)
    assert cluster.get("Experiment", "ml", "train")["status"]["phase"] == "Completed"
    submitted = train.requests[0].model_dir
    assert sorted(p.name for p in submitted.iterdir()) == [".detignore", "evaluate.py", "model_def.py"]
    code = cluster.get("ModelVersion", "ml", "clf-v1")["status"]["lineage"]["code"]
    assert code["bundleSha256"] == bundle.sha256 and code["bundleUri"] == stored.uri
    assert code["gitCommit"] == "ab12" * 10 and code["gitUrl"] == "https://gitlab.example.com/team/news"


def test_a_tampered_bundle_fails_the_experiment_naming_the_field(world, tmp_path: Path) -> None:  # noqa: F811
    cluster, ctx, data, train, *_ = world
    store = open_artifact_store((tmp_path / "store").as_uri())
    bundle = build(model_dir(tmp_path), tmp_path / "b.tar.gz")
    stored = store.put_file(bundle.key, bundle.archive)
    body = exp()
    body["spec"]["model"] = {"entrypoint": "model_def:Trial", "bundle": {"uri": stored.uri, "sha256": "1" * 64}}
    cluster.add(dpl())
    cluster.add(body)
    for _ in range(3):
        cluster.reconcile(ctx, "DataPipeline", "news")
    result, outcome = cluster.reconcile(ctx, "Experiment", "train")
    assert outcome == "failed" and "spec.model.bundle" in result.status["message"]
    assert train.requests == []
