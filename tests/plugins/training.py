"""Fixtures for the local training engine: toy model code, specs, requests and an engine whose
trial processes are stopped (by process group) when the test ends."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import DataRef, ResourceKey, TrainingRequest
from cdl.engines.training.local import DriverSettings, LocalTrainingEngine
from cdl.engines.training.local.state import load
from cdl.engines.training.local.trial_process import TrialProcess

TRAINING_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "training"


@pytest.fixture
def training_linreg_dir() -> Path:
    """A PyTorchTrial on y = X·w* (+ a failing trial, a memory hog and a Core API function)."""
    return TRAINING_FIXTURES / "linreg"


@pytest.fixture
def training_keras_dir() -> Path:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")
    return TRAINING_FIXTURES / "keras_mlp"


def training_spec_dict(**overrides: Any) -> dict[str, Any]:
    """An Experiment spec on the toy problem; top-level keys and `searcher` entries override."""
    searcher = {
        "name": "single",
        "metric": "validation_loss",
        "smallerIsBetter": True,
        "maxLength": {"epochs": 2},
        **overrides.pop("searcher", {}),
    }
    return {
        "model": {"path": "model", "entrypoint": "model_def:LinRegTrial"},
        "hyperparameters": {"lr": 0.1},
        "searcher": searcher,
        "seed": 7,
        **overrides,
    }


@pytest.fixture
def training_spec() -> Callable[..., ExperimentSpec]:
    def make(**overrides: Any) -> ExperimentSpec:
        return ExperimentSpec.model_validate(training_spec_dict(**overrides))

    return make


@pytest.fixture
def training_request(training_linreg_dir: Path) -> Callable[..., TrainingRequest]:
    def make(
        spec: ExperimentSpec,
        name: str = "toy",
        model_dir: Path | None = None,
        data: DataRef | None = None,
        generation: int = 1,
        run: int = 1,
    ) -> TrainingRequest:
        return TrainingRequest(
            key=ResourceKey("ml", name, uid=f"uid-{name}"),
            spec=spec,
            generation=generation,
            run=run,
            model_dir=model_dir or training_linreg_dir,
            data=data,
        )

    return make


TRAINING_TEST_SETTINGS = DriverSettings(poll_seconds=0.1, stop_grace_seconds=20.0, persist_seconds=0.5)


@pytest.fixture
def training_engine_factory(tmp_path: Path) -> Iterator[Callable[..., LocalTrainingEngine]]:
    """New engines on one root (a restart is a second engine on the same root); every engine's
    trial process groups are stopped at teardown."""
    made: list[LocalTrainingEngine] = []

    def make(root: Path | None = None, **kwargs: Any) -> LocalTrainingEngine:
        kwargs.setdefault("max_parallel", 2)
        kwargs.setdefault("settings", TRAINING_TEST_SETTINGS)
        engine = LocalTrainingEngine(root or tmp_path / "training", **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in reversed(made):
        engine.close(kill_trials=True)
    # A test that failed between a simulated crash and the resume leaves processes behind.
    for run_json in (tmp_path / "training").glob("runs/*/run.json"):
        for trial in load(run_json).trials:
            proc = TrialProcess.adopt(trial.process) if trial.process else None
            if proc is not None:
                proc.kill_now()


@pytest.fixture
def training_engine(training_engine_factory: Callable[..., LocalTrainingEngine]) -> LocalTrainingEngine:
    return training_engine_factory()
