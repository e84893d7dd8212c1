"""BBC news classification as a Determined PyTorchTrial (the paper's first use case).

The trial reads the articles from `CDL_DATA_DIR` (`<label>/<file>.txt`, as the DataPipeline's
train output holds them), splits off its own stratified validation set by `CDL_SEED`, builds a
Porter-stemmed count vocabulary from the training part only, and trains five linear layers with
LayerNorm and dropout. Every checkpoint carries `vocab.json`, `class_names.json` and
`model_config.json` beside `state_dict.pth`, so evaluation and serving need nothing else.

Hyperparameters: learning_rate, hidden_size, dropout, vocab_size, batch_size (or Determined's
global_batch_size); optional weight_decay (0), validation_fraction (0.2), min_df (2), split_seed
(default: the experiment's seed, the same for every trial of a search).

Run it without the platform (the same code path the local training engine uses):
    python model_def.py --data /path/to/bbc --epochs 5 --storage /tmp/ckpts
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import determined as det
import torch
from determined import pytorch
from torch import nn

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by file path (tests, tools): make the sibling module importable
    sys.path.insert(0, _HERE)
from news_model import (  # noqa: E402
    ASSETS_KEY,
    ModelConfig,
    TextVectorizer,
    assets_dict,
    features,
    load_corpus,
    stratified_split,
    write_assets,
)

logger = logging.getLogger("bbc-news")

DEFAULT_HPARAMS: dict[str, Any] = {
    "learning_rate": 0.001,
    "hidden_size": 256,
    "dropout": 0.3,
    "vocab_size": 10000,
    "batch_size": 32,
}


class _Mean(pytorch.MetricReducer):
    """An exact mean over every validation example, across batches and slots."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, total: float, count: int) -> None:
        self.total += total
        self.count += count

    def per_slot_reduce(self) -> tuple[float, int]:
        return self.total, self.count

    def cross_slot_reduce(self, per_slot_metrics: list[tuple[float, int]]) -> float:
        total = sum(t for t, _ in per_slot_metrics)
        count = sum(c for _, c in per_slot_metrics)
        return total / count if count else 0.0


class _SaveAssets(pytorch.PyTorchCallback):
    """Puts the vocabulary, class names and network shape into every checkpoint: as JSON files
    next to state_dict.pth, and inside state_dict.pth too so a checkpoint is self-contained."""

    def __init__(self, assets: dict[str, Any]) -> None:
        self.assets = assets

    def on_checkpoint_save_start(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ASSETS_KEY] = self.assets

    def on_checkpoint_write_end(self, checkpoint_dir: str) -> None:
        write_assets(checkpoint_dir, self.assets)


def _hparam(hparams: dict[str, Any], name: str) -> Any:
    return hparams[name] if name in hparams else DEFAULT_HPARAMS[name]


def _split_seed(context: pytorch.PyTorchTrialContext) -> int:
    """The validation split's seed: the same for every trial of an experiment, so a search
    compares configurations on the same articles. `split_seed` hyperparameter, else the
    experiment's seed (Determined's reproducibility.experiment_seed, which the local engine
    also sets), else CDL_SEED, else 42."""
    hp = context.get_hparams()
    if "split_seed" in hp:
        return int(hp["split_seed"])
    try:
        seed = context.get_experiment_config().get("reproducibility", {}).get("experiment_seed")
    except ValueError:  # off-cluster without an experiment config
        seed = None
    if seed is not None:
        return int(seed)
    return int(os.environ.get("CDL_SEED", "42"))


