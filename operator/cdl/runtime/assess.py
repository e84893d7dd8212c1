"""The evaluation Job: `python3 -m cdl.runtime.assess` (one per ModelVersion evaluation).

Runs in the training image, in an empty working directory, under a service account that can
read nothing; everything it needs is in its environment (docs/cluster-path.md, section 3):

1. fetch the package (`CDL_PACKAGE_URI`), refusing one whose sha256 is not `CDL_PACKAGE_SHA256`;
2. copy the evaluation data (`CDL_DATA_URI`, see `cdl.runtime.data`);
3. evaluate it with `CDL_EVAL_ENTRYPOINT` (`python -m cdl.runtime.evaluate`, its own process);
4. with `CDL_COMPRESSION=dynamic-int8`: compress it (`python -m cdl.runtime.compress`), evaluate
   the variant the same way, pack it and upload it to `CDL_VARIANT_URI`;
5. write what it measured as JSON to `CDL_RESULT_URI`, where the operator reads it:
   `{"evaluation": <evaluate's output>, "compression": {"compress": <compress's output>,
   "evaluation": <the variant's>, "variant": {"uri", "sha256", "bytes"}, "originalBytes": n} | null}`
   or `{"error": "...", "kind": "...", "traceback": "..."}`.

Exit status: 0 when a result (possibly an error report) was written, 1 when not even that worked.
Standard library and `cdl.runtime` only: this is what the training image holds of cdl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from cdl.runtime import data, package, serving
from cdl.runtime.env import (
    ENV_COMPRESSION,
    ENV_PACKAGE_SHA256,
    ENV_PACKAGE_URI,
    ENV_RESULT_URI,
    ENV_VARIANT_URI,
)
from cdl.runtime.env import ENV_EVAL_ENTRYPOINT as ENV_ENTRYPOINT


class AssessmentError(Exception):
    def __init__(self, message: str, kind: str = "user", trace: str = "") -> None:
        super().__init__(message)
        self.kind, self.trace = kind, trace


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise AssessmentError(f"{name} is not set", kind="platform")
    return value


def _child(module: str, args: list[str], out: Path, what: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], check=False)
    body = json.loads(out.read_text()) if out.is_file() else None
    if body is None or "error" in body or done.returncode != 0:
        body = body or {}
        raise AssessmentError(f"{what}: {body.get('error') or f'exited with status {done.returncode}'}",
                              kind=body.get("kind", "user"), trace=body.get("traceback", ""))
    return body


def assess(work: Path) -> dict[str, Any]:
    entrypoint = _required(ENV_ENTRYPOINT)
    try:
        pkg = serving.fetch_package(_required(ENV_PACKAGE_URI), work / "packages", sha256=_required(ENV_PACKAGE_SHA256))
    except (ValueError, OSError) as exc:
        raise AssessmentError(f"the model package: {exc}", kind="package") from None
    try:
        data_dir = data.ensure_data_dir()
    except Exception as exc:  # noqa: BLE001 - whatever the store or pachd said
        raise AssessmentError(f"the evaluation data: {type(exc).__name__}: {exc}", kind="data") from None
    if data_dir is None:
        raise AssessmentError("no evaluation data: set CDL_DATA_URI", kind="platform")
    evaluation = _child("cdl.runtime.evaluate", ["--package", str(pkg), "--entrypoint", entrypoint,
                                                 "--data", str(data_dir)], work / "evaluation.json",
                        f"evaluation {entrypoint}")
    names = pkg / "checkpoint" / "class_names.json"
    if evaluation.get("classNames") is None and names.is_file():  # as the embedded runner reads them
        evaluation["classNames"] = [str(n) for n in json.loads(names.read_text())]
    result: dict[str, Any] = {"evaluation": evaluation, "compression": None}
    method = os.environ.get(ENV_COMPRESSION) or "none"
    if method == "none":
        return result
    variant_dir = work / f"variant.{method}"
    compressed = _child("cdl.runtime.compress", ["--package", str(pkg), "--dest", str(variant_dir),
                                                 "--method", method], work / "compress.json", f"compression {method}")
    variant_eval = _child("cdl.runtime.evaluate", ["--package", str(variant_dir), "--entrypoint", entrypoint,
                                                   "--data", str(data_dir)], work / "variant-evaluation.json",
                          f"evaluation {entrypoint} of the {method} variant")
    sha256, size = package.pack(variant_dir, work / "variant.tar.gz")
    _, original_bytes = package.pack(pkg, work / "original.tar.gz")
    uri = _required(ENV_VARIANT_URI)
    data.upload(work / "variant.tar.gz", uri)
    result["compression"] = {"method": method, "compress": compressed, "evaluation": variant_eval,
                             "variant": {"uri": uri, "sha256": sha256, "bytes": size},
                             "originalBytes": original_bytes}
    return result


def main() -> int:
    try:
        result_uri = _required(ENV_RESULT_URI)
    except AssessmentError as exc:
        print(f"cdl: {exc}", file=sys.stderr, flush=True)
        return 1
    with tempfile.TemporaryDirectory(prefix="cdl-assess-", dir=os.getcwd()) as tmp:
        work = Path(tmp)
        try:
            result = assess(work)
        except AssessmentError as exc:
            print(f"cdl: {exc}\n{exc.trace}", file=sys.stderr, flush=True)
            result = {"error": str(exc), "kind": exc.kind, "traceback": exc.trace}
        except Exception as exc:  # noqa: BLE001 - report it where the operator looks
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            result = {"error": f"{type(exc).__name__}: {exc}", "kind": "platform", "traceback": text}
        out = work / "result.json"
        out.write_text(json.dumps(result))
        data.upload(out, result_uri)
    print(f"cdl: wrote {result_uri}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
