"""`cdl crds generate|check`: the CRD YAML files come from the models in cdl.api."""

from __future__ import annotations

from pathlib import Path

import typer

from cdl.api.crdgen import generate, stale
from cdl.cli.common import EXIT_USER, console, err_console, project_root

crds_app = typer.Typer(help="Generate or check the CustomResourceDefinitions in crds/.", no_args_is_help=True)


@crds_app.command("generate")
def generate_cmd(
    out: Path = typer.Option(None, "--out", "-o", help="Directory to write; default <repo>/crds and the Helm chart's crds/."),
) -> None:
    """Write one CRD file per kind from the resource models.

    Example: cdl crds generate --out crds/
    """
    targets = [out] if out else [project_root() / "crds", project_root() / "charts" / "cdl" / "crds"]
    for target in targets:
        for path in generate(target):
            console.print(f"wrote {path}")


@crds_app.command("check")
def check_cmd(
    directory: Path = typer.Option(None, "--dir", "-d", help="Directory to compare; default <repo>/crds."),
) -> None:
    """Exit 1 when the checked-in CRDs differ from what the models generate.

    Example: cdl crds check
    """
    target = directory or project_root() / "crds"
    out_of_date = stale(target)
    if out_of_date:
        err_console.print(f"stale CRDs in {target}: {', '.join(out_of_date)}; run `cdl crds generate`")
        raise typer.Exit(EXIT_USER)
    console.print(f"CRDs in {target} are up to date")


docs_app = typer.Typer(help="Generate documentation from the resource models.", no_args_is_help=True)


@docs_app.command("reference")
def reference_cmd(
    out: Path = typer.Option(None, "--out", "-o", help="File to write; default <repo>/docs/reference.md."),
) -> None:
    """Write the resource reference (every field, type, default, constraint) as Markdown.

    Example: cdl docs reference
    """
    from cdl.api.reference import render

    target = out or project_root() / "docs" / "reference.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render())
    console.print(f"wrote {target}")


def register(app: typer.Typer) -> None:
    app.add_typer(crds_app, name="crds")
    app.add_typer(docs_app, name="docs")