class NewsTrial(pytorch.PyTorchTrial):
    def __init__(self, context: pytorch.PyTorchTrialContext) -> None:
        self.context = context
        hp = context.get_hparams()
        if os.environ.get("CDL_SEED"):
            torch.manual_seed(int(os.environ["CDL_SEED"]))  # weight init: this trial's seed

        data_dir = os.environ.get("CDL_DATA_DIR") or hp.get("data_dir")
        if not data_dir:
            raise RuntimeError("NewsTrial: set CDL_DATA_DIR to a folder of <label>/<file>.txt articles")
        corpus = load_corpus(data_dir)
        self.class_names = corpus.class_names
        label_ids = {name: i for i, name in enumerate(self.class_names)}
        train_idx, val_idx = stratified_split(
            corpus.labels, float(hp.get("validation_fraction", 0.2)), _split_seed(context)
        )

        self.vectorizer = TextVectorizer()
        tokens = [self.vectorizer.tokens(t) for t in corpus.texts]
        self.vectorizer.fit((tokens[i] for i in train_idx), int(_hparam(hp, "vocab_size")), int(hp.get("min_df", 2)))
        y = torch.tensor([label_ids[lab] for lab in corpus.labels], dtype=torch.long)

        def dataset(idx: list[int]) -> torch.utils.data.TensorDataset:
            x = features(self.vectorizer.counts([tokens[i] for i in idx]))
            return torch.utils.data.TensorDataset(x, y[idx])

        self.train_data = dataset(train_idx)
        self.val_data = dataset(val_idx)
        logger.info(
            "BBC news: %d training and %d validation articles, %d classes, vocabulary %d",
            len(train_idx), len(val_idx), len(self.class_names), len(self.vectorizer.vocab),
        )

        self.config = ModelConfig(
            input_dim=len(self.vectorizer.vocab),
            hidden_size=int(_hparam(hp, "hidden_size")),
            num_classes=len(self.class_names),
            dropout=float(_hparam(hp, "dropout")),
        )
        self.model = context.wrap_model(self.config.build())
        self.optimizer = context.wrap_optimizer(
            torch.optim.AdamW(
                self.model.parameters(),
                lr=float(_hparam(hp, "learning_rate")),
                weight_decay=float(hp.get("weight_decay", 0.0)),
            )
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.val_loss = context.wrap_reducer(_Mean(), name="validation_loss", for_training=False)
        self.val_accuracy = context.wrap_reducer(_Mean(), name="validation_accuracy", for_training=False)
        self.assets = assets_dict(self.vectorizer, self.class_names, self.config)

    def _batch_size(self) -> int:
        hp = self.context.get_hparams()
        global_bs = int(hp.get("global_batch_size", _hparam(hp, "batch_size")))
        return max(1, global_bs // self.context.distributed.get_size())

    def build_training_data_loader(self) -> pytorch.DataLoader:
        return pytorch.DataLoader(self.train_data, batch_size=self._batch_size(), shuffle=True, drop_last=False)

    def build_validation_data_loader(self) -> pytorch.DataLoader:
        return pytorch.DataLoader(self.val_data, batch_size=256, shuffle=False)

    def build_callbacks(self) -> dict[str, pytorch.PyTorchCallback]:
        return {"cdl_assets": _SaveAssets(self.assets)}

    def train_batch(self, batch: Any, epoch_idx: int, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        self.context.backward(loss)
        self.context.step_optimizer(self.optimizer)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        return {"loss": loss, "train_accuracy": accuracy}

    def evaluate_batch(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        correct = (logits.argmax(dim=1) == y).sum()
        self.val_loss.update(float(loss), len(y))
        self.val_accuracy.update(float(correct), len(y))
        return {}


def train_locally(
    data_dir: str | Path,
    hparams: dict[str, Any],
    epochs: int,
    storage: str | Path,
    seed: int = 42,
) -> Path:
    """Train off-cluster with det.pytorch (no master) and return the final checkpoint folder.

    Checkpoints land under `storage/determined/<uuid>/`. Run from the model folder: Determined
    copies the working directory into each checkpoint's `code/` (filtered by .detignore)."""
    os.environ["CDL_DATA_DIR"] = str(data_dir)
    os.environ["CDL_SEED"] = str(seed)
    os.environ["XDG_DATA_HOME"] = str(storage)
    before = _checkpoints(Path(storage))
    with pytorch.init(hparams={**DEFAULT_HPARAMS, **hparams}, enable_tensorboard_logging=False) as ctx:
        trial = NewsTrial(ctx)
        trainer = pytorch.Trainer(trial, ctx)
        trainer.fit(
            max_length=pytorch.Epoch(epochs),
            validation_period=pytorch.Epoch(1),
            checkpoint_period=pytorch.Epoch(epochs),
        )
    new = [p for p in _checkpoints(Path(storage)) if p not in before]
    if not new:
        raise RuntimeError(f"training wrote no checkpoint under {storage}")
    return max(new, key=lambda p: json.loads((p / "metadata.json").read_text()).get("steps_completed", 0))


def _checkpoints(storage: Path) -> list[Path]:
    root = storage / "determined"
    return [p for p in root.iterdir() if (p / "state_dict.pth").is_file()] if root.is_dir() else []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the BBC news classifier off-cluster.")
    parser.add_argument("--data", required=True, help="folder of <label>/<file>.txt articles")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--storage", required=True, help="where checkpoints are written")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hparams", default="{}", help="JSON object overriding the defaults")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=det.LOG_FORMAT)
    os.chdir(Path(__file__).resolve().parent)
    ckpt = train_locally(args.data, json.loads(args.hparams), args.epochs, args.storage, args.seed)
    print(ckpt)


if __name__ == "__main__":
    main()
