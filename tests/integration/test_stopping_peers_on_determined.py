"""The comparing stopping rules inside a Determined trial read the other trials' curves from the
master (GetExperimentTrials, paginated, and GetValidationMetrics, streamed): here from the fake
Determined master, which answers with the SDK's own wire shapes, for an experiment the real
Determined training engine submitted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdl.engines.training.determined import DeterminedTrainingEngine
from cdl.runtime.stopping import guard as guard_module
from cdl.simulation.determined import FakeDeterminedMaster
from tests.integration.test_engine_determined import request_for, settings_for
from tests.plugins.cluster_fakes import DET_PASSWORD, DET_USER

EPOCHS = 6
SPEC = {
    "model": {"path": "model", "image": "registry.example.com/cdl/bbc-train:0.1.0", "entrypoint": "model_def:NewsTrial"},
    "hyperparameters": {"learning_rate": {"type": "log", "minval": -3.5, "maxval": -2, "base": 10},
                        "dropout": {"type": "double", "minval": 0.1, "maxval": 0.5}},
    "searcher": {"name": "random", "metric": "validation_loss", "smallerIsBetter": True, "maxTrials": 5,
                 "maxLength": {"epochs": EPOCHS},
                 "earlyStopping": {"predict": {"minCompletedTrials": 2}}},
    "seed": 7,
}


def loss(hparams: dict[str, Any], epochs: int) -> float:
    """A learning curve per trial: lower dropout ends lower."""
    return round(0.2 + hparams["dropout"] + 1.0 / epochs, 6)


def test_a_trial_reads_its_peers_curves_from_the_master_and_stops_on_them(
        cluster_det_master: FakeDeterminedMaster, tmp_path: Path, monkeypatch) -> None:
    from determined.experimental import client

    engine = DeterminedTrainingEngine(settings_for(cluster_det_master, tmp_path))
    ref = engine.submit(request_for(tmp_path, SPEC))
    exp = cluster_det_master.experiments[int(ref.id)]
    # What the engine put in the trial's environment configures the guard inside the trial.
    env = dict(v.split("=", 1) for v in exp.config["environment"]["environment_variables"])
    assert json.loads(env["CDL_EARLY_STOPPING"])["predict"]["minCompletedTrials"] == 2
    cluster_det_master.complete(int(ref.id), loss)
    own = exp.trials[0]
    own.state = "STATE_RUNNING"  # this trial is still training; the four others completed

    session = client.Determined(cluster_det_master.url, DET_USER, DET_PASSWORD)._session
    monkeypatch.setenv("CDL_METRIC", env["CDL_METRIC"])
    peers = guard_module.determined_peers(session, int(ref.id), own.id, "epochs")()

    # Every completed trial (more than one page of GetExperimentTrials), its whole curve.
    assert sorted(int(c.trial_id) for c in peers) == sorted(t.id for t in exp.trials[1:])
    for curve in peers:
        trial = next(t for t in exp.trials if t.id == int(curve.trial_id))
        assert curve.completed
        assert [(p.units, p.value) for p in curve.points] == [(k, loss(trial.hparams, k)) for k in range(1, EPOCHS + 1)]
    assert ("GET", "/api/v1/trials/metrics/validation_metrics") in cluster_det_master.requests

    # The guard of a trial far behind them stops it, its reason carrying the prediction.
    guard = guard_module.TrialGuard.from_env(env | {"CDL_TRIAL_ID": str(own.id)},
                                             peers=guard_module.determined_peers(session, int(ref.id), own.id,
                                                                                 "epochs"))
    assert guard is not None
    decision = None
    for epoch in range(1, EPOCHS):
        decision = guard.observe({"validation_loss": 3.0 + 1.0 / epoch, "epochs": epoch}, 10 * epoch)
        if decision is not None:
            break
    assert decision is not None and decision.rule == "predict", decision
    assert decision.reason.startswith("predicted: predicted final validation_loss ")
    assert "(50% interval, calibrated on 4 completed trials) after 1 epochs of 6 epochs" in decision.reason
