"""`cdl experiments study` on a synthetic recorded search: figures per rule, JSON and the plot."""

from __future__ import annotations

import json

import numpy as np

from cdl.cli.common import OutputFormat, console
from cdl.cli.experiments import _study_output
from cdl.engines.training import study
from cdl.runtime.stopping import Curve, Point

EPOCHS = 12


def recorded() -> study.RecordedSearch:
    """Eight trials of a larger-is-better metric, 12 epochs each, 1 CPU second per epoch plus
    1 s start-up; trial 3 is the winner, trials 5-7 learn little."""
    ends = [0.80, 0.85, 0.83, 0.93, 0.86, 0.40, 0.45, 0.35]
    trials = []
    for i, end in enumerate(ends):
        rng = np.random.default_rng(i)
        c = end + 0.5 * EPOCHS ** -0.7
        points = [Point(x, float(c - 0.5 * x ** -0.7 + rng.normal(0, 0.002)), cpu_seconds=1.0 + x,
                        wall_seconds=1.0 + x) for x in range(1, EPOCHS + 1)]
        trials.append(study.RecordedTrial(str(i + 1), Curve(str(i + 1), points, True), "succeeded", None,
                                          EPOCHS, 1.0 + EPOCHS, 1.0 + EPOCHS))
    spec = {"searcher": {"name": "random", "metric": "accuracy", "smallerIsBetter": False, "maxTrials": 8,
                         "maxLength": {"epochs": EPOCHS}}}
    return study.RecordedSearch("run-1", spec, trials)


def test_every_rule_is_replayed_with_its_cost_and_what_it_keeps() -> None:
    search = recorded()
    figures = {f.rule: f for f in study.study(search)}
    assert list(figures) == list(study.RULES)
    none = figures["none"]
    assert none.trial_units == 8 * EPOCHS and none.cpu_seconds == 8 * (1.0 + EPOCHS) and none.stopped == 0
    assert none.best == max(t.curve.best(False) for t in search.trials)
    for rule in ("median", "predict", "asha"):
        f = figures[rule]
        assert f.trial_units < none.trial_units and f.cpu_seconds < none.cpu_seconds, rule
        assert f.best == none.best and not f.winner_stopped, rule  # the winner (trial 4) survives
    stopped = {k.trial_id for k in figures["predict"].trials if k.stopped}
    assert {"6", "7", "8"} <= stopped  # the hopeless trials stop once three trials completed
    # A stopped trial's CPU is what its resource series says at the stop, start-up included.
    k = next(k for k in figures["predict"].trials if k.trial_id == "6")
    assert k.cpu_seconds == 1.0 + k.stopped_at


def test_study_prints_json_and_writes_a_png(tmp_path) -> None:
    png = tmp_path / "study.png"
    with console.capture() as out:
        _study_output(recorded(), OutputFormat.json, png, "Experiment ml/toy")
    rows = json.loads(out.get())
    assert [r["rule"] for r in rows] == list(study.RULES)
    assert rows[0]["epochs_vs_none"] == 1.0 and all("winner_stopped" in r for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with console.capture() as out:
        _study_output(recorded(), OutputFormat.table, None, "Experiment ml/toy")
    assert "replayed under each stopping rule" in out.get() and "predict" in out.get()
