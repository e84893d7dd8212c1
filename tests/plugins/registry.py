"""Fixtures for the model registry, evaluation and compression tests.

A real (tiny) PyTorch classifier of Gaussian blobs, trained here for a few hundred full-batch
steps and saved in Determined's checkpoint layout exactly as `PyTorchTrial` writes it
(`state_dict.pth` = {"models_state_dict": [...], "optimizers_state_dict": [...],
"lr_schedulers_state_dict": [], "callbacks": {}, "rng_state": {...}}, `metadata.json`,
`load_data.json`, the trial's assets and the `code/` copy), plus an untrained checkpoint of the
same network for the gate that must fail. The model code lives in tests/fixtures/registry.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cdl.engines.base import CheckpointInfo, RegisteredModel, RegistrationRequest, ResourceKey
from cdl.engines.registry.local import LocalRegistryEngine

REGISTRY_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "registry"
CLASSES = ("circle", "square", "triangle")
FEATURES, HIDDEN = 16, 64
HPARAMS = {"learning_rate": 0.01, "hidden": HIDDEN}


@dataclass(frozen=True)
class RegistryData:
    train: Path
    test: Path
    examples: int


@dataclass(frozen=True)
class RegistryCheckpoints:
    good: Path
    untrained: Path


def _write_split(root: Path, rows: Any, labels: list[str]) -> None:
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        path = root / label / f"{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(",".join(f"{v:.6f}" for v in row))


@pytest.fixture(scope="session")
def registry_data(tmp_path_factory: pytest.TempPathFactory) -> RegistryData:
    """Three well-separated blobs in 16 dimensions: 30 training and 10 test examples per class,
    one example per file under its label folder (the DataPipeline `labelsFrom: directory` shape)."""
    import numpy as np

    rng = np.random.default_rng(7)
    centers = rng.normal(0.0, 1.0, size=(len(CLASSES), FEATURES))
    root = tmp_path_factory.mktemp("registry-data")
    for split, per_class in (("train", 30), ("test", 10)):
        rows, labels = [], []
        for c, name in enumerate(CLASSES):
            rows += list(centers[c] + rng.normal(0.0, 1.0, size=(per_class, FEATURES)))
            labels += [name] * per_class
        _write_split(root / split, rows, labels)
    return RegistryData(train=root / "train", test=root / "test", examples=10 * len(CLASSES))


def _model_code(dest: Path) -> Path:
    shutil.copytree(REGISTRY_FIXTURES / "blobnet", dest)
    return dest


def _determined_checkpoint(dest: Path, net: Any, optimizer: Any, steps: int, code_dir: Path) -> Path:
    """Write the files `PyTorchTrial._save` and the checkpoint context write, same names and keys."""
    import numpy as np
    import torch

    dest.mkdir(parents=True)
    torch.save(
        {
            "models_state_dict": [net.state_dict()],
            "optimizers_state_dict": [optimizer.state_dict()],
            "lr_schedulers_state_dict": [],
            "callbacks": {},
            "rng_state": {
                "cpu_rng_state": torch.random.get_rng_state(),
                "np_rng_state": np.random.get_state(),
                "random_rng_state": random.getstate(),
            },
        },
        dest / "state_dict.pth",
    )
    (dest / "metadata.json").write_text(json.dumps({
        "determined_version": importlib.metadata.version("determined"),
        "steps_completed": steps,
        "framework": f"torch-{torch.__version__}",
        "format": "pickle",
    }, indent=2))
    (dest / "load_data.json").write_text(json.dumps({
        "trial_type": "PyTorchTrial", "experiment_config": None, "hparams": HPARAMS,
        "trial_cls_spec": "model_def:BlobTrial", "is_trainer": True,
    }))
    (dest / "model_config.json").write_text(json.dumps({"features": FEATURES, "hidden": HIDDEN,
                                                        "classes": len(CLASSES)}))
    (dest / "class_names.json").write_text(json.dumps(list(CLASSES)))
    shutil.copytree(code_dir, dest / "code")
    return dest


@pytest.fixture(scope="session")
def registry_checkpoints(tmp_path_factory: pytest.TempPathFactory, registry_data: RegistryData) -> RegistryCheckpoints:
    """A trained checkpoint (test accuracy near 1) and an untrained one (about chance)."""
    import sys

    import torch

    code = _model_code(tmp_path_factory.mktemp("registry-code") / "blobnet")
    sys.path.insert(0, str(code))
    try:
        from blobnet import BlobNet, read_split
    finally:
        sys.path.remove(str(code))
        sys.modules.pop("blobnet", None)
    root = tmp_path_factory.mktemp("registry-checkpoints")
    torch.manual_seed(0)
    x, labels = read_split(registry_data.train)
    target = torch.tensor([CLASSES.index(y) for y in labels])
    net = BlobNet(FEATURES, HIDDEN, len(CLASSES))
    optimizer = torch.optim.Adam(net.parameters(), lr=HPARAMS["learning_rate"])
    inputs = torch.as_tensor(x)
    for _ in range(150):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(inputs), target)
        loss.backward()
        optimizer.step()
    good = _determined_checkpoint(root / "good-uuid", net, optimizer, 150, code)
    torch.manual_seed(1)
    fresh = BlobNet(FEATURES, HIDDEN, len(CLASSES))
    # Shrink the last layer so every input gets nearly the same logits: a model at chance level.
    with torch.no_grad():
        fresh.layers[-1].weight.mul_(0.01)
    untrained = _determined_checkpoint(root / "untrained-uuid", fresh, torch.optim.Adam(fresh.parameters()), 0, code)
    return RegistryCheckpoints(good=good, untrained=untrained)


@pytest.fixture
def registry_model_dir(tmp_path: Path) -> Path:
    """The model code, plus what packaging must leave out: caches, scratch files (.detignore)
    and *.tmp (.gitignore)."""
    code = _model_code(tmp_path / "model-code")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "blobnet.cpython-311.pyc").write_bytes(b"\x00cache")
    (code / "scratch").mkdir()
    (code / "scratch" / "big.bin").write_bytes(b"\x01" * 4096)
    (code / "notes.tmp").write_text("draft")
    return code


@pytest.fixture
def registry_store(file_store: Any) -> Any:
    """The artifact store the registry writes to (the filesystem store)."""
    return file_store


@pytest.fixture
def registry_engine(tmp_path: Path, registry_store: Any) -> LocalRegistryEngine:
    return LocalRegistryEngine(tmp_path / "registry", registry_store)


@pytest.fixture
def registry_request(registry_model_dir: Path, registry_checkpoints: RegistryCheckpoints) -> Callable[..., RegistrationRequest]:
    """`make(version=1, checkpoint="good"|"untrained"|Path|CheckpointInfo, **fields)` -> a RegistrationRequest."""

    def make(version: int = 1, checkpoint: str | Path | CheckpointInfo = "good", model: str = "blobs",
             **fields: Any) -> RegistrationRequest:
        if isinstance(checkpoint, CheckpointInfo):
            info, path = checkpoint, Path(checkpoint.uuid)
        else:
            path = Path(checkpoint) if isinstance(checkpoint, Path) else getattr(registry_checkpoints, checkpoint)
            info = CheckpointInfo(uuid=path.name, uri=path.as_uri(), path=str(path))
        metadata = {
            "lineage": {"experiment": "blob-search", "run": 1, "trial": "3", "checkpoint": path.name,
                        "data": {"repo": "blobs-train", "commit": "c0ffee"},
                        "code": {"gitCommit": "abc123", "image": None}},
            "experiment": {"model": {"path": "model", "entrypoint": "model_def:BlobTrial"},
                           "hyperparameters": {"learning_rate": {"type": "log", "minval": -3, "maxval": -1},
                                               "hidden": HIDDEN},
                           "searcher": {"name": "random", "metric": "validation_accuracy", "maxTrials": 4},
                           "seed": 42},
            "created": "2026-01-02T03:04:05Z",
        }
        values: dict[str, Any] = {
            "key": ResourceKey("ml", f"{model}-{version}"),
            "model_name": model,
            "version": version,
            "checkpoint": info,
            "model_dir": registry_model_dir,
            "hparams": dict(HPARAMS),
            "metadata": metadata,
        }
        values.update(fields)
        return RegistrationRequest(**values)

    return make


@pytest.fixture
def registry_registered(
    registry_engine: LocalRegistryEngine, registry_request: Callable[..., RegistrationRequest]
) -> Callable[..., RegisteredModel]:
    """`register(version=1, checkpoint="good", **fields)` through the engine."""

    def register(version: int = 1, checkpoint: str | Path = "good", **fields: Any) -> RegisteredModel:
        return registry_engine.register(registry_request(version, checkpoint, **fields))

    return register
