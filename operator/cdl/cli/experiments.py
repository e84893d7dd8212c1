"""Commands for the data scientist: `cdl experiments compare` and `cdl logs`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cdl.cli.common import EXIT_PLATFORM, EXIT_USER, OutputFormat, console, emit, err_console
from cdl.cli.kube import Kube, KubeconfigOption, NamespaceOption
from cdl.errors import CdlError

experiments_app = typer.Typer(help="Look into Experiments: trials side by side.", no_args_is_help=True)
DataDirOption = typer.Option(Path(".cdl"), "--data-dir", "-d", help="The embedded platform's data directory.")


def _source(status: dict[str, Any], data_dir: Path) -> tuple[Any, str]:
    """Where the trials live: the local engine's state, or the experiment registry in PostgreSQL."""
    ref = status.get("engineRef") or {}
    if not ref.get("id"):
        err_console.print(f"the Experiment has not been submitted yet (phase {status.get('phase')})")
        raise typer.Exit(EXIT_USER)
    root = data_dir / "training"
    if (root / "runs").is_dir():
        return root, ref["id"]
    url = os.environ.get("CDL_DATABASE_URL")
    if url:
        from cdl.stores.postgres import Database

        return Database(url), ref["id"]
    err_console.print(f"no local training state under {root} and no CDL_DATABASE_URL to read the registry from")
    raise typer.Exit(EXIT_PLATFORM)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value > 10_000_000:
        return f"{value / 2**20:.0f} MiB"
    return str(value)


@experiments_app.command("compare")
def compare_cmd(
    name: str = typer.Argument(..., help="Experiment name."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    data_dir: Path = DataDirOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """Print an Experiment's trials side by side, best first: hyperparameters, metrics, resources.

    Example: cdl experiments compare bbc-asha
    """
    from cdl.engines.training.local import compare

    status = Kube(kubeconfig).get("Experiment", name, namespace).get("status") or {}
    source, run_id = _source(status, data_dir)
    try:
        rows = compare(source, run_id)
    except CdlError as exc:
        err_console.print(str(exc))
        raise typer.Exit(EXIT_USER)
    if emit(rows, output):
        return
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields and k not in ("trial", "segments", "unit"))
    # Trials side by side: one column per trial, one row per field (best trial first).
    table = Table(title=f"Experiment {namespace}/{name}: {len(rows)} trial(s), best first")
    table.add_column("trial", style="bold")
    for row in rows:
        table.add_column(str(row["trial"]), overflow="fold")
    for field in fields:
        table.add_row(field.removeprefix("hp."), *(_fmt(row.get(field)) for row in rows))
    console.print(table)


def logs(
    name: str = typer.Argument(..., help="Experiment name."),
    trial: str = typer.Option(None, "--trial", "-t", help="A trial id; default the run's own log."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    data_dir: Path = DataDirOption,
) -> None:
    """Print a trial's output (stdout and stderr, tracebacks included), or the run's log.

    Example: cdl logs bbc-asha --trial 3
    """
    from cdl.engines.training.local import logs as trial_logs

    status = Kube(kubeconfig).get("Experiment", name, namespace).get("status") or {}
    source, run_id = _source(status, data_dir)
    if not isinstance(source, Path):
        err_console.print("trial logs of a cluster engine are in its own UI: " + (status.get("engineRef") or {}).get(
            "url", "see status.engineRef.url"))
        raise typer.Exit(EXIT_USER)
    try:
        console.print(trial_logs(source, run_id, trial), markup=False, highlight=False, end="")
    except CdlError as exc:
        err_console.print(str(exc))
        raise typer.Exit(EXIT_USER)


def register(app: typer.Typer) -> None:
    app.add_typer(experiments_app, name="experiments")
    app.command("logs")(logs)
