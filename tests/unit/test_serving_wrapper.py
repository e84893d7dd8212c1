"""CdlPredictor, the Seldon wrapper, called in process on a real (tiny, trained) package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cdl.runtime.serving import (
    LOAD_ERROR_MARK,
    CdlPredictor,
    InvalidInput,
    as_rows,
    fetch_package,
    validate_rows,
)
from tests.fixtures.serving.build import (
    CLASSES,
    NUMPY_PREDICTOR,
    PREDICTOR,
    BuiltPackage,
    build_package,
    sample,
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltPackage]:
    dest = tmp_path_factory.mktemp("wrapper-packages")
    # numpy only: torch takes seconds to import (the integration tests serve the torch predictor)
    return {"ok": build_package(dest, "toy", 1, torch_checkpoint=False),
            "broken": build_package(dest, "toy-broken", 1, broken=True, torch_checkpoint=False)}


@pytest.fixture
def loaded(packages) -> Callable[..., CdlPredictor]:
    def make(ref: str | None = None, predictor: str = NUMPY_PREDICTOR, **params) -> CdlPredictor:
        p = CdlPredictor(model_package=ref or str(packages["ok"].dir), predictor=predictor, **params)
        p.load()
        return p

    return make


def accuracy(labels: list[str], y: np.ndarray) -> float:
    return float(np.mean([CLASSES.index(label) == t for label, t in zip(labels, y, strict=True)]))


def test_predicts_with_the_trained_model(loaded) -> None:
    model = loaded()
    x, y = sample(200, seed=9)
    out = model.predict(x)  # seldon hands the wrapper a numpy array
    assert accuracy(list(out), y) > 0.9
    assert model.class_names == CLASSES
    assert model.health_status()["status"] == "ok"
    assert model.model_version == "toy-1"
    metrics = {m["key"]: m["value"] for m in model.metrics()}
    assert metrics["cdl_predicted_examples_total"] == 200


def test_environment_variables_configure_it(packages, monkeypatch) -> None:
    monkeypatch.setenv("CDL_MODEL_PACKAGE", packages["ok"].dir.as_uri())
    monkeypatch.setenv("CDL_PREDICTOR", NUMPY_PREDICTOR)
    monkeypatch.setenv("CDL_MODEL_VERSION", "toy-canary")
    model = CdlPredictor()
    meta = model.init_metadata()  # asked before load: read from the manifest
    assert meta["name"] == "toy" and meta["versions"] == ["1"] and meta["custom"]["predictor"] == NUMPY_PREDICTOR
    model.load()
    assert model.model_version == "toy-canary"
    assert list(model.predict([[3.0, 0, 0, 0]])) == ["alpha"]


def test_predictor_defaults_to_the_manifest_entrypoint(packages) -> None:
    model = CdlPredictor(model_package=str(packages["ok"].dir))
    assert model.init_metadata()["custom"]["predictor"] == PREDICTOR
    with pytest.raises(RuntimeError, match="state_dict.pth is missing"):  # torch's predictor; no torch weights
        model.load()
    assert model.predictor_ref == PREDICTOR


def test_archives_and_file_uris_are_unpacked_once(packages, tmp_path: Path, loaded) -> None:
    pkg = packages["ok"]
    first = fetch_package(pkg.uri, tmp_path)
    again = fetch_package(str(pkg.archive), tmp_path)
    assert (first / "cdl-package.json").is_file() and (first / "model" / "serve.py").is_file()
    assert fetch_package(pkg.uri, tmp_path) == first and again.parent == tmp_path
    model = loaded(pkg.uri, cache_dir=str(tmp_path))
    assert list(model.predict([[0, 0, 3.0, 0]])) == ["gamma"]
    with pytest.raises(FileNotFoundError):
        fetch_package(str(tmp_path / "missing.tar.gz"), tmp_path)
    with pytest.raises(ValueError, match="unsupported scheme"):
        fetch_package("ftp://host/x.tar.gz", tmp_path)


def test_a_package_whose_sha256_differs_is_refused(packages, tmp_path: Path, monkeypatch, capfd) -> None:
    """The SeldonDeployment names the registered package's sha256 (CDL_PACKAGE_SHA256): an archive
    replaced in the artifact store must not be loaded, its code must not even be unpacked."""
    pkg = packages["ok"]
    monkeypatch.setenv("CDL_PACKAGE_SHA256", "0" * 64)
    model = CdlPredictor(model_package=pkg.uri, predictor=NUMPY_PREDICTOR, cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        model.load()
    assert not model.ready and "sha256 mismatch" in capfd.readouterr().err
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # nothing unpacked
    monkeypatch.setenv("CDL_PACKAGE_SHA256", pkg.sha256)
    good = CdlPredictor(model_package=pkg.uri, predictor=NUMPY_PREDICTOR, cache_dir=str(tmp_path))
    good.load()
    assert list(good.predict([[0, 0, 3.0, 0]])) == ["gamma"]


@pytest.mark.parametrize(
    ("X", "message"),
    [
        ([[1.0, 2.0, 3.0]], "each row must have shape [4], got [3]"),
        ([], "holds no examples"),
        ([[1, 2, 3, 4], [1, 2]], "rows differ in shape"),
        ([[1, "x", 3, 4]], "not an array of numbers"),
        (["some text"], "row 0 is a string: this model takes numbers of shape [4]"),
        (np.array([["a", "b", "c", "d"]]), "not an array of numbers"),
        ({"other": 1}, "jsonData must hold a list"),
    ],
)
def test_wrong_inputs_are_refused_with_a_clear_message(loaded, X, message: str) -> None:
    model = loaded()
    with pytest.raises(InvalidInput) as err:
        model.predict(X)
    assert message in str(err.value)


def test_row_conversions() -> None:
    assert as_rows(np.array([["a"], ["b"]])) == ["a", "b"]
    assert as_rows(np.array(["a", "b"])) == ["a", "b"]
    assert as_rows(np.array([[1.0, 2.0]])) == [[1.0, 2.0]]
    assert as_rows("one text") == ["one text"]
    assert as_rows(b"bytes") == ["bytes"]
    assert as_rows({"instances": [[1, 2]]}) == [[1, 2]]
    assert validate_rows([["text"], ["more"]], "text", None) == ["text", "more"]
    assert validate_rows([list(range(784))], "tensor", (28, 28)) == [list(range(784))]  # flattened image
    with pytest.raises(InvalidInput, match="takes text"):
        validate_rows([[1, 2]], "text", None)
    with pytest.raises(InvalidInput, match="binData is not UTF-8 text"):  # not garbage text for a text model
        as_rows(b"\xff\xfe\x00binary")


def test_a_failing_load_names_the_reason(packages, capfd) -> None:
    model = CdlPredictor(model_package=str(packages["broken"].dir), predictor=NUMPY_PREDICTOR)
    with pytest.raises(RuntimeError, match="weights.npz is missing"):
        model.load()
    assert LOAD_ERROR_MARK in capfd.readouterr().err
    with pytest.raises(RuntimeError, match="not loaded"):
        model.health_status()


def test_an_unknown_predictor_class_fails_the_load(packages) -> None:
    model = CdlPredictor(model_package=str(packages["ok"].dir), predictor="serve:Nope")
    with pytest.raises(RuntimeError, match="Nope"):
        model.load()
    assert not model.ready and "Nope" in (model.load_error or "")


def test_no_package_configured(monkeypatch) -> None:
    monkeypatch.delenv("CDL_MODEL_PACKAGE", raising=False)
    with pytest.raises(RuntimeError, match="CDL_MODEL_PACKAGE"):
        CdlPredictor().load()
