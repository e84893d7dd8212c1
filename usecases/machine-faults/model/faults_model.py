"""What training, evaluation and serving share: reading the CSV, scaling the sensors, the network
and rebuilding it from a checkpoint.

A checkpoint holds Determined's `state_dict.pth` and `assets.json` (sensor columns, their means
and standard deviations over the training rows, class names, hidden size), so evaluation and
serving need nothing else.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "state_dict.pth"
ASSETS_FILE = "assets.json"
LABEL = "label"


@dataclass
class Table:
    columns: list[str]
    features: list[list[float]]
    labels: list[str]


def read_table(data_dir: str | Path) -> Table:
    """Every `*.csv` under `data_dir` (the DataPipeline output keeps the source's file names)."""
    files = sorted(Path(data_dir).rglob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no .csv file under {data_dir}")
    columns: list[str] = []
    features: list[list[float]] = []
    labels: list[str] = []
    for path in files:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            names = [c for c in (reader.fieldnames or []) if c != LABEL]
            if columns and names != columns:
                raise ValueError(f"{path}: columns {names} differ from {columns}")
            columns = names
            for row in reader:
                features.append([float(row[c]) for c in columns])
                labels.append(row[LABEL])
    return Table(columns, features, labels)


class FaultNet(nn.Module):
    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass
class Scaler:
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, rows: list[list[float]]) -> Scaler:
        x = torch.tensor(rows, dtype=torch.float32)
        return cls(x.mean(0).tolist(), x.std(0).clamp_min(1e-6).tolist())

    def __call__(self, rows: list[list[float]]) -> torch.Tensor:
        x = torch.tensor(rows, dtype=torch.float32)
        return (x - torch.tensor(self.mean)) / torch.tensor(self.std)


@dataclass
class LoadedModel:
    net: FaultNet
    scaler: Scaler
    columns: list[str]
    class_names: list[str]

    def predict(self, rows: list[list[float]]) -> list[str]:
        with torch.no_grad():
            ids = self.net(self.scaler(rows)).argmax(dim=1).tolist()
        return [self.class_names[i] for i in ids]


def checkpoint_dir(model_dir: str | Path) -> Path:
    """The checkpoint inside an unpacked ModelVersion package (`checkpoint/`), or a bare one."""
    base = Path(model_dir)
    for cand in (base / "checkpoint", base):
        if (cand / STATE_FILE).is_file():
            return cand
    raise FileNotFoundError(f"no {STATE_FILE} in {base} or {base / 'checkpoint'}")


def load_model(model_dir: str | Path) -> LoadedModel:
    ckpt = checkpoint_dir(model_dir)
    assets: dict[str, Any] = json.loads((ckpt / ASSETS_FILE).read_text())
    net = FaultNet(len(assets["columns"]), int(assets["hidden_size"]), len(assets["class_names"]))
    # Determined's checkpoint also holds optimizer state, which the weights-only unpickler refuses;
    # it is our own trial's output.
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
    net.load_state_dict(state["models_state_dict"][0])
    net.eval()
    return LoadedModel(net, Scaler(assets["mean"], assets["std"]), assets["columns"], assets["class_names"])
