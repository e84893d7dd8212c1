"""`cdl up`, `cdl status`, `cdl down`: the embedded platform on this machine.

`up` starts each entry of PLATFORM_COMPONENTS in order (today: the control plane; PostgreSQL and
the operator join the list later) and prints the `export KUBECONFIG=...` line on stdout, so that
`eval "$(cdl up)"` works; progress goes to stderr. `down` stops them in reverse order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.table import Table

from cdl import embedded
from cdl.cli.common import EXIT_OK, EXIT_PLATFORM, EXIT_USER, OutputFormat, console, err_console, project_root
from cdl.devcluster import process
from cdl.files import PRIVATE_UMASK, make_private

DEFAULT_DATA_DIR = Path(".cdl")


@dataclass
class UpContext:
    """What `cdl up` was asked for, and what earlier components produced for later ones."""

    data_dir: Path
    port: int | None
    crds_dir: Path | None
    cluster: process.ServerInfo | None = None
    database_url: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Component:
    """One piece of the embedded platform: how to start, stop and report it."""

    name: str
    start: Callable[[UpContext], str]  # returns a one-line detail for the user
    stop: Callable[[Path], bool]
    status: Callable[[Path], dict[str, object] | None]


def _start_control_plane(ctx: UpContext) -> str:
    ctx.cluster = process.start_background(ctx.data_dir, ctx.port, ctx.crds_dir)
    state = "already running" if ctx.cluster.reused else "started"
    return f"{state} at {ctx.cluster.url} (pid {ctx.cluster.pid}, log {ctx.cluster.log_file})"


def _control_plane_status(data_dir: Path) -> dict[str, object] | None:
    info = process.read_status(data_dir)
    if info is None:
        return None
    return {"url": info.url, "pid": info.pid, "kubeconfig": str(info.kubeconfig), "log": str(info.log_file)}


def _start_postgres(ctx: UpContext) -> str:
    ctx.database_url = embedded.start_postgres(ctx.data_dir)
    return f"ready (log {ctx.data_dir / 'logs' / 'postgres.log'})"


def _start_operator(ctx: UpContext) -> str:
    assert ctx.cluster is not None
    started = embedded.start_operator(ctx.data_dir, ctx.cluster.kubeconfig, project_root(), ctx.database_url)
    state = started.detail or "started"
    return f"{state} with the local engines (pid {started.pid}, log {started.log})"


def _component_status(name: str) -> Callable[[Path], dict[str, object] | None]:
    def status(data_dir: Path) -> dict[str, object] | None:
        found = next(c for c in embedded.status(data_dir) if c.name == name)
        if not found.running:
            return None
        return {"url": "", "pid": found.pid, "kubeconfig": "", "log": str(found.log)}
    return status


def _stopper(name: str) -> Callable[[Path], bool]:
    return lambda data_dir: embedded.stop_component(data_dir, name)


def _no_start(ctx: UpContext) -> str:
    return "started by the operator on demand"


def _model_servers_status(data_dir: Path) -> dict[str, object] | None:
    return None


# The platform, in start order; each gets the UpContext, so the operator can use
# ctx.cluster.kubeconfig and ctx.database_url. `down` stops them in reverse order.
PLATFORM_COMPONENTS: list[Component] = [
    Component("control plane", _start_control_plane, process.stop, _control_plane_status),
    Component("postgres", _start_postgres, _stopper("postgres"), _component_status("postgres")),
    Component("model servers", _no_start, embedded.stop_model_servers, _model_servers_status),
    Component("operator", _start_operator, _stopper("operator"), _component_status("operator")),
]


def _data_dir_option() -> Path:
    return typer.Option(DEFAULT_DATA_DIR, "--data-dir", "-d", help="Where the platform keeps its state.")


def up(
    data_dir: Path = _data_dir_option(),
    port: int = typer.Option(None, "--port", "-p", help="API server port; default: the last one, else a free one."),
    crds: Path = typer.Option(None, "--crds", help="Directory of CRD YAML to install; default <repo>/crds."),
) -> None:
    """Start the embedded platform in the background and print the KUBECONFIG to use.

    Example: eval "$(cdl up --data-dir .cdl)" && kubectl get crds
    """
    if port is not None and not 0 < port < 65536:
        err_console.print(f"[red]--port {port} is not a TCP port[/red]")
        raise typer.Exit(EXIT_USER)
    if crds is not None and not crds.is_dir():
        err_console.print(f"[red]--crds {crds} is not a directory[/red]")
        raise typer.Exit(EXIT_USER)
    crds_dir = crds if crds is not None else project_root() / "crds"
    # the data directory holds every Secret (state.db), the API token and the databases: its
    # owner's alone, and so is everything the platform's processes create in it
    os.umask(PRIVATE_UMASK)
    make_private(data_dir.resolve())
    ctx = UpContext(data_dir.resolve(), port, crds_dir if crds_dir.is_dir() else None)
    for component in PLATFORM_COMPONENTS:
        try:
            with err_console.status(f"starting {component.name}"):
                detail = component.start(ctx)
        except (process.DevClusterError, RuntimeError) as e:
            err_console.print(f"[red]{component.name} failed:[/red] {e}")
            raise typer.Exit(EXIT_PLATFORM)
        err_console.print(f"[green]✓[/green] {component.name} {detail}")
    assert ctx.cluster is not None
    err_console.print(f"kubeconfig: {ctx.cluster.kubeconfig}")
    typer.echo(f"export KUBECONFIG={ctx.cluster.kubeconfig}")


def status(
    data_dir: Path = _data_dir_option(),
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o", help="table, json or yaml."),
) -> None:
    """Show whether each platform component runs; exit 3 when the control plane is down.

    Example: cdl status --data-dir .cdl -o json
    """
    rows = {c.name: c.status(data_dir.resolve()) for c in PLATFORM_COMPONENTS}
    if output == OutputFormat.json:
        typer.echo(json.dumps({name: info or {"running": False} for name, info in rows.items()}, indent=2))
    elif output == OutputFormat.yaml:
        import yaml
        typer.echo(yaml.safe_dump({name: info or {"running": False} for name, info in rows.items()}, sort_keys=False))
    else:
        table = Table("component", "state", "url", "pid", "kubeconfig")
        for name, info in rows.items():
            if info is None:
                table.add_row(name, "[red]stopped[/red]", "", "", "")
            else:
                table.add_row(name, "[green]running[/green]", str(info["url"]), str(info["pid"]), str(info["kubeconfig"]))
        console.print(table)
    if rows[PLATFORM_COMPONENTS[0].name] is None:
        raise typer.Exit(EXIT_PLATFORM)
    raise typer.Exit(EXIT_OK)


def down(data_dir: Path = _data_dir_option()) -> None:
    """Stop the embedded platform; its state stays in the data directory for the next `cdl up`.

    Example: cdl down --data-dir .cdl
    """
    failed = False
    for component in reversed(PLATFORM_COMPONENTS):
        if component.stop is process.stop:  # the last moment the API server answers
            marked = embedded.mark_deployments_stopped(data_dir.resolve())
            if marked:
                err_console.print(f"deployments: {marked} marked Deploying until they answer again")
        try:
            stopped = component.stop(data_dir.resolve())
        except OSError as e:
            err_console.print(f"[red]{component.name}: {e}[/red]")
            failed = True
            continue
        err_console.print(f"{component.name}: {'stopped' if stopped else 'was not running'}")
    if failed:
        raise typer.Exit(EXIT_PLATFORM)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)


def _standalone() -> typer.Typer:
    app = typer.Typer(help="The embedded cdl platform.", no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    return app


if __name__ == "__main__":
    _standalone()()
