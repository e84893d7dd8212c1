"""Automatic model metadata in ModelKB's spirit: what was trained, with what, extracted without
the user writing any of it down (framework and version, parameter counts, a layer summary, the
versions of the packages the trial imported)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import sys
from pathlib import Path
from typing import Any

MAX_LAYERS = 64  # a summary, not a dump: deep models list their first layers and a count

# Packages worth recording whenever they are installed; requirements.txt adds the model's own.
KNOWN_PACKAGES = ("torch", "determined", "numpy", "tensorflow", "tensorflow-cpu", "keras", "scikit-learn")


def _torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _keras_model(model: Any) -> bool:
    return hasattr(model, "count_params") and hasattr(model, "layers")


def describe_model(model: Any) -> dict[str, Any]:
    """Framework, version, parameter counts and a layer summary of a torch or Keras model."""
    if _torch_module(model):
        import torch

        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        inner = getattr(model, "module", model)  # DistributedDataParallel wraps the user's module
        layers = []
        for name, module in inner.named_modules():
            if name == "" or any(True for _ in module.children()):
                continue  # leaves only: the layers that hold parameters or do the work
            layers.append(
                {
                    "name": name,
                    "type": type(module).__name__,
                    "params": sum(p.numel() for p in module.parameters(recurse=False)),
                }
            )
        if not layers:  # the model is a single layer
            layers.append({"name": type(inner).__name__, "type": type(inner).__name__, "params": params})
        return {
            "framework": "pytorch",
            "framework_version": torch.__version__,
            "model_class": type(inner).__name__,
            "parameters": params,
            "trainable_parameters": trainable,
            "layer_count": len(layers),
            "layers": layers[:MAX_LAYERS],
        }
    if _keras_model(model):
        try:
            import keras

            version = keras.__version__
        except ImportError:  # pragma: no cover - tf.keras without standalone keras
            version = ""
        layers = []
        for layer in model.layers:
            try:
                count = int(layer.count_params())
            except ValueError:  # an unbuilt layer
                count = 0
            layers.append({"name": layer.name, "type": type(layer).__name__, "params": count})
        try:
            total = int(model.count_params())
        except ValueError:
            total = sum(item["params"] for item in layers)
        trainable = sum(int(w.numpy().size) for w in getattr(model, "trainable_weights", []))
        extra: dict[str, Any] = {}
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None:
            extra["optimizer"] = type(optimizer).__name__
            with_lr = getattr(optimizer, "learning_rate", None)
            try:
                extra["optimizer_settings"] = {"learning_rate": float(with_lr)} if with_lr is not None else {}
            except (TypeError, ValueError):
                pass
        loss = getattr(model, "loss", None)
        if loss is not None:
            extra["loss"] = loss if isinstance(loss, str) else getattr(loss, "__name__", type(loss).__name__)
        for key, attr in (("input_shape", "inputs"), ("output_shape", "outputs")):
            tensors = getattr(model, attr, None) or []
            with contextlib.suppress(Exception):
                if tensors:
                    extra[key] = [None if d is None else int(d) for d in tensors[0].shape]
        for item, layer in zip(layers, model.layers, strict=False):
            with contextlib.suppress(Exception):
                item["output_shape"] = [None if d is None else int(d) for d in layer.output.shape]
        return {**extra,
            "framework": "keras",
            "framework_version": version,
            "model_class": type(model).__name__,
            "parameters": total,
            "trainable_parameters": trainable,
            "layer_count": len(layers),
            "layers": layers[:MAX_LAYERS],
        }
    return {"framework": "unknown", "model_class": type(model).__name__}


def describe_optimizer(optimizer: Any) -> dict[str, Any]:
    """The optimizer's class and its first parameter group's settings (lr, momentum, betas ...)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # wrappers that hold the real optimizer
    out: dict[str, Any] = {"optimizer": type(inner).__name__}
    groups = getattr(inner, "param_groups", None)
    if groups:
        settings = {k: v for k, v in groups[0].items()
                    if k != "params" and isinstance(v, int | float | str | bool | tuple | list | type(None))}
        out["optimizer_settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    return out


def find_losses(*holders: Any) -> list[str]:
    """Class names of the torch loss modules held as attributes of the given objects (a trial,
    a model): how a PyTorchTrial usually keeps its criterion."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    found: list[str] = []
    for holder in holders:
        values = list(vars(holder).values()) if hasattr(holder, "__dict__") else []
        if isinstance(holder, torch.nn.Module):
            values += list(holder.modules())
        for value in values:
            if isinstance(value, torch.nn.modules.loss._Loss) and type(value).__name__ not in found:
                found.append(type(value).__name__)
    return found


def _shape(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return [int(d) for d in shape]
    if isinstance(value, list | tuple):
        return [_shape(v) for v in value][:8]
    if isinstance(value, dict):
        return {str(k): _shape(v) for k, v in list(value.items())[:8]}
    return None


class ShapeWatcher:
    """Records the input and output shapes of a torch model and of each leaf layer on the first
    forward pass, then removes its hooks and calls `done(shapes)` once."""

    def __init__(self, model: Any, done: Any) -> None:
        self.done = done
        self.layers: dict[str, Any] = {}
        self.handles: list[Any] = []
        inner = getattr(model, "module", model)
        for name, module in inner.named_modules():
            if name and not any(True for _ in module.children()):
                self.handles.append(module.register_forward_hook(self._layer(name)))
        self.handles.append(inner.register_forward_hook(self._model))

    def _layer(self, name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            self.layers.setdefault(name, _shape(output))
        return hook

    def _model(self, module: Any, inputs: Any, output: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        shapes = {"input_shape": _shape(inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else inputs),
                  "output_shape": _shape(output), "layer_output_shapes": self.layers}
        try:
            self.done(shapes)
        except Exception:  # noqa: BLE001, S110 - metadata must never break training
            pass


def with_shapes(description: dict[str, Any], shapes: dict[str, Any]) -> dict[str, Any]:
    """A model description with the shapes a forward pass showed (per layer too)."""
    out = {**description, "input_shape": shapes.get("input_shape"), "output_shape": shapes.get("output_shape")}
    per_layer = shapes.get("layer_output_shapes") or {}
    layers = description.get("layers", [])
    if not per_layer and len(layers) == 1:  # the model is a single layer: its output is the layer's
        per_layer = {layers[0]["name"]: shapes.get("output_shape")}
    out["layers"] = [{**layer, "output_shape": per_layer.get(layer["name"])} for layer in layers]
    return out


DATA_TYPES = {
    "image": (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"),
    "text": (".txt", ".md", ".json", ".jsonl", ".html"),
    "audio": (".wav", ".mp3", ".flac", ".ogg"),
    "tabular": (".csv", ".tsv", ".parquet", ".npz", ".npy"),
}


def describe_data(data_dir: str | Path | None, *, max_files: int = 200_000) -> dict[str, Any]:
    """What the bound data commit holds: its data type, example count and examples per label
    (label folders, or the integer labels `y`/`labels` of an .npz). Empty without data."""
    if not data_dir or not Path(data_dir).is_dir():
        return {}
    root = Path(data_dir)
    kinds: dict[str, int] = {}
    per_label: dict[str, int] = {}
    files = 0
    for path in root.rglob("*"):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        files += 1
        if files > max_files:
            break
        suffix = path.suffix.lower()
        kind = next((k for k, exts in DATA_TYPES.items() if suffix in exts), "other")
        kinds[kind] = kinds.get(kind, 0) + 1
        parts = path.relative_to(root).parts
        if len(parts) > 1:
            per_label[parts[0]] = per_label.get(parts[0], 0) + 1
        if suffix == ".npz" and not per_label:
            per_label = _npz_labels(path) or per_label
    out: dict[str, Any] = {"files": files}
    if kinds:
        out["type"] = max(kinds, key=lambda k: kinds[k])
    if per_label:
        out["perLabel"] = dict(sorted(per_label.items()))
        out["examples"] = sum(per_label.values())
    return out


def _npz_labels(path: Path) -> dict[str, int]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is in every training image
        return {}
    try:
        with np.load(path) as npz:
            key = next((k for k in ("y", "labels", "label") if k in npz.files), None)
            if key is None or npz[key].dtype.kind not in "iub" or npz[key].ndim != 1:
                return {}
            values, counts = np.unique(npz[key], return_counts=True)
            return {str(v): int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)}
    except (OSError, ValueError):
        return {}


def _requirement_names(requirements: Path) -> list[str]:
    names = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        for sep in ("==", ">=", "<=", "~=", "!=", ">", "<", "[", ";", " "):
            line = line.split(sep, 1)[0]
        if line:
            names.append(line.strip())
    return names


def package_versions(code_dir: Path | None = None) -> dict[str, str]:
    """Installed versions of the well-known ML packages and of the model's requirements.txt."""
    names = list(KNOWN_PACKAGES)
    if code_dir is not None and (code_dir / "requirements.txt").is_file():
        names += _requirement_names(code_dir / "requirements.txt")
    versions = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def environment() -> dict[str, Any]:
    """The Python and platform a trial ran on."""
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine()}
