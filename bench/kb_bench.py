"""Knowledge base: what a query costs as the registry grows, served by PostgreSQL vs. fetched and
filtered in Python (the baseline: what a client without the query language would do).

One run with N trials (hyperparameters, best metrics, model facts as the local engine records
them) in an embedded PostgreSQL. For each query, the median over --repeat runs of:
- `kb`: `Catalog.trials(..., query=Q, limit=50)`, the compiled, parameterised statement;
- `python`: every trial row fetched (`Database.trials`) and filtered in Python;
and the ratio python/kb, measured side by side in this process.

    .venv/bin/python bench/kb_bench.py [--trials 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from psycopg.types.json import Jsonb  # noqa: E402

from cdl.kb.catalog import Catalog, Page  # noqa: E402
from cdl.stores.embedded_postgres import EmbeddedPostgres  # noqa: E402
from cdl.stores.postgres import Database  # noqa: E402
from cdl.stores.records import ExperimentRun, TrialRecord  # noqa: E402

QUERIES = {
    "epochs > 10 && optimizer = Adam && accuracy > 0.9":
        lambda t: t.hparams["epochs"] > 10 and t.hparams["optimizer"] == "Adam" and t.best_metric > 0.9,
    "lr <= 0.001": lambda t: t.hparams["lr"] <= 0.001,
    "model.layer_count >= 5 || state = failed":
        lambda t: t.metadata["model"]["layer_count"] >= 5 or t.state == "failed",
}


def fill(db: Database, trials: int) -> str:
    run = "bench.kb.g1"
    db.record_run(ExperimentRun(run_id=run, namespace="bench", experiment="kb", engine="local", state="completed",
                                spec={"searcher": {"metric": "accuracy", "smallerIsBetter": False}}))
    rng = random.Random(0)
    with db.transaction() as cur:
        for i in range(trials):
            acc = rng.random()
            record = TrialRecord(
                run_id=run, trial_id=str(i + 1), state="failed" if rng.random() < 0.05 else "completed",
                hparams={"epochs": rng.randint(1, 30), "optimizer": rng.choice(["Adam", "SGD", "AdamW"]),
                         "lr": 10 ** rng.uniform(-5, -1)},
                metadata={"best_metrics": {"accuracy": acc}, "model": {"parameters": rng.randint(1000, 10**7),
                                                                       "layer_count": rng.randint(1, 8)}},
                best_metric=acc, wall_seconds=rng.uniform(10, 1000))
            cur.execute(
                "INSERT INTO trials (run_id, trial_id, state, hparams, metadata, best_metric, wall_seconds) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (record.run_id, record.trial_id, record.state, Jsonb(record.hparams), Jsonb(record.metadata),
                 record.best_metric, record.wall_seconds))
    return run


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cdl-kb-bench-") as tmp, EmbeddedPostgres(Path(tmp) / "pg") as pg:
        db = Database(pg.url)
        db.migrate()
        run = fill(db, args.trials)
        catalog = Catalog(db)
        print(f"{args.trials} trials, median of {args.repeat}")
        print(f"{'query':52} {'matches':>8} {'kb ms':>8} {'python ms':>10} {'ratio':>6}")
        for query, keep in QUERIES.items():
            found = catalog.trials("bench", "kb", query=query, page=Page(limit=50))
            expected = sum(1 for t in db.trials(run) if keep(t))
            assert found["total"] == expected, (query, found["total"], expected)
            kb = timed(lambda q=query: catalog.trials("bench", "kb", query=q, page=Page(limit=50)), args.repeat)
            py = timed(lambda k=keep: sorted((t for t in db.trials(run) if k(t)),
                                             key=lambda t: -(t.best_metric or 0))[:50], args.repeat)
            print(f"{query:52} {expected:>8} {kb * 1000:>8.1f} {py * 1000:>10.1f} {py / kb:>6.1f}")
        db.close()


if __name__ == "__main__":
    main()
