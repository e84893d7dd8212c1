"""Machine-fault classification as a Determined PyTorchTrial (entrypoint `model_def:FaultTrial`).

The trial reads the DataPipeline's train output from `CDL_DATA_DIR` (CSV rows: four sensor columns
and `label`), keeps a fifth of the rows for validation (the same rows for every trial of a search:
the split's seed is the experiment's), scales the sensors by the training rows' mean and standard
deviation and trains a one-hidden-layer network. Every checkpoint carries `assets.json` (columns,
scaling, class names, hidden size) beside `state_dict.pth`.

Hyperparameters: learning_rate, hidden_size, batch_size.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch
from determined import pytorch
from torch import nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by file path: make the sibling module importable
    sys.path.insert(0, _HERE)
from faults_model import ASSETS_FILE, FaultNet, Scaler, read_table  # noqa: E402


class _WriteAssets(pytorch.PyTorchCallback):
    def __init__(self, assets: dict[str, Any]) -> None:
        self.assets = assets

    def on_checkpoint_write_end(self, checkpoint_dir: str) -> None:
        (Path(checkpoint_dir) / ASSETS_FILE).write_text(json.dumps(self.assets, indent=2))


def _experiment_seed(context: pytorch.PyTorchTrialContext) -> int:
    """The experiment's seed (the same for every trial of a search, so they validate on the same
    rows); off-platform, without an experiment config, CDL_SEED or 42."""
    try:
        seed = context.get_experiment_config().get("reproducibility", {}).get("experiment_seed")
    except ValueError:
        seed = None
    return int(seed if seed is not None else os.environ.get("CDL_SEED", "42"))


class FaultTrial(pytorch.PyTorchTrial):
    def __init__(self, context: pytorch.PyTorchTrialContext) -> None:
        self.context = context
        hp = context.get_hparams()
        torch.manual_seed(int(os.environ.get("CDL_SEED", "42")))  # weight init: this trial's seed
        table = read_table(os.environ["CDL_DATA_DIR"])
        self.class_names = sorted(set(table.labels))
        order = list(range(len(table.labels)))
        random.Random(_experiment_seed(context)).shuffle(order)
        n_val = max(1, len(order) // 5)
        val, train = order[:n_val], order[n_val:]
        scaler = Scaler.fit([table.features[i] for i in train])
        ids = torch.tensor([self.class_names.index(y) for y in table.labels])
        x = scaler(table.features)
        self.train_data = torch.utils.data.TensorDataset(x[train], ids[train])
        self.val_data = torch.utils.data.TensorDataset(x[val], ids[val])
        hidden = int(hp["hidden_size"])
        self.model = context.wrap_model(FaultNet(len(table.columns), hidden, len(self.class_names)))
        self.optimizer = context.wrap_optimizer(torch.optim.Adam(self.model.parameters(),
                                                                 lr=float(hp["learning_rate"])))
        self.assets = {"columns": table.columns, "mean": scaler.mean, "std": scaler.std,
                       "class_names": self.class_names, "hidden_size": hidden}

    def build_training_data_loader(self) -> pytorch.DataLoader:
        return pytorch.DataLoader(self.train_data, batch_size=int(self.context.get_hparams()["batch_size"]),
                                  shuffle=True)

    def build_validation_data_loader(self) -> pytorch.DataLoader:
        return pytorch.DataLoader(self.val_data, batch_size=len(self.val_data))

    def build_callbacks(self) -> dict[str, pytorch.PyTorchCallback]:
        return {"assets": _WriteAssets(self.assets)}

    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.context.backward(loss)
        self.context.step_optimizer(self.optimizer)
        return {"loss": loss}

    def evaluate_batch(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        logits = self.model(x)
        return {"validation_loss": nn.functional.cross_entropy(logits, y).item(),
                "validation_accuracy": (logits.argmax(dim=1) == y).float().mean().item()}
