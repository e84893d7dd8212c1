"""`cdl labels export`: a Label Studio project's finished annotations into a PostgreSQL labels table.

One row per annotated item (the latest annotation that was not skipped): label, path in the data
repo, repo and commit, labeler, annotated at, split, project and task id. Rows are upserted, so
running it again rewrites the same rows. The operator does the same after each sync; this command
is for a data engineer or a cron job. It lives in the CLI, not in `pipelines/` (which holds only
steps that run under /pfs), because it drives the Label Studio engine.

Secrets come from the environment, never from the command line (which `ps` shows).
"""

from __future__ import annotations

import os

import typer

from cdl.cli.common import EXIT_PLATFORM, EXIT_USER, err_console

labels_app = typer.Typer(help="Labels exported from Label Studio.", no_args_is_help=True)


@labels_app.command("export")
def export(
    project: str = typer.Option(..., "--project", help="Label Studio project title"),
    url: str = typer.Option(os.environ.get("LABEL_STUDIO_URL", ""), "--url",
                            help="Label Studio base URL (default $LABEL_STUDIO_URL)"),
    table: str = typer.Option("labels", "--table", help="labels table (created if missing)"),
    token_env: str = typer.Option("LABEL_STUDIO_TOKEN", "--token-env",
                                  help="environment variable holding the API token"),
    database_url_env: str = typer.Option("CDL_DATABASE_URL", "--database-url-env",
                                         help="environment variable holding the PostgreSQL URL"),
) -> None:
    """Export finished annotations of a Label Studio project into a PostgreSQL table (idempotent).

    Example: LABEL_STUDIO_TOKEN=... CDL_DATABASE_URL=postgresql://... cdl labels export --url http://127.0.0.1:8080 --project bbc-news --table bbc_news_labels
    """
    token = os.environ.get(token_env, "")
    database_url = os.environ.get(database_url_env, "")
    missing = [name for name, value in (("--url", url), (f"${token_env}", token),
                                        (f"${database_url_env}", database_url)) if not value]
    if missing:
        err_console.print(f"error: {', '.join(missing)} not set", markup=False, highlight=False)
        raise typer.Exit(EXIT_USER)
    from cdl.engines.labeling.labelstudio import LabelStudioEngine
    from cdl.errors import PermanentEngineError, TransientError

    try:
        tasks, rows = LabelStudioEngine().export(url, token, project, database_url, table)
    except (PermanentEngineError, ValueError) as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER) from None
    except TransientError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_PLATFORM) from None
    print(f"project {project}: {tasks} task(s), {rows} labeled row(s) exported to table {table}")


def register(app: typer.Typer) -> None:
    app.add_typer(labels_app, name="labels")
