"""`cdl get`: the four kinds side by side with the figures that matter."""

from __future__ import annotations

import typer
from rich.table import Table

from cdl.api.kinds import KINDS, lookup
from cdl.cli.common import EXIT_USER, OutputFormat, console, emit, err_console
from cdl.cli.kube import Kube, KubeconfigOption


def _value(obj: dict, path: str) -> str:
    node = obj
    for part in path.strip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    return "" if node is None else str(node)


def get(
    kind: str = typer.Argument("cdl", help="A kind (datapipelines, exp, mv, mdep...) or cdl for all four."),
    name: str = typer.Argument(None, help="Only this resource."),
    namespace: str = typer.Option("default", "--namespace", "-n"),
    all_namespaces: bool = typer.Option(False, "--all-namespaces", "-A"),
    kubeconfig: str = KubeconfigOption,
    output: OutputFormat = typer.Option(OutputFormat.table, "--output", "-o"),
) -> None:
    """List cdl resources with their phase and key figures.

    Example: cdl get exp -n ml-team
    """
    try:
        infos = KINDS if kind == "cdl" else (lookup(kind),)
    except KeyError as exc:
        err_console.print(str(exc.args[0]))
        raise typer.Exit(EXIT_USER)
    kube = Kube(kubeconfig)
    rows = []
    for info in infos:
        for obj in kube.list(info, None if all_namespaces else namespace):
            if name and obj["metadata"]["name"] != name:
                continue
            rows.append((info, obj))
    if emit([obj for _, obj in rows], output):
        return
    table = Table()
    for col in ("KIND", "NAMESPACE", "NAME", "PHASE", "DETAIL", "MESSAGE"):
        table.add_column(col, overflow="fold")
    for info, obj in rows:
        detail = "  ".join(f"{c.name}={_value(obj, c.json_path)}" for c in info.columns
                           if c.name not in ("Phase", "Age", "Message") and _value(obj, c.json_path))
        table.add_row(info.kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"],
                      _value(obj, ".status.phase"), detail, _value(obj, ".status.message"))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("get")(get)
