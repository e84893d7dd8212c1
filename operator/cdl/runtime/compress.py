"""The compression worker: `python -m cdl.runtime.compress` (one process per compression).

Builds the package's PyTorch model with the user's own code, quantizes it and writes a variant
package next to the original:

- the model comes from the `--loader` entrypoint, else the package's `model` entrypoint
  (`module:function(package_dir) -> torch.nn.Module`), else its `predictor` (`Class()` then
  `.load(package_dir)`; the module is its `model`/`net` attribute or the one nn.Module it holds);
- `dynamic-int8`: `torch.ao.quantization.quantize_dynamic` on every `nn.Linear` (int8 weights,
  activations quantized on the fly; CPU inference);
- the variant keeps the Determined layout: `checkpoint/state_dict.pth` holds
  `models_state_dict[0]` = the quantized weights (training-only state such as optimizer and RNG
  state is dropped: a variant is for inference), every other file is copied, and its manifest
  says `variant: {method: dynamic-int8, ...}` so `cdl.runtime.package.prepare_process` lets the
  unchanged evaluate function and predictor load it.

Writes `--out` JSON: {"weightsBytes": {"original", "compressed"}, "quantizedModules": [...],
"loader": "..."}; exit 1 with {"error", "traceback"} when it cannot.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from cdl.runtime.package import (
    CHECKPOINT_DIR,
    MANIFEST,
    STATE_FILE,
    PackageError,
    PackageInfo,
    file_sha256,
    import_from_package,
    load_package,
    write_manifest,
)

METHODS = ("dynamic-int8",)
TRAINING_ONLY = ("optimizers_state_dict", "lr_schedulers_state_dict", "rng_state", "scaler_state_dict",
                 "amp_state", "callbacks")
MODULE_ATTRS = ("model", "net", "module", "network")


def find_module(obj: Any) -> Any:
    """The torch module a predictor holds: a well-known attribute, else the only one it has."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    for name in MODULE_ATTRS:
        value = getattr(obj, name, None)
        if isinstance(value, torch.nn.Module):
            return value
    found = []
    for value in vars(obj).values() if hasattr(obj, "__dict__") else []:
        if isinstance(value, torch.nn.Module):
            found.append(value)
        elif hasattr(value, "__dict__"):
            found += [v for v in vars(value).values() if isinstance(v, torch.nn.Module)]
    unique = list({id(m): m for m in found}.values())
    if len(unique) == 1:
        return unique[0]
    what = "no torch.nn.Module" if not unique else f"{len(unique)} torch.nn.Modules"
    raise PackageError(f"the predictor {type(obj).__name__} holds {what}; give it a `model` attribute "
                       f"or declare a `model` entrypoint (module:function(package_dir) -> nn.Module)")


def build_model(info: PackageInfo, loader: str | None) -> tuple[Any, str]:
    """(the float model, the entrypoint that built it)."""
    entry = loader or info.entrypoints.get("model") or info.entrypoints.get("predictor")
    if not entry:
        raise PackageError(
            f"cannot build the PyTorch model of {info.name} version {info.version}: the package declares "
            f"neither a `model` entrypoint (module:function(package_dir) -> nn.Module) nor a `predictor` "
            f"(a class with load(artifact_dir) and predict(X))")
    target = import_from_package(info.root, entry)
    if isinstance(target, type):
        predictor = target()
        predictor.load(str(info.root))
        return find_module(predictor), entry
    if callable(target):
        return find_module(target(str(info.root))), entry
    raise PackageError(f"entrypoint {entry!r} is neither a class nor a function")


def serialized_bytes(state_dict: Any) -> int:
    """The size of a state dict as torch.save writes it (the same measure for both models)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.tell()


def compress(src: Path, dest: Path, method: str, loader: str | None) -> dict[str, Any]:
    import torch
    from torch.ao.quantization import quantize_dynamic

    if method not in METHODS:
        raise PackageError(f"unknown compression method {method!r}; allowed: {', '.join(METHODS)}")
    info = load_package(src)
    if info.framework != "pytorch":
        raise PackageError(f"{method} compresses PyTorch models; this package's framework is {info.framework}")
    state_path = info.checkpoint_dir / STATE_FILE
    if not state_path.is_file():
        raise PackageError(f"{state_path} is missing: not a Determined PyTorch checkpoint")
    # Our own platform's checkpoint (it holds numpy RNG state the weights-only unpickler refuses).
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not state.get("models_state_dict"):
        raise PackageError(f"{state_path} has no models_state_dict: not a Determined PyTorch checkpoint")
    model, entry = build_model(info, loader)
    model = model.cpu().eval()
    float_state = model.state_dict()
    saved = state["models_state_dict"][0]
    if set(float_state) != set(saved):
        missing = sorted(set(saved) ^ set(float_state))[:5]
        raise PackageError(f"the model built by {entry} does not match models_state_dict[0] of the checkpoint "
                           f"(keys differ: {', '.join(missing)})")
    quantized = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    modules = [name or "<root>" for name, m in quantized.named_modules()
               if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    if not modules:
        raise PackageError(f"the model built by {entry} has no nn.Linear layers: dynamic-int8 has nothing to quantize")
    q_state = quantized.state_dict()
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(MANIFEST))
    variant_state = {k: v for k, v in state.items() if k not in TRAINING_ONLY}
    variant_state["models_state_dict"] = [q_state, *state["models_state_dict"][1:]]
    torch.save(variant_state, dest / CHECKPOINT_DIR / STATE_FILE)
    manifest = dict(info.raw)
    manifest["variant"] = {
        "method": method,
        "dtype": "qint8",
        "quantizedModules": modules,
        "loader": entry,
        "torch": torch.__version__,
        "source": {"stateSha256": file_sha256(state_path), "files": len(info.files)},
    }
    write_manifest(dest, manifest)
    return {
        "weightsBytes": {"original": serialized_bytes(float_state), "compressed": serialized_bytes(q_state)},
        "quantizedModules": modules,
        "loader": entry,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdl.runtime.compress", description=__doc__.split("\n")[0])
    parser.add_argument("--package", required=True, type=Path, help="unpacked package to compress")
    parser.add_argument("--dest", required=True, type=Path, help="directory for the variant package")
    parser.add_argument("--method", default="dynamic-int8", choices=METHODS)
    parser.add_argument("--loader", default=None, help="module:function or module:Predictor building the model")
    parser.add_argument("--out", required=True, type=Path, help="where to write the result JSON")
    args = parser.parse_args(argv)
    try:
        body = compress(args.package.resolve(), args.dest.resolve(), args.method, args.loader)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - user code ran: report whatever it raised
        traceback.print_exc()
        body = {"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, PackageError) else str(exc),
                "traceback": traceback.format_exc()}
        code = 1
    args.out.write_text(json.dumps(body))
    return code


if __name__ == "__main__":
    sys.exit(main())
