"""Commands for the model validator and the software engineer: report, promote, lineage,
monitor and predict."""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.table import Table

from cdl.api.modelversion import STAGES
from cdl.cli.common import EXIT_PLATFORM, EXIT_USER, OutputFormat, console, emit, err_console
from cdl.cli.kube import Kube, KubeconfigOption, NamespaceOption


def report(
    name: str = typer.Argument(..., help="ModelVersion name."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o", help="table (Markdown), json or yaml."),
) -> None:
    """Print a ModelVersion's evaluation report: metrics, gates, confusion matrix, lineage, model card.

    Example: cdl report news-classifier-v1 > report.md
    """
    mv = Kube(kubeconfig).get("ModelVersion", name, namespace)
    evaluation = (mv.get("status") or {}).get("evaluation") or {}
    uri = evaluation.get("reportUri")
    if not uri:
        err_console.print(f"ModelVersion {namespace}/{name} has no report yet (phase {mv.get('status', {}).get('phase')})")
        raise typer.Exit(EXIT_USER)
    if output == OutputFormat.table:
        console.print(read_uri(uri).decode(), markup=False, highlight=False)
        return
    report_json = json.loads(read_uri(uri.removesuffix(".md") + ".json"))
    emit(report_json, output)


def read_uri(uri: str) -> bytes:
    """The bytes of an artifact (file:// or s3:// with the CDL_S3_* settings)."""
    import tempfile
    from pathlib import Path

    from cdl.config import OperatorConfig
    from cdl.engines.chooser import EngineChooser
    from cdl.stores.opener import download_uri

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "artifact"
        download_uri(uri, dest, s3=EngineChooser(OperatorConfig.load())._s3())
        return dest.read_bytes()


def promote(
    name: str = typer.Argument(..., help="ModelVersion name."),
    stage: str = typer.Option(..., "--stage", "-s", help="candidate, staging, production or archived."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    timeout: float = typer.Option(60, help="Seconds to wait for the operator's answer."),
) -> None:
    """Move a ModelVersion to a stage; production needs a passed gate and archives the previous one.

    Example: cdl promote news-classifier-v2 --stage production
    """
    if stage not in STAGES:
        err_console.print(f"--stage: unsupported value {stage!r}: supported values: {', '.join(STAGES)}")
        raise typer.Exit(EXIT_USER)
    kube = Kube(kubeconfig)
    kube.patch_spec("ModelVersion", name, namespace, {"stage": stage})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (kube.get("ModelVersion", name, namespace).get("status") or {})
        if status.get("stage") == stage:
            console.print(status.get("message") or f"{name} is now in {stage}")
            return
        promoted = next((c for c in status.get("conditions", []) if c["type"] == "Promoted"), None)
        if promoted and promoted["status"] == "False" and promoted.get("reason") == "PromotionRefused":
            err_console.print(f"promotion refused: {promoted['message']}")
            raise typer.Exit(EXIT_USER)
        time.sleep(0.5)
    err_console.print(f"the operator did not move {name} to {stage} within {timeout:.0f} s")
    raise typer.Exit(EXIT_PLATFORM)


def lineage(
    name: str = typer.Argument(..., help="ModelVersion name."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """Print the chain from the data commit to the deployments serving a ModelVersion.

    Example: cdl lineage news-classifier-v1
    """
    kube = Kube(kubeconfig)
    mv = kube.get("ModelVersion", name, namespace)
    st = mv.get("status") or {}
    lin = st.get("lineage") or {}
    data = lin.get("data") or {}
    deployments = [
        d["metadata"]["name"] for d in kube.list("Deployment", namespace)
        if any(t.get("modelVersion") == name for t in (d.get("status") or {}).get("traffic", []))
    ]
    chain = [
        ("data", f"{data.get('repo', '?')}@{data.get('commit', '?')}"),
        ("experiment", f"{lin.get('experiment', '?')} (run {lin.get('run', 1)})"),
        ("trial", str(lin.get("trial", "?"))),
        ("checkpoint", str(lin.get("checkpoint", "?"))),
        ("code", f"git {((lin.get('code') or {}).get('gitCommit') or 'unknown')[:12]}, "
                 f"image {(lin.get('code') or {}).get('image') or 'none'}"),
        ("model version", f"{mv['spec']['model']} v{st.get('version', '?')} ({name}), stage {st.get('stage', '?')}"),
        ("artifact", f"{(st.get('artifact') or {}).get('uri', '?')} sha256 {((st.get('artifact') or {}).get('sha256') or '?')[:12]}"),
        ("deployments", ", ".join(deployments) or "none"),
    ]
    if emit(dict(chain), output):
        return
    for i, (what, value) in enumerate(chain):
        console.print(f"{'  ' * 0}{'└─ ' if i else ''}[bold]{what}[/bold]: {value}", highlight=False)


def monitor(
    name: str = typer.Argument(..., help="Deployment name."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """Show a Deployment's scoring-data figures: requests, errors, latency, drift, retrains.

    Example: cdl monitor news-classifier
    """
    dep = Kube(kubeconfig).get("Deployment", name, namespace)
    st = dep.get("status") or {}
    mon: dict[str, Any] = st.get("monitoring") or {}
    if emit({"phase": st.get("phase"), "url": st.get("url"), "traffic": st.get("traffic"), **mon}, output):
        return
    table = Table(title=f"Deployment {namespace}/{name} ({st.get('phase')})")
    for col in ("requests", "errors", "p50 ms", "p99 ms", "drift (PSI)", "drift detected", "last retrain"):
        table.add_column(col)
    table.add_row(*(str(mon.get(k, "-")) for k in
                    ("requests", "errors", "p50Ms", "p99Ms", "drift", "driftDetected", "lastRetrain")))
    console.print(table)
    for t in st.get("traffic", []):
        console.print(f"  {t.get('role', 'primary')}: {t['modelVersion']} {t['percent']}%")


def predict(
    name: str = typer.Argument(..., help="Deployment name."),
    data: str = typer.Option(..., "--data", "-d", help='JSON list of inputs, e.g. \'["some text"]\'.'),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
) -> None:
    """Send a prediction request through the Deployment's endpoint (Seldon protocol).

    Example: cdl predict news-classifier --data '["Shares rose after the merger"]'
    """
    try:
        inputs = json.loads(data)
    except json.JSONDecodeError as exc:
        err_console.print(f"--data: not valid JSON: {exc}")
        raise typer.Exit(EXIT_USER)
    dep = Kube(kubeconfig).get("Deployment", name, namespace)
    url = (dep.get("status") or {}).get("url")
    if not url:
        err_console.print(f"Deployment {namespace}/{name} has no endpoint yet (phase {dep.get('status', {}).get('phase')})")
        raise typer.Exit(EXIT_USER)
    import urllib.error
    import urllib.request

    body = json.dumps({"data": {"ndarray": inputs if isinstance(inputs, list) else [inputs]}}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            console.print_json(resp.read().decode())
    except urllib.error.HTTPError as exc:
        err_console.print(f"HTTP {exc.code}: {exc.read().decode(errors='replace')}")
        raise typer.Exit(EXIT_USER)
    except OSError as exc:
        err_console.print(f"{url} unreachable: {exc}")
        raise typer.Exit(EXIT_PLATFORM)


def register(app: typer.Typer) -> None:
    for fn in (report, promote, lineage, monitor, predict):
        app.command(fn.__name__)(fn)
