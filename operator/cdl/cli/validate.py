"""`cdl validate -f FILE|DIR|-`: offline checks against the CRD schemas and the semantic rules."""

from __future__ import annotations

import typer

from cdl.api.validation import validate_targets
from cdl.cli.common import EXIT_USER, console


def validate(
    filenames: list[str] = typer.Option(..., "--filename", "-f", help="File, directory or - for stdin; repeatable."),
) -> None:
    """Check cdl manifests offline; print one line per problem and exit 1 if there is any.

    Example: cdl validate -f usecases/bbc-news/manifests/
    """
    checked, problems = validate_targets(filenames)
    for problem in problems:
        console.print(str(problem), markup=False, highlight=False, soft_wrap=True)
    if problems:
        console.print(f"{len(problems)} problem(s) in {checked} resource(s)", style="red")
        raise typer.Exit(EXIT_USER)
    console.print(f"{checked} resource(s) valid", style="green")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
