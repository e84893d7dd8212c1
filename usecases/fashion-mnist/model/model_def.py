"""Fashion-MNIST classification with TensorFlow Keras (the paper's second use case), as a Core API
function entrypoint: `model_def:train`.

The platform calls `train(core_context, hparams)` inside `det.core.init()` (the local training
engine does; on a Determined cluster a two-line script does the same). The images come from the
IDX files under `CDL_DATA_DIR` (the DataPipeline's train output, `train-images-idx3-ubyte` +
`train-labels-idx1-ubyte`, gzipped or not); pixels are scaled to 0..1 and a stratified 20 %
validation set is split off with the experiment's seed. The model is Flatten, Dense(hidden_size,
relu), Dense(10), fitted with Determined's Keras callback, which reports `val_accuracy` and
`val_loss`, checkpoints every epoch, resumes from the trial's latest checkpoint and stops when
the platform asks (early stopping, ASHA). Every checkpoint also holds `model.keras` (the whole
model, what serving loads), `class_names.json` and `model_config.json`.

Hyperparameters: hidden_size, learning_rate, batch_size; optional validation_fraction (0.2),
split_seed (default: the experiment's seed), epochs (only when the platform gives no length).

Run it without the platform:
    python model_def.py --data DIR --epochs 5 --storage /tmp/fmnist-ckpt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # loaded by file path (tests, tools): make the sibling module importable
    sys.path.insert(0, _HERE)

from fashion_model import (  # noqa: E402
    CLASS_NAMES,
    MODEL_FILE,
    build_model,
    load_idx_dataset,
    normalize,
    stratified_split,
    write_assets,
)

DEFAULT_HPARAMS: dict[str, Any] = {"hidden_size": 128, "learning_rate": 0.001, "batch_size": 64}


def _experiment_seed() -> int | None:
    """The experiment's seed (the same for every trial): from the local engine's trial config,
    else from the Determined cluster's experiment config."""
    config_file = os.environ.get("CDL_TRIAL_CONFIG")
    if config_file and Path(config_file).is_file():
        conf = json.loads(Path(config_file).read_text()).get("exp_conf") or {}
        seed = conf.get("reproducibility", {}).get("experiment_seed")
        if seed is not None:
            return int(seed)
    try:
        import determined as det

        info = det.get_cluster_info()
        if info is not None and info.task_type == "TRIAL":
            return int(info.trial._config.get("reproducibility", {}).get("experiment_seed"))
    except (ImportError, TypeError, AttributeError):
        pass
    return None


def _split_seed(hparams: dict[str, Any]) -> int:
    if "split_seed" in hparams:
        return int(hparams["split_seed"])
    seed = _experiment_seed()
    return seed if seed is not None else int(os.environ.get("CDL_SEED", "42"))


def _callback(core_context: Any, config: dict[str, Any]) -> Any:
    """Determined's Keras callback (Keras 3 compatible, resuming from this trial's latest
    checkpoint) that also saves the whole model and the assets into each checkpoint."""
    from cdl.runtime.keras_compat import callback_class
    from cdl.runtime.trial import info

    base: Any = callback_class()

    class FashionCallback(base):  # type: ignore[misc, valid-type]
        def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
            # Keras 3 hands validation logs over unprefixed (`accuracy`); report them under
            # Keras' fit-history names too (`val_accuracy`), which searcher configs use.
            if logs:
                logs = {**logs, **{f"val_{k}": v for k, v in logs.items() if not k.startswith("val_")}}
            super().on_test_end(logs)

        def save_model(self, model: Any, path: str, distributed: Any) -> None:
            super().save_model(model, path, distributed)
            if distributed.rank == 0:
                ckpt = Path(path).parent
                model.save(ckpt / MODEL_FILE)
                write_assets(ckpt, list(CLASS_NAMES), config)

    found = info()
    return FashionCallback(core_context, checkpoint=found.latest_checkpoint, continue_id=f"trial-{found.trial_id}")


def _epochs(hparams: dict[str, Any], steps_per_epoch: int, epochs: int | None) -> int:
    """Epochs to train to: the platform's max_length (batches rounded up to whole epochs),
    else the `epochs` argument or hyperparameter, else 5."""
    from cdl.runtime.trial import max_length

    length = max_length()
    if length is not None:
        return length.value if length.unit == "epochs" else max(1, math.ceil(length.value / steps_per_epoch))
    return int(epochs or hparams.get("epochs", 5))


def train(core_context: Any, hparams: dict[str, Any], epochs: int | None = None) -> None:
    from cdl.runtime.trial import data_dir

    hp = {**DEFAULT_HPARAMS, **hparams}
    keras.utils.set_random_seed(int(os.environ.get("CDL_SEED", "0")))  # weight init: this trial's seed
    images, labels = load_idx_dataset(data_dir(), prefer=("train",))
    train_idx, val_idx = stratified_split(labels, float(hp.get("validation_fraction", 0.2)), _split_seed(hp))
    x = normalize(images)
    print(f"Fashion-MNIST: {len(train_idx)} training and {len(val_idx)} validation images", flush=True)

    config = {"hidden_size": int(hp["hidden_size"]), "num_classes": len(CLASS_NAMES), "input_scale": "x/255"}
    model = build_model(config["hidden_size"], config["num_classes"])
    model.compile(
        optimizer=keras.optimizers.Adam(float(hp["learning_rate"])),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    batch_size = int(hp.get("global_batch_size", hp["batch_size"]))
    model.fit(
        x[train_idx], labels[train_idx],
        validation_data=(x[val_idx], labels[val_idx]),
        batch_size=batch_size,
        epochs=_epochs(hp, math.ceil(len(train_idx) / batch_size), epochs),
        verbose=0,
        callbacks=[_callback(core_context, config)],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the Fashion-MNIST classifier off-cluster.")
    parser.add_argument("--data", required=True, help="folder with train-images/labels IDX files")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--storage", required=True, help="where checkpoints are written")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hparams", default="{}", help="JSON object overriding the defaults")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ["CDL_DATA_DIR"] = str(Path(args.data).resolve())
    os.environ["CDL_SEED"] = str(args.seed)
    storage = Path(args.storage).resolve()
    os.chdir(_HERE)  # Determined copies the working folder into each checkpoint's code/
    from determined import core

    before = set((storage / "determined").glob("*")) if (storage / "determined").is_dir() else set()
    with core.init(checkpoint_storage=str(storage / "determined")) as core_context:
        train(core_context, json.loads(args.hparams), epochs=args.epochs)
    new = [p for p in (storage / "determined").glob("*") if p not in before and (p / MODEL_FILE).is_file()]
    print(max(new, key=lambda p: p.stat().st_mtime) if new else "no checkpoint written")


if __name__ == "__main__":
    main()
