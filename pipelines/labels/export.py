"""Export a Label Studio project's finished annotations into a PostgreSQL labels table.

One row per annotated item (the latest annotation that was not skipped): label, path in the data
repo, repo and commit, labeler, annotated at, split, project and task id. Rows are upserted, so
running it again rewrites the same rows. The operator does the same after each sync; this CLI
is for a data engineer, a cron job or a Pachyderm pipeline.

Secrets come from the environment, never from the command line (which `ps` shows):

    LABEL_STUDIO_TOKEN=... CDL_DATABASE_URL=postgresql://... \\
    python -m pipelines.labels.export --url http://127.0.0.1:8080 --project bbc-news --table bbc_news_labels

Exit status: 0 exported, 1 bad input or nothing to export from, 3 Label Studio or PostgreSQL failed.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.labels.export",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example:\n  LABEL_STUDIO_TOKEN=... CDL_DATABASE_URL=... python -m "
                                            "pipelines.labels.export --url http://127.0.0.1:8080 --project bbc-news")
    parser.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL", ""),
                        help="Label Studio base URL (default $LABEL_STUDIO_URL)")
    parser.add_argument("--project", required=True, help="project title")
    parser.add_argument("--table", default="labels", help="labels table (created if missing; default labels)")
    parser.add_argument("--token-env", default="LABEL_STUDIO_TOKEN",
                        help="environment variable holding the API token (default LABEL_STUDIO_TOKEN)")
    parser.add_argument("--database-url-env", default="CDL_DATABASE_URL",
                        help="environment variable holding the PostgreSQL URL (default CDL_DATABASE_URL)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = os.environ.get(args.token_env, "")
    database_url = os.environ.get(args.database_url_env, "")
    missing = [name for name, value in (("--url", args.url), (f"${args.token_env}", token),
                                        (f"${args.database_url_env}", database_url)) if not value]
    if missing:
        print(f"error: {', '.join(missing)} not set", file=sys.stderr)
        return 1
    from cdl.engines.labelstudio import LabelStudioEngine
    from cdl.errors import PermanentEngineError, TransientError

    try:
        tasks, rows = LabelStudioEngine().export(args.url, token, args.project, database_url, args.table)
    except (PermanentEngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TransientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(f"project {args.project}: {tasks} task(s), {rows} labeled row(s) exported to table {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
