"""Model packages in S3 (moto's server): the wrapper fetches one itself, as it does in a cluster
pod, and the local engine fetches one through the artifact store, checking its sha256."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdl.engines.base import ResourceKey, ServedModel, ServingRequest
from cdl.engines.serving.local import LocalServingEngine
from cdl.errors import PermanentEngineError
from cdl.runtime.serving import CdlPredictor
from tests.fixtures.serving.build import NUMPY_PREDICTOR, build_package


@pytest.fixture
def stored(tmp_path: Path, s3_store):
    pkg = build_package(tmp_path / "build", "toy", 1, torch_checkpoint=False)
    return pkg, s3_store.put_file("models/toy/1/package.tar.gz", pkg.archive)


def test_the_wrapper_downloads_a_package_from_s3(stored, s3_server, tmp_path: Path, monkeypatch) -> None:
    pkg, artifact = stored
    assert artifact.uri.startswith("s3://") and artifact.sha256 == pkg.sha256
    monkeypatch.setenv("CDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    model = CdlPredictor(model_package=artifact.uri, predictor=NUMPY_PREDICTOR, cache_dir=str(tmp_path / "cache"))
    model.load()
    assert list(model.predict([[0, 3.0, 0, 0]])) == ["beta"]
    assert model.package_dir is not None and (model.package_dir / "cdl-package.json").is_file()


def test_a_missing_s3_package_fails_the_load_with_its_uri(s3_server, s3_store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CDL_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    s3_store.put_bytes("placeholder", b"x")  # the bucket exists, the object does not
    uri = s3_store.uri_for("models/none.tar.gz")
    model = CdlPredictor(model_package=uri, predictor=NUMPY_PREDICTOR, cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="404"):
        model.load()


def test_the_engine_fetches_through_the_artifact_store(stored, s3_store, tmp_path: Path) -> None:
    pkg, artifact = stored
    engine = LocalServingEngine(tmp_path / "serving", artifacts=s3_store, venv_dir=tmp_path / "no-venv",
                                supervise=False)
    key = ResourceKey("ns", "s3-model")
    try:
        engine.apply(ServingRequest(key, 1, [ServedModel("toy-1", artifact.uri, artifact.sha256, NUMPY_PREDICTOR)]))
        (model,) = engine._deployments[key.slug].state.models
        package_dir = Path(model["package_dir"])
        assert package_dir.parent == tmp_path / "serving" / "packages"
        assert (package_dir / "checkpoint" / "weights.npz").is_file()

        other = ResourceKey("ns", "tampered")
        with pytest.raises(PermanentEngineError, match="toy-2"):
            engine.apply(ServingRequest(other, 1, [ServedModel("toy-2", artifact.uri, "0" * 64, NUMPY_PREDICTOR)]))
    finally:
        engine.close(stop_servers=True)
