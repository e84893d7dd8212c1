"""Model Compression: a smaller variant of a PyTorch package, evaluated like the original.

`dynamic-int8` quantizes the model's `nn.Linear` layers to int8 (`torch.ao.quantization.
quantize_dynamic`) in a child process that builds the model with the package's own code
(`cdl.runtime.compress`), writes the variant package beside the original, then evaluates both
with the same entrypoint, data and runner, so the figures side by side compare like with like:

- size: the model weights as `torch.save` writes them (`weightsBytes`), and the whole package
  archive (`packageBytes`; the variant leaves out optimizer state, which the original keeps);
- latency: milliseconds per example of warm forward passes on an evaluation batch, measured by
  the same runner for both (`cdl.runtime.evaluate`);
- metrics: each of the original's, the variant's, and the change (variant minus original).

A package of another framework is refused with a clear error; so is a model with no Linear layer.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdl.errors import InvalidSpec, PermanentEngineError
from cdl.quality.evaluation import (
    EvaluationResult,
    child_environment,
    evaluate_package,
    run_child,
    tail,
)
from cdl.runtime.package import FORMAT, PackageError, load_package, pack

METHODS = ("none", "dynamic-int8")


@dataclass
class CompressedPackage:
    """A variant package on disk and what compressing measured."""

    package_dir: Path
    method: str
    weights_bytes_original: int
    weights_bytes: int
    quantized_modules: list[str] = field(default_factory=list)
    loader: str = ""
    archive: Path | None = None
    sha256: str = ""
    bytes: int = 0


def _variant_dir(package_dir: Path, method: str) -> Path:
    return package_dir.parent / f"{package_dir.name}.{method}"


def compress_package(
    package_dir: str | Path,
    method: str = "dynamic-int8",
    dest: Path | None = None,
    *,
    loader: str | None = None,
    timeout: float = 600.0,
) -> CompressedPackage:
    """Write the compressed variant of an unpacked package (default: `<package_dir>.<method>`)
    and its reproducible archive beside it."""
    package_dir = Path(package_dir).resolve()
    if method not in METHODS or method == "none":
        raise InvalidSpec("compression", [("spec.compression.method",
                                           f"{method!r} compresses nothing; allowed: dynamic-int8")])
    try:
        info = load_package(package_dir)
    except PackageError as exc:
        raise PermanentEngineError(f"compression {method}: {exc}") from exc
    if info.framework != "pytorch":
        raise PermanentEngineError(
            f"compression {method} works on PyTorch packages; {info.name} version {info.version} is a "
            f"{info.framework} model", reason="CompressionUnsupported")
    dest = Path(dest or _variant_dir(package_dir, method)).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    log = dest.parent / f"{dest.name}.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="cdl-compress-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", "cdl.runtime.compress", "--package", str(package_dir), "--dest", str(dest),
                "--method", method, "--out", str(out)] + (["--loader", loader] if loader else [])
        try:
            rc = run_child(argv, log, timeout, child_environment(), cwd=Path(tmp))
        except PermanentEngineError as exc:
            raise PermanentEngineError(f"compression {method} of {info.name} {exc}", reason=exc.reason) from None
        body = json.loads(out.read_text()) if out.is_file() else None
    if rc != 0 or body is None or "error" in body:
        what = (body or {}).get("error") or f"the compression process exited with status {rc}"
        trace = (body or {}).get("traceback") or log.read_text(errors="replace")
        raise PermanentEngineError(f"compression {method} of {info.name} version {info.version} failed: {what}\n"
                                   f"{tail(trace)}", reason="CompressionFailed")
    archive = dest.parent / f"{dest.name}.tar.gz"
    sha256, size = pack(dest, archive)
    return CompressedPackage(
        package_dir=dest, method=method,
        weights_bytes_original=int(body["weightsBytes"]["original"]),
        weights_bytes=int(body["weightsBytes"]["compressed"]),
        quantized_modules=list(body.get("quantizedModules") or []), loader=str(body.get("loader") or ""),
        archive=archive, sha256=sha256, bytes=size,
    )


def _figures(result: EvaluationResult, weights: int, package_bytes: int) -> dict[str, Any]:
    return {
        "metrics": result.metrics,
        "weightsBytes": weights,
        "packageBytes": package_bytes,
        "latencyMsPerExample": result.latency_ms,
        "examples": result.examples,
    }


def compress_and_evaluate(
    package_dir: str | Path,
    entrypoint: str,
    data_dir: str | Path,
    *,
    method: str = "dynamic-int8",
    original: EvaluationResult | None = None,
    dest: Path | None = None,
    loader: str | None = None,
    timeout: float = 1800.0,
    store_variant: Callable[[Path], Any] | None = None,
) -> dict[str, Any]:
    """Compress, evaluate the variant (and the original unless `original` is given) and return
    the comparison as JSON for `status.evaluation.compressed` and the report.

    `store_variant(variant_dir)` may store the variant (e.g. `LocalRegistryEngine.store_variant`
    bound to the model and version); what it returns with an `artifact_uri` becomes `uri`."""
    package_dir = Path(package_dir).resolve()
    compressed = compress_package(package_dir, method, dest, loader=loader, timeout=timeout)
    if original is None:
        original = evaluate_package(package_dir, entrypoint, data_dir, timeout=timeout)
    variant = evaluate_package(compressed.package_dir, entrypoint, data_dir, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="cdl-size-") as tmp:
        _, original_bytes = pack(package_dir, Path(tmp) / "original.tar.gz")
    uri = None
    if store_variant is not None:
        stored = store_variant(compressed.package_dir)
        uri = getattr(stored, "artifact_uri", None) or (stored.get("uri") if isinstance(stored, dict) else None)
    return comparison(compressed, original, variant, original_bytes, uri)


def comparison(compressed: CompressedPackage, original: EvaluationResult, variant: EvaluationResult,
               original_bytes: int, uri: str | None) -> dict[str, Any]:
    """The original and its variant side by side, as `status.evaluation.compressed` shows them
    (the same whether the evaluation ran as a subprocess or as a Kubernetes Job)."""
    change = {k: variant.metrics[k] - v for k, v in original.metrics.items() if k in variant.metrics}
    ratio = compressed.weights_bytes / compressed.weights_bytes_original if compressed.weights_bytes_original else None
    speedup = (original.latency_ms / variant.latency_ms
               if original.latency_ms and variant.latency_ms else None)
    return {
        "method": compressed.method,
        "artifact": {"uri": uri, "path": str(compressed.archive) if compressed.archive else None,
                     "sha256": compressed.sha256, "bytes": compressed.bytes, "format": FORMAT},
        "packageDir": str(compressed.package_dir),
        "quantizedModules": compressed.quantized_modules,
        "loader": compressed.loader,
        "original": _figures(original, compressed.weights_bytes_original, original_bytes),
        "compressed": _figures(variant, compressed.weights_bytes, compressed.bytes),
        "metricChange": change,
        "sizeRatio": ratio,
        "latencySpeedup": speedup,
        "latencyMeasure": variant.latency_measure or original.latency_measure,
        "confusion": variant.confusion,
        "classNames": variant.class_names,
    }
