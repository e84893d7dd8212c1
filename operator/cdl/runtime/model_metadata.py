"""Automatic model metadata in ModelKB's spirit: what was trained, with what, extracted without
the user writing any of it down (framework and version, parameter counts, a layer summary, the
versions of the packages the trial imported)."""

from __future__ import annotations

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
        return {
            "framework": "keras",
            "framework_version": version,
            "model_class": type(model).__name__,
            "parameters": total,
            "trainable_parameters": trainable,
            "layer_count": len(layers),
            "layers": layers[:MAX_LAYERS],
        }
    return {"framework": "unknown", "model_class": type(model).__name__}


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
