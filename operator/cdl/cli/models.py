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
from cdl.cli.experiments import KBServiceOption, kb_get
from cdl.cli.kube import Kube, KubeconfigOption, NamespaceOption


def report(
    name: str = typer.Argument(..., help="ModelVersion name."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    kb_service: str = KBServiceOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o", help="table (Markdown), json or yaml."),
) -> None:
    """Print a ModelVersion's evaluation report: metrics, gates, confusion matrix, lineage, model card.

    Example: cdl report news-classifier-v1 > report.md
    """
    mv = kb_get(kubeconfig, kb_service, f"/v1/namespaces/{namespace}/modelversions/{name}")
    if not mv.get("report"):
        err_console.print(f"ModelVersion {namespace}/{name} has no report yet (model {mv['model']} "
                          f"v{mv['version']}, stage {mv.get('stage')})")
        raise typer.Exit(EXIT_USER)
    if output == OutputFormat.table:
        text = kb_get(kubeconfig, kb_service, f"/v1/models/{mv['model']}/versions/{mv['version']}/report.md",
                      text=True)
        console.print(text, markup=False, highlight=False)
        return
    emit(mv["report"], output)


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
    kb_service: str = KBServiceOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """Print the chain from the data commit to the deployments serving a ModelVersion.

    Example: cdl lineage news-classifier-v1
    """
    mv = kb_get(kubeconfig, kb_service, f"/v1/namespaces/{namespace}/modelversions/{name}")
    chain = mv["lineageChain"]
    if emit(chain, output):
        return
    for i, link in enumerate(chain):
        detail = ", ".join(f"{k} {v}" for k, v in (link.get("detail") or {}).items() if v not in (None, ""))
        console.print(f"{'  ' * i}{'└─ ' if i else ''}[bold]{link['kind']}[/bold]: {link['id']}"
                      + (f" ({detail})" if detail else ""), highlight=False, markup=True)


def monitor(
    name: str = typer.Argument(..., help="Deployment name."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    kb_service: str = KBServiceOption,
    bucket: int = typer.Option(60, "--bucket", help="Seconds per row of the time series."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """Show a Deployment's scoring figures over time (requests, errors, latency) and its drift.

    Example: cdl monitor news-classifier
    """
    figures = kb_get(kubeconfig, kb_service, f"/v1/namespaces/{namespace}/deployments/{name}", bucket=bucket)
    try:
        st = Kube(kubeconfig).get("Deployment", name, namespace).get("status") or {}
    except typer.Exit:
        st = {}  # the resource is gone; its scoring data is still worth showing
    mon: dict[str, Any] = st.get("monitoring") or {}
    if emit({**figures, "phase": st.get("phase"), "traffic": st.get("traffic"), "monitoring": mon}, output):
        return
    table = Table(title=f"Deployment {namespace}/{name} ({st.get('phase', 'no resource')}): "
                        f"{figures['requests']} requests, {figures['errors']} errors")
    for col in ("from", "requests", "errors", "shadow", "p50 ms", "p99 ms"):
        table.add_column(col)
    for p in figures["series"]:
        table.add_row(str(p["at"])[:19], str(p["requests"]), str(p["errors"]), str(p["shadow"]),
                      f"{p['p50_ms']:.1f}", f"{p['p99_ms']:.1f}")
    console.print(table)
    if mon:
        console.print(f"  drift (PSI) {mon.get('drift', '-')}, detected {mon.get('driftDetected', '-')}, "
                      f"last retrain {mon.get('lastRetrain', '-')}", highlight=False)
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
