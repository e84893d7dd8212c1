"""The `cdl` command: one Typer app; each module in cdl.cli registers its own commands."""

from __future__ import annotations

import typer

from cdl import __version__
from cdl.cli import crds, demo, experiments, labels, models, operator_cmd, platform, push, resources, validate

app = typer.Typer(
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
push.register(app)

if __name__ == "__main__":
    app()
