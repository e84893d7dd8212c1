"""Model Evaluation: run a package's evaluation entrypoint in its own process and read the result.

The user's code runs in a child process (`python -m cdl.runtime.evaluate`), never in the
operator: it may import anything, hold gigabytes, crash or hang. The child gets its own process
group and log file, a minimal environment (no operator secrets), and a deadline after which the
whole group is stopped. A failure becomes a `PermanentEngineError` whose message carries the
end of the user's traceback, so `kubectl describe` shows why the evaluation failed.

With `site_dir` the child runs isolated (`python -I -S`) with only that directory (see
`cdl.engines.registry.packaging.requirements_site`) and the package's code on its path: a package
whose requirements.txt misses something fails here, as it would in a fresh image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdl.errors import PermanentEngineError
from cdl.processes import stop_group

LOG_TAIL_CHARS = 20_000
MAX_CLASSES = 200  # more distinct labels than this: not a classifier a confusion matrix can show
TRACEBACK_TAIL_LINES = 25
ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "OPENBLAS_", "TORCH_", "XDG_", "NLTK_", "TF_", "KERAS_")
ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "VIRTUAL_ENV")
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH")

# The isolated child: only the standard library, the site directory and the package's code.
_ISOLATED_BOOT = (
    "import sys, site; site_dir = sys.argv.pop(1); site.addsitedir(site_dir); "
    "from cdl.runtime.evaluate import main; sys.exit(main(sys.argv[1:]))"
)


@dataclass
class EvaluationResult:
    """What one evaluation of a package measured."""

    metrics: dict[str, float]
    labels: list[Any] | None = None
    predictions: list[Any] | None = None
    confusion: list[list[int]] | None = None  # rows: true class, columns: predicted, in class_names order
    class_names: list[str] | None = None
    log: str = ""
    entrypoint: str = ""
    examples: int | None = None
    eval_seconds: float | None = None  # the entrypoint call, data loading included
    forward_seconds: float | None = None  # time inside the model's outermost forward calls (PyTorch)
    latency_ms: float | None = None  # per example; how it was measured is in latency_measure
    latency_measure: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        """JSON for status, job records and reports (labels and predictions left out)."""
        return {
            "metrics": self.metrics,
            "confusion": self.confusion,
            "classNames": self.class_names,
            "entrypoint": self.entrypoint,
            "examples": self.examples,
            "evalSeconds": self.eval_seconds,
            "forwardSeconds": self.forward_seconds,
            "latencyMsPerExample": self.latency_ms,
            "latencyMeasure": self.latency_measure,
        }


def confusion_matrix(
    labels: list[Any], predictions: list[Any], class_names: list[str] | None = None
) -> tuple[list[str], list[list[int]]]:
    """(class names, matrix) with rows = true class and columns = predicted class.

    Integer labels are read as indexes into class_names when they all fit; classes seen in the
    data but missing from class_names are appended, so no example is dropped."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    names = [str(n) for n in (class_names or [])]
    values = list(labels) + list(predictions)
    as_index = bool(names) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names) for v in values
    )

    def name(v: Any) -> str:
        return names[v] if as_index else str(v)

    seen = {name(v) for v in values}
    names += sorted(seen - set(names))
    index = {n: i for i, n in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for y, p in zip(labels, predictions, strict=True):
        matrix[index[name(y)]][index[name(p)]] += 1
    return names, matrix


def is_classification(labels: list[Any], predictions: list[Any]) -> bool:
    """Whether labels and predictions are class labels (strings, integers) rather than real
    numbers, with few enough classes for a confusion matrix to be readable."""
    values = list(labels) + list(predictions)
    if not all(isinstance(v, str | int) for v in values):
        return False
    return len(set(values)) <= MAX_CLASSES


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for user code: locale, paths and framework knobs, never secrets."""
    env = {}
    for k, v in os.environ.items():
        wanted = k in ENV_NAMES or k.startswith(ENV_PREFIXES)
        if wanted and not any(word in k.upper() for word in SECRET_WORDS):
            env[k] = v
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the package's code must not write caches into the package
    env.update(extra or {})
    return env


def run_child(argv: list[str], log_path: Path, timeout: float, env: dict[str, str], cwd: Path) -> int:
    """Run argv in its own process group, output to log_path; stop the group at the deadline.

    Returns the exit status; raises PermanentEngineError on timeout."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc, grace=5.0)
            raise PermanentEngineError(
                f"timed out after {timeout:.0f}s (log: {log_path}); the process group was stopped",
                reason="EvaluationTimeout",
            ) from None
        finally:
            if proc.poll() is None:
                stop_group(proc, grace=5.0)


def tail(text: str, lines: int = TRACEBACK_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def evaluate_package(
    package_dir: str | Path,
    entrypoint: str,
    data_dir: str | Path,
    timeout: float = 600.0,
    *,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    site_dir: Path | None = None,
    python: str | None = None,
) -> EvaluationResult:
    """Evaluate an unpacked package on data_dir with `entrypoint` (module:function) in a child.

    `log_path` keeps the child's output (default: a temporary file, its tail is in `.log`);
    `env` adds variables; `site_dir` runs the child isolated with only those packages."""
    package_dir, data_dir = Path(package_dir).resolve(), Path(data_dir).resolve()
    if not package_dir.is_dir():
        raise PermanentEngineError(f"evaluation: package directory {package_dir} does not exist")
    if not data_dir.is_dir():
        raise PermanentEngineError(f"evaluation: data directory {data_dir} does not exist")
    with tempfile.TemporaryDirectory(prefix="cdl-eval-") as tmp:
        work = Path(tmp)
        out = work / "result.json"
        log = log_path or work / "evaluate.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        args = ["--package", str(package_dir), "--entrypoint", entrypoint, "--data", str(data_dir), "--out", str(out)]
        exe = python or sys.executable
        if site_dir is not None:
            argv = [exe, "-I", "-S", "-c", _ISOLATED_BOOT, str(Path(site_dir).resolve()), *args]
        else:
            argv = [exe, "-m", "cdl.runtime.evaluate", *args]
        child_env = child_environment({"CDL_DATA_DIR": str(data_dir), **(env or {})})
        try:
            rc = run_child(argv, log, timeout, child_env, cwd=work)
        except PermanentEngineError as exc:
            raise PermanentEngineError(f"evaluation {entrypoint} of {package_dir.name} {exc}",
                                       reason=exc.reason) from None
        log_text = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
        body = json.loads(out.read_text()) if out.is_file() else None
    if rc != 0 or body is None or "error" in body:
        what = (body or {}).get("error") or f"the evaluation process exited with status {rc} and wrote no result"
        trace = (body or {}).get("traceback") or log_text
        raise PermanentEngineError(
            f"evaluation {entrypoint} failed: {what}\n{tail(trace)}",
            reason="EvaluationFailed" if (body or {}).get("kind") != "entrypoint" else "BadEntrypoint",
        )
    return _result(body, entrypoint, log_text, package_dir)


def result_from_body(body: dict[str, Any], entrypoint: str, log_text: str = "") -> EvaluationResult:
    """An EvaluationResult from what `cdl.runtime.evaluate` wrote, read wherever it ran (an
    evaluation Job's result in the artifact store)."""
    return _result(body, entrypoint, log_text, None)


def _result(body: dict[str, Any], entrypoint: str, log_text: str, package_dir: Path | None) -> EvaluationResult:
    metrics = {k: float(v) for k, v in (body.get("metrics") or {}).items()}
    labels, predictions = body.get("labels"), body.get("predictions")
    class_names = body.get("classNames")
    if class_names is None and package_dir is not None:
        names_file = package_dir / "checkpoint" / "class_names.json"
        if names_file.is_file():
            try:
                class_names = [str(n) for n in json.loads(names_file.read_text())]
            except (ValueError, TypeError):
                class_names = None
    confusion = None
    if labels is not None and predictions is not None and is_classification(labels, predictions):
        class_names, confusion = confusion_matrix(labels, predictions, class_names)
        if "accuracy" not in metrics and labels:
            metrics["accuracy"] = sum(1 for y, p in zip(labels, predictions, strict=True) if y == p) / len(labels)
    timing = body.get("timing") or {}
    examples = body.get("examples")
    steady = timing.get("steady") or {}
    latency, measure = None, ""
    if steady.get("msPerExample") is not None:
        latency = float(steady["msPerExample"])
        measure = (f"median of {steady.get('runs')} warm forward passes of {steady.get('module')} on a "
                   f"{steady.get('batch')}-example evaluation batch, per example")
    elif examples and timing.get("forwardSeconds") is not None:
        latency, measure = timing["forwardSeconds"] * 1000.0 / examples, "time in forward calls during evaluation, per example"
    elif examples and timing.get("evalSeconds") is not None:
        latency, measure = timing["evalSeconds"] * 1000.0 / examples, "the whole evaluation call, per example"
    return EvaluationResult(
        metrics=metrics,
        labels=labels,
        predictions=predictions,
        confusion=confusion,
        class_names=class_names,
        log=log_text,
        entrypoint=entrypoint,
        examples=examples,
        eval_seconds=timing.get("evalSeconds"),
        forward_seconds=timing.get("forwardSeconds"),
        latency_ms=latency,
        latency_measure=measure,
    )
