"""`cdl demo bbc`: the BBC workflow end to end on the embedded platform, from `kubectl apply` to a
served prediction, with live progress and a summary at the end. This is `make demo`."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from cdl.api.kinds import KINDS as ALL_KINDS
from cdl.cli.common import EXIT_PLATFORM, EXIT_USER, console, err_console, project_root

KINDS = tuple((info.kind, info.plural) for info in ALL_KINDS)
SAMPLES = [
    "Shares in the bank rose after profits beat forecasts and the firm raised its dividend.",
    "The film won the best picture award at the ceremony and its star thanked the director.",
    "The prime minister told parliament the election campaign would focus on tax and schools.",
    "The striker scored twice as the team won the cup final in extra time.",
    "The new phone uses faster chips and software that lets users stream video online.",
]


def _kubectl() -> str:
    local = project_root() / ".tools" / "bin" / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if not found:
        err_console.print("kubectl is missing: run `make tools`")
        raise typer.Exit(EXIT_PLATFORM)
    return found


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        err_console.print(f"[red]{' '.join(cmd)} failed:[/red]\n{out.stdout}{out.stderr}")
        raise typer.Exit(EXIT_PLATFORM)
    return out


def _objects(kube: Any, namespace: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for kind, plural in KINDS:
        for obj in kube.custom.list_namespaced_custom_object("cdl.dev", "v1alpha1", namespace, plural)["items"]:
            found.append((kind, obj))
    return found


def _progress_table(objects: list[tuple[str, dict[str, Any]]], started: float) -> Table:
    table = Table(title=f"cdl demo: BBC news, {time.monotonic() - started:.0f} s")
    for col in ("kind", "name", "phase", "figures", "message"):
        table.add_column(col, overflow="fold")
    for kind, obj in objects:
        st = obj.get("status") or {}
        figures = ""
        if kind == "DataPipeline" and st.get("outputs"):
            out = st["outputs"]
            figures = f"train {out.get('train', {}).get('files', '?')} / test {out.get('test', {}).get('files', '?')} files"
        elif kind == "Experiment" and st.get("trials"):
            t = st["trials"]
            figures = (f"trials {t.get('total', 0)} (running {t.get('running', 0)}, stopped early "
                       f"{t.get('earlyStopped', 0)}), best {st.get('bestMetric', '-')}, "
                       f"{100 * (st.get('progress') or 0):.0f}%")
        elif kind == "ModelVersion" and st.get("version"):
            passed = (st.get("evaluation") or {}).get("passed")
            figures = f"v{st['version']} {st.get('stage', '')} gate {'-' if passed is None else passed}"
        elif kind == "Deployment" and st.get("url"):
            figures = st["url"]
        table.add_row(kind, obj["metadata"]["name"], st.get("phase") or "-", figures, st.get("message") or "")
    return table


def bbc(
    per_class: int = typer.Option(60, help="Articles per category in the generated offline corpus."),
    data_dir: Path = typer.Option(Path(".cdl"), "--data-dir", "-d", help="The embedded platform's data directory."),
    timeout: float = typer.Option(1500, help="Seconds to wait for the Deployment."),
    namespace: str = typer.Option("default", "--namespace", "-n"),
) -> None:
    """Run the BBC news workflow end to end on the embedded platform and print a summary.

    Example: cdl demo bbc --per-class 60
    """
    root = project_root()
    data_dir = (root / data_dir) if not data_dir.is_absolute() else data_dir
    if data_dir.resolve() != (root / ".cdl").resolve():
        err_console.print("the BBC manifests read file:.cdl/datasets/bbc-news, so the demo uses <repo>/.cdl")
        raise typer.Exit(EXIT_USER)
    started = time.monotonic()
    corpus = data_dir / "datasets" / "bbc-news"
    if not corpus.is_dir():
        console.print(f"[bold]1/6[/bold] generating the offline BBC corpus ({per_class} articles per category)")
        _run([sys.executable, str(root / "usecases/bbc-news/data/generate.py"), "--out", str(corpus),
              "--per-class", str(per_class), "--seed", "42"])
    else:
        console.print(f"[bold]1/6[/bold] offline BBC corpus already in {corpus}")
    console.print("[bold]2/6[/bold] preparing the serving environment (seldon-core in its own venv; first time only)")
    _run([sys.executable, "-m", "cdl.engines.serving.local.venv"], timeout=1800)
    console.print("[bold]3/6[/bold] starting the embedded platform (API server, PostgreSQL, operator)")
    _run([sys.executable, "-m", "cdl.cli.main", "up", "--data-dir", str(data_dir)], cwd=root)
    kubeconfig = data_dir / "kubeconfig"
    kubectl = [_kubectl(), "--kubeconfig", str(kubeconfig), "-n", namespace]
    manifests = root / "usecases" / "bbc-news" / "manifests"
    console.print(f"[bold]4/6[/bold] kubectl apply -f {manifests.relative_to(root)}/")
    applied = _run([*kubectl, "apply", "-f", str(manifests)])
    console.print(applied.stdout.rstrip())

    from cdl.cli.kube import Kube

    kube = Kube(str(kubeconfig))
    console.print("[bold]5/6[/bold] following the workflow (Ctrl-C stops watching; the platform keeps running)")
    deadline = time.monotonic() + timeout
    deployment: dict[str, Any] = {}
    with Live(console=console, refresh_per_second=1) as live:
        while time.monotonic() < deadline:
            objects = _objects(kube, namespace)
            live.update(_progress_table(objects, started))
            deployment = next((o for k, o in objects if k == "Deployment"), {})
            dst = deployment.get("status") or {}
            if dst.get("phase") == "Available":
                break
            failed = [(k, o) for k, o in objects if (o.get("status") or {}).get("phase") in ("Failed", "Rejected")]
            if failed:
                kind, obj = failed[0]
                err_console.print(f"[red]{kind} {obj['metadata']['name']} {obj['status']['phase']}:[/red] "
                                  f"{obj['status'].get('message')}")
                raise typer.Exit(EXIT_USER)
            time.sleep(2)
        else:
            err_console.print(f"[red]the Deployment was not Available within {timeout:.0f} s[/red]; "
                              f"see {data_dir / 'logs' / 'operator.log'}")
            raise typer.Exit(EXIT_PLATFORM)

    url = deployment["status"]["url"]
    console.print(f"[bold]6/6[/bold] sending {len(SAMPLES)} sample predictions to {url}")
    latencies, answers = [], []
    for text in SAMPLES:
        body = json.dumps({"data": {"ndarray": [text]}}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        latencies.append((time.perf_counter() - t0) * 1000)
        answers.append(answer["data"]["ndarray"][0])
        console.print(f"  {answer['data']['ndarray'][0]:>13}  <- {text}")
    _summary(kube, namespace, url, latencies, started)


def _summary(kube: Any, namespace: str, url: str, latencies: list[float], started: float) -> None:
    get = kube.custom.get_namespaced_custom_object
    dpl = get("cdl.dev", "v1alpha1", namespace, "datapipelines", "bbc-news")["status"]
    exp = get("cdl.dev", "v1alpha1", namespace, "experiments", "bbc-asha")["status"]
    mv = get("cdl.dev", "v1alpha1", namespace, "modelversions", "news-classifier-v1")["status"]
    best = exp.get("bestTrial") or {}
    evaluation = mv.get("evaluation") or {}
    table = Table(title="Summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    train = dpl["outputs"]["train"]
    table.add_row("data", f"{train['repo']}@{train['commit']} ({train['files']} train, "
                          f"{dpl['outputs']['test']['files']} test files)")
    t = exp.get("trials") or {}
    table.add_row("experiment", f"bbc-asha: {t.get('total')} trials, {t.get('earlyStopped', 0)} stopped early")
    table.add_row("best trial", f"{best.get('id')}: validation_accuracy {exp.get('bestMetric')}, "
                                f"hyperparameters {json.dumps(best.get('hparams'))}")
    gates = "; ".join(f"{g.get('rule') or g['metric']}: {'pass' if g['passed'] else 'FAIL'}"
                      for g in evaluation.get("gates", []))
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in (evaluation.get("metrics") or {}).items())
    table.add_row("model version", f"news-classifier v{mv.get('version')} ({mv.get('stage')}), {metrics}")
    table.add_row("gate", f"{'passed' if evaluation.get('passed') else 'failed'} ({gates})")
    table.add_row("endpoint", url)
    table.add_row("latency", f"p50 {statistics.median(latencies):.1f} ms over {len(latencies)} requests "
                             f"(max {max(latencies):.1f} ms)")
    table.add_row("wall time", f"{time.monotonic() - started:.0f} s")
    console.print(table)
    console.print(
        "Explore further:\n"
        "  export KUBECONFIG=.cdl/kubeconfig\n"
        "  kubectl get cdl                      # all four kinds\n"
        "  cdl experiments compare bbc-asha     # trials side by side\n"
        "  cdl report news-classifier-v1        # evaluation report and model card\n"
        "  cdl lineage news-classifier-v1       # data commit to deployment\n"
        "  cdl predict news-classifier --data '[\"Markets fell sharply today\"]'\n"
        "  cdl monitor news-classifier          # scoring data, latency, drift\n"
        "  cdl down                             # stop the platform (state stays in .cdl)"
    )


def register(app: typer.Typer) -> None:
    demo_app = typer.Typer(help="End-to-end demos on the embedded platform.", no_args_is_help=True)
    demo_app.command("bbc")(bbc)
    app.add_typer(demo_app, name="demo")
