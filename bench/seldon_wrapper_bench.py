"""The Seldon wrapper's cost per request, before and after, side by side in one run.

seldon-core-microservice serves the same package with `cdl.runtime.serving` as of a git revision
(default: ce7c6a1, before issue 16: `metrics()` after every request through seldon-core's
`multiprocessing.Manager`, the standard library's JSON parser, numpy round trips) and as in the
working tree (`predict_raw`, orjson, no per-request custom metrics), alternately, twice each. The
figure that survives a busy machine is the server's CPU time per request (all its processes);
throughput and latency are printed too.

    .venv/bin/python bench/seldon_wrapper_bench.py [--before REV] [--seconds 4]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving_bench as sb  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="ce7c6a1", help="git revision of the wrapper to compare with")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    from cdl.engines.serving.local import venv as venvs
    from cdl.engines.serving.local.microservice import Microservice, ServerState, prepare_wrapper_dir

    work = Path(tempfile.mkdtemp(prefix="cdl-wrapper-bench-"))
    try:
        after = prepare_wrapper_dir(work / "after")
        before = prepare_wrapper_dir(work / "before")
        old = subprocess.run(["git", "show", f"{args.before}:operator/cdl/runtime/serving.py"], cwd=sb.ROOT,
                             capture_output=True, text=True, check=True).stdout
        (before / "cdl" / "runtime" / "serving.py").write_text(old)
        lines = [f"Seldon wrapper before ({args.before}) and after, {time.strftime('%Y-%m-%d %H:%M')}, "
                 "seldon-core-microservice --workers 2 --threads 1, wrk -t1",
                 "", "| model | wrapper | c=8 req/s | c=8 CPU ms/req | c=1 p50 ms |", "|---|---|---|---|---|"]
        cpu: dict[tuple[str, str], list[float]] = {}
        for model in sb.models(work, None):
            for label, wrapper in (("before", before), ("after", after)) * 2:
                state = ServerState(id=label, model_version="bench", sha256="", predictor="",
                                    package_dir=str(model.package))
                server = Microservice(state, venvs.ensure_venv(), wrapper, work / "logs", threads=1)
                server.start()
                try:
                    while not server.healthy():
                        if not server.alive():
                            raise RuntimeError(Path(state.log).read_text()[-2000:])
                        time.sleep(0.2)
                    c8 = sb.wrk(state.predict_url, model.seldon_body, 8, args.seconds, work, [state.pid])
                    c1 = sb.wrk(state.predict_url, model.seldon_body, 1, args.seconds, work)
                finally:
                    server.stop()
                cpu.setdefault((model.name, label), []).append(c8.cpu_ms or float("nan"))
                lines.append(f"| {model.name} | {label} | {c8.rps:.0f} | {c8.cpu_ms:.2f} | {c1.p50:.2f} |")
        lines.append("")
        for name in dict.fromkeys(k[0] for k in cpu):
            b, a = cpu[(name, "before")], cpu[(name, "after")]
            lines.append(f"- {name}: CPU per request after / before = {sum(a) / sum(b):.2f}")
        import os

        lines.append(f"- load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("\n".join(lines))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
