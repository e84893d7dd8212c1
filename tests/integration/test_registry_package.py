"""Model Registry (local engine): what a package holds, that it is reproducible, that it runs on
its own requirements, stages and deletion."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdl.engines.base import CheckpointInfo, RegisteredModel, RegistrationRequest
from cdl.engines.registry.local import LocalRegistryEngine
from cdl.engines.registry.packaging import IgnoreRules, pin_requirements, requirements_site
from cdl.errors import PermanentEngineError
from cdl.runtime.package import FORMAT, PackageError, load_package, unpack

# A fresh interpreter that sees the standard library, one site directory and the package: no
# PYTHONPATH, no user or system site-packages, not this virtual environment.
PREDICT = """
import json, site, sys
site_dir, package, predictor, rows = sys.argv[1:5]
site.addsitedir(site_dir)
from cdl.runtime.package import import_from_package, load_package, prepare_process
prepare_process(load_package(package))
p = import_from_package(package, predictor)()
p.load(package)
print(json.dumps({"predictions": p.predict(json.loads(rows)), "path": sys.path}))
"""


def members(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        return tar.getnames()


def test_register_packages_code_checkpoint_requirements_and_manifest(
    registry_registered: Callable[..., RegisteredModel], registry_store: Any, tmp_path: Path
) -> None:
    registered = registry_registered(1)
    assert registered.format == FORMAT == "cdl-package/v1+tar.gz"
    assert registered.registry == {"engine": "local", "id": "blobs/1", "url": registered.artifact_uri}
    assert registry_store.exists("models/blobs/1/package.tar.gz")
    stat = registry_store.stat("models/blobs/1/package.tar.gz")
    assert (stat.sha256, stat.bytes) == (registered.sha256, registered.bytes)

    archive = registry_store.get_file("models/blobs/1/package.tar.gz", tmp_path / "p.tar.gz")
    names = members(archive)
    assert {"model/blobnet.py", "model/evaluate.py", "model/serve.py", "model/requirements.txt",
            "checkpoint/state_dict.pth", "checkpoint/metadata.json", "checkpoint/class_names.json",
            "requirements.txt", "cdl-package.json"} <= set(names)
    assert names == sorted(names)
    # Caches, .detignore'd scratch, .gitignore'd drafts and Determined's code/ copy stay out.
    assert not [n for n in names if "__pycache__" in n or n.startswith(("model/scratch", "checkpoint/code"))
                or n.endswith(".tmp")]

    info = load_package(unpack(archive, tmp_path / "unpacked"))
    assert info.verify() == []
    assert (info.name, info.version, info.framework) == ("blobs", 1, "pytorch")
    assert info.framework_version == importlib.metadata.version("torch")
    assert info.entrypoints == {"evaluate": "evaluate:evaluate", "predictor": "serve:BlobPredictor",
                                "trial": "model_def:BlobTrial"}
    assert info.hparams == {"learning_rate": 0.01, "hidden": 64}
    assert info.lineage["experiment"] == "blob-search" and info.lineage["data"]["commit"] == "c0ffee"
    assert info.created == "2026-01-02T03:04:05Z"
    assert info.raw["checkpoint"]["determined"]["steps_completed"] == 150
    # The checkpoint's code/ copy is the same code as model/: its hash says so.
    assert info.raw["checkpoint"]["codeSha256"] == info.raw["codeSha256"]
    assert info.requirements() == [f"torch=={importlib.metadata.version('torch')}",
                                   f"numpy=={importlib.metadata.version('numpy')}"]
    assert info.class_names() == ["circle", "square", "triangle"]


def test_same_inputs_give_the_same_sha256(
    registry_registered: Callable[..., RegisteredModel], registry_request: Callable[..., RegistrationRequest],
    registry_engine: LocalRegistryEngine, registry_store: Any, tmp_path: Path,
) -> None:
    first = registry_registered(1)
    again = registry_registered(1)  # a restarted operator registering the same version again
    assert (again.sha256, again.artifact_uri) == (first.sha256, first.artifact_uri)
    other = LocalRegistryEngine(tmp_path / "elsewhere", registry_store).register(registry_request(1))
    assert other.sha256 == first.sha256 and other.bytes == first.bytes
    registry_engine.delete("blobs", 1)
    assert registry_registered(1).sha256 == first.sha256
    assert registry_registered(2).sha256 != first.sha256  # the version is in the manifest


def test_a_version_is_immutable(registry_registered: Callable[..., RegisteredModel]) -> None:
    registry_registered(1)
    with pytest.raises(PermanentEngineError, match="blobs version 1 is already registered with a different package"):
        registry_registered(1, "untrained")


def test_checkpoint_fetched_from_s3_gives_the_same_package(
    s3_store: Any, registry_checkpoints: Any, registry_request: Callable[..., RegistrationRequest], tmp_path: Path,
) -> None:
    engine = LocalRegistryEngine(tmp_path / "registry", s3_store)
    local = engine.register(registry_request(1))
    s3_store.put_dir("checkpoints/good-uuid", registry_checkpoints.good)
    uri = s3_store.uri_for("checkpoints/good-uuid")
    assert uri.startswith("s3://")
    other = LocalRegistryEngine(tmp_path / "other-registry", s3_store)
    fetched = other.register(registry_request(1, checkpoint=CheckpointInfo(uuid="good-uuid", uri=uri)))
    a, b = load_package(Path(local.package_dir)), load_package(Path(fetched.package_dir))
    assert b.verify() == [] and a.files == b.files  # every file the same, byte for byte
    assert b.raw["checkpoint"]["uri"] == uri  # the manifest records where the checkpoint came from
    assert {**a.raw, "checkpoint": None} == {**b.raw, "checkpoint": None}


def test_stages_are_recorded_and_delete_removes_everything(
    registry_registered: Callable[..., RegisteredModel], registry_engine: LocalRegistryEngine, registry_store: Any,
) -> None:
    one = registry_registered(1)
    registry_registered(2)
    assert registry_engine.stages("blobs") == {1: "candidate", 2: "candidate"}
    registry_engine.set_stage("blobs", 1, "production")
    registry_engine.set_stage("blobs", 2, "staging")
    assert registry_engine.stages("blobs") == {1: "production", 2: "staging"}
    history = registry_engine.get("blobs", 1)["stageHistory"]
    assert [h["stage"] for h in history] == ["candidate", "production"]
    with pytest.raises(PermanentEngineError, match="unknown stage 'live'"):
        registry_engine.set_stage("blobs", 1, "live")
    with pytest.raises(PermanentEngineError, match="blobs version 7 is not registered"):
        registry_engine.set_stage("blobs", 7, "staging")

    registry_engine.delete("blobs", 1)
    assert not registry_store.exists("models/blobs/1/package.tar.gz")
    assert not Path(one.package_dir).exists()
    assert registry_engine.stages("blobs") == {2: "staging"}
    registry_engine.delete("blobs", 1)  # deleting again is fine


@pytest.mark.slow
def test_package_runs_in_a_fresh_interpreter_with_only_its_requirements(
    registry_registered: Callable[..., RegisteredModel], registry_store: Any, registry_data: Any, tmp_path: Path,
) -> None:
    registered = registry_registered(1)
    package = unpack(registry_store.get_file("models/blobs/1/package.tar.gz", tmp_path / "p.tar.gz"), tmp_path / "pkg")
    site = requirements_site(load_package(package).requirements(), tmp_path / "site")
    rows = [[float(v) for v in p.read_text().split(",")] for p in sorted(registry_data.test.glob("*/*.txt"))][::10]
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PREDICT, str(site), str(package), "serve:BlobPredictor", json.dumps(rows)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, start_new_session=True,
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert len(body["predictions"]) == 3 and set(body["predictions"]) <= {"circle", "square", "triangle"}
    assert not [p for p in body["path"] if "site-packages" in p]  # nothing from this environment
    assert registered.sha256


@pytest.mark.slow
def test_a_requirement_missing_from_requirements_txt_is_caught_in_isolation(
    registry_engine: LocalRegistryEngine, registry_request: Callable[..., RegistrationRequest],
    registry_model_dir: Path, tmp_path: Path,
) -> None:
    code = registry_model_dir
    source = (code / "blobnet.py").read_text()
    (code / "blobnet.py").write_text(source.replace("import json\n", "import json\n\nimport yaml  # forgotten in requirements.txt\n", 1))
    registered = registry_engine.register(registry_request(1))
    package = Path(registered.package_dir)
    site = requirements_site(load_package(package).requirements(), tmp_path / "site")
    row = json.dumps([[0.0] * 16])
    argv = [sys.executable, "-I", "-S", "-c", PREDICT, str(site), str(package), "serve:BlobPredictor", row]
    isolated = subprocess.run(argv, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert isolated.returncode != 0
    assert "No module named 'yaml'" in isolated.stderr
    # The same package runs where PyYAML happens to be installed: only isolation shows the gap.
    everything = subprocess.run([sys.executable, "-c", PREDICT.replace("site.addsitedir(site_dir)", "pass"),
                                 str(site), str(package), "serve:BlobPredictor", row],
                                capture_output=True, text=True, timeout=120, start_new_session=True)
    assert everything.returncode == 0, everything.stderr


def test_requirements_are_inferred_from_imports_without_requirements_txt(registry_model_dir: Path) -> None:
    (registry_model_dir / "requirements.txt").unlink()
    (registry_model_dir / "extra.py").write_text("import json\nimport yaml\nfrom blobnet import load\n")
    lines, notes = pin_requirements(registry_model_dir, framework="pytorch")
    assert lines == sorted(lines, key=str.lower)
    assert f"numpy=={importlib.metadata.version('numpy')}" in lines
    assert f"torch=={importlib.metadata.version('torch')}" in lines
    assert f"PyYAML=={importlib.metadata.version('PyYAML')}" in lines
    assert not [x for x in lines if x.startswith(("json", "blobnet"))]
    assert any("inferred" in n for n in notes)


def test_pins_prefer_the_versions_the_training_recorded(registry_model_dir: Path) -> None:
    (registry_model_dir / "requirements.txt").write_text("torch\nnumpy>=1.26\nscipy==1.0.0 ; python_version < '3'\n"
                                                         "not-installed-pkg>=2\n--index-url https://x\n")
    lines, notes = pin_requirements(registry_model_dir, known={"torch": "2.13.0"})
    assert lines[0] == "torch==2.13.0"
    assert lines[1] == f"numpy=={importlib.metadata.version('numpy')}"
    assert lines[2] == "scipy==1.0.0 ; python_version < '3'"
    assert lines[3] == "not-installed-pkg>=2"
    assert any("not-installed-pkg: not installed" in n for n in notes)
    assert any("--index-url" in n for n in notes)


def test_ignore_rules_follow_gitignore() -> None:
    rules = IgnoreRules(["__pycache__/", "*.log", "/build", "data/**/*.bin", "!keep.log", "docs/"])
    assert rules.ignored("__pycache__", True) and rules.ignored("pkg/__pycache__", True)
    assert not rules.ignored("__pycache__", False)  # a file of that name is not a folder
    assert rules.ignored("x.log", False) and rules.ignored("a/b/x.log", False)
    assert not rules.ignored("keep.log", False)
    assert rules.ignored("build", True) and not rules.ignored("src/build", True)
    assert rules.ignored("data/a/b/c.bin", False) and rules.ignored("data/c.bin", False)
    assert not rules.ignored("other/c.bin", False)


def test_unpack_refuses_what_is_not_a_package(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("a")
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "x" / "a.txt", arcname="a.txt")
    with pytest.raises(PackageError, match="has no cdl-package.json"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "x")


def test_concurrent_unpacks_of_one_archive_leave_one_whole_package(
    registry_registered: Callable[..., RegisteredModel], registry_store: Any, tmp_path: Path,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    registry_registered(1)
    archive = registry_store.get_file("models/blobs/1/package.tar.gz", tmp_path / "p.tar.gz")
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _: unpack(archive, tmp_path / "pkg"), range(8)))
    assert done == [tmp_path / "pkg"] * 8
    assert load_package(tmp_path / "pkg").verify() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "model-code", "p.tar.gz", "pkg", "registry"]
