"""Commands for the data scientist: `cdl experiments compare`, `cdl experiments study` and `cdl logs`,
read through the knowledge base API (the operator's, behind the API server's service proxy): a
kubeconfig is all they need, from any directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cdl.cli.common import EXIT_PLATFORM, EXIT_USER, OutputFormat, console, emit, err_console
from cdl.cli.kube import Kube, KubeconfigOption, NamespaceOption
from cdl.errors import CdlError

DataDirOption = typer.Option(Path(".cdl"), "--data-dir", "-d", help="The embedded platform's data directory.")
experiments_app = typer.Typer(help="Look into Experiments: trials side by side.", no_args_is_help=True)
KBServiceOption = typer.Option(None, "--kb-service", envvar="CDL_KB_SERVICE",
                                help="The knowledge base Service, NAMESPACE/NAME[:PORT] (default cdl-system/cdl-kb:http).")


def kb_get(kubeconfig: str | None, service: str | None, path: str, *, text: bool = False, raw: bool = False,
           **params: Any) -> Any:
    """GET from the knowledge base through the service proxy; a clear message and exit code on failure."""
    from cdl.kb.client import KBClient, KBError

    client = KBClient(Kube(kubeconfig).api, service)
    try:
        if raw:
            return client.bytes(path, **params)
        return client.text(path, **params) if text else client.json(path, **params)
    except KBError as exc:
        err_console.print(str(exc))
        raise typer.Exit(EXIT_USER if 400 <= exc.status < 500 else EXIT_PLATFORM)


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
    trials: str = typer.Option(None, "--trials", "-t", help="Only these trials, comma-separated (e.g. 3,7)."),
    run: str = typer.Option(None, "--run", help="A run id; default the Experiment's latest run."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    kb_service: str = KBServiceOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """Print an Experiment's trials side by side, best first: hyperparameters, metrics, resources.

    Example: cdl experiments compare bbc-asha
    """
    data = kb_get(kubeconfig, kb_service, f"/v1/namespaces/{namespace}/experiments/{name}/compare",
                  run=run, trials=trials)
    rows = data["items"]
    if emit(rows, output):
        return
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields and k not in ("trial", "segments", "unit"))
    # Trials side by side: one column per trial, one row per field (best trial first).
    table = Table(title=f"Experiment {namespace}/{name}: {len(rows)} trial(s), best first (run {data['run']})")
    table.add_column("trial", style="bold")
    for row in rows:
        table.add_column(str(row["trial"]), overflow="fold")
    for field in fields:
        table.add_row(field.removeprefix("hp."), *(_fmt(row.get(field)) for row in rows))
    console.print(table)


@experiments_app.command("study")
def study_cmd(
    name: str = typer.Argument(..., help="Experiment name (a finished search)."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    data_dir: Path = DataDirOption,
    database_url: str = typer.Option(
        None, "--database-url", envvar="CDL_DATABASE_URL",
        help="Read the search from this Experiment Registry (PostgreSQL); default the local engine's state.",
    ),
    plot: Path = typer.Option(None, "--plot", help="Also write a PNG: curves with stop points, compute per rule."),
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """Replay a finished search under each early-stopping rule (none, patience, budgets, median,
    predict, resources, ASHA): trial-epochs and CPU seconds each would have spent, the best metric
    it would have kept, and whether it would have stopped the eventual winner. No new training.

    Example: cdl experiments study bbc-random --plot study.png
    """
    from cdl.engines.training import study
    from cdl.engines.training.local.state import load

    status = Kube(kubeconfig).get("Experiment", name, namespace).get("status") or {}
    run_id = (status.get("engineRef") or {}).get("id")
    if not run_id:
        err_console.print(f"the Experiment has not been submitted yet (phase {status.get('phase')})")
        raise typer.Exit(EXIT_USER)
    try:
        if database_url:
            from cdl.stores.postgres import Database

            with Database(database_url) as db:
                search = study.from_database(db, run_id)
        else:
            path = data_dir / "training" / "runs" / run_id / "run.json"
            if not path.exists():
                err_console.print(f"no local training state at {path}; pass --database-url to read the registry")
                raise typer.Exit(EXIT_PLATFORM)
            search = study.from_run_state(load(path))
    except CdlError as exc:
        err_console.print(str(exc))
        raise typer.Exit(EXIT_USER)
    _study_output(search, output, plot, f"Experiment {namespace}/{name}")


def _study_output(search: Any, output: OutputFormat, plot: Path | None, title: str) -> None:
    from cdl.engines.training import study

    if not search.trials or not any(t.curve.scored() for t in search.trials):
        err_console.print(f"run {search.run_id} recorded no validation of {search.metric!r}: nothing to replay")
        raise typer.Exit(EXIT_USER)
    figures = study.study(search)
    rows = study.rows(search, figures)
    if plot is not None:
        try:
            study.plot(search, figures, str(plot))
        except RuntimeError as exc:
            err_console.print(str(exc))
            raise typer.Exit(EXIT_PLATFORM)
    if emit(rows, output):
        return
    unit = search.unit
    table = Table(title=f"{title}: {len(search.trials)} trial(s) replayed under each stopping rule "
                        f"({search.metric}, {'smaller' if search.smaller else 'larger'} is better)")
    table.add_column("rule", no_wrap=True)
    for col in (f"trial-{unit}", "%", "CPU s", "%", "best", "Δ best", "stopped", "winner"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["rule"], _fmt(r[f"trial_{unit}"]), _pct(r.get(f"{unit}_vs_none")), _fmt(r["cpu_seconds"]),
            _pct(r.get("cpu_vs_none")), _fmt(r["best"]), _fmt(r.get("best_delta")), str(r["stopped_trials"]),
            "yes" if r["winner_stopped"] else "no",
        )
    console.print(table)
    console.print(f"%: share of no stopping; best: best {search.metric} kept; winner: whether the rule stops the "
                  "trial that won without stopping", markup=False, highlight=False)
    for r in rows:
        if r["settings"]:
            console.print(f"  {r['rule']}: {r['settings']}", markup=False, highlight=False)
    if plot is not None:
        console.print(f"plot written to {plot}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def logs(
    name: str = typer.Argument(..., help="Experiment name."),
    trial: str = typer.Option(None, "--trial", "-t", help="A trial id; default the run's own log."),
    run: str = typer.Option(None, "--run", help="A run id; default the Experiment's latest run."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    kb_service: str = KBServiceOption,
) -> None:
    """Print a trial's output (stdout and stderr, tracebacks included), or the run's log.

    Example: cdl logs bbc-asha --trial 3
    """
    text = kb_get(kubeconfig, kb_service, f"/v1/namespaces/{namespace}/experiments/{name}/logs", text=True,
                  trial=trial, run=run)
    console.print(text, markup=False, highlight=False, end="")


def register(app: typer.Typer) -> None:
    app.add_typer(experiments_app, name="experiments")
    app.command("logs")(logs)
