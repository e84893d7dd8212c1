"""The `cdl` command: one Typer app; each module in cdl.cli registers its own commands."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from cdl import __version__
from cdl.cli import (
    crds,
    dashboard,
    demo,
    experiments,
    labels,
    models,
    operator_cmd,
    platform,
    push,
    resources,
    sharing,
    validate,
)
from cdl.cli.common import EXIT_PLATFORM

DEBUG_ENV = "CDL_DEBUG"  # set to 1 for the traceback of an unexpected error


def one_line_error(exc: BaseException) -> str:
    """What went wrong, in one line: the first line of the error, with its kind, and for an API
    or endpoint that does not answer, what to check."""
    text = (str(exc).strip().splitlines() or [""])[0][:400]
    kind = type(exc).__name__
    unreachable = "Connection refused" in str(exc) or isinstance(exc, ConnectionError) or kind in (
        "MaxRetryError", "NewConnectionError", "URLError", "ClientConnectorError")
    hint = "; is the platform up (cdl up) and KUBECONFIG pointing at it?" if unreachable else ""
    return f"error: {kind}: {text}{hint}"


class Cdl(typer.Typer):
    """The Typer app, ending every command with a one-line error rather than a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            print(f"{one_line_error(exc)} (set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
            sys.exit(EXIT_PLATFORM)


app = Cdl(
    name="cdl",
    help="Continuous Deep Learning: declare data, experiments, models and deployments as Kubernetes resources.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


@app.command()
def version() -> None:
    """Print the cdl version.

    Example: cdl version
    """
    typer.echo(__version__)


platform.register(app)
crds.register(app)
validate.register(app)
operator_cmd.register(app)
resources.register(app)
models.register(app)
experiments.register(app)
demo.register(app)
labels.register(app)
dashboard.register(app)
sharing.register(app)
push.register(app)

if __name__ == "__main__":
    app()
