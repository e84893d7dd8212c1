"""A trial as Determined starts it: `python3 -m cdl.runtime.launch` with only the experiment
config's environment (no CDL_TRIAL_CONFIG, no CDL_DATA_DIR), hparams from det's ClusterInfo, the
data named by CDL_DATA_URI and early stopping enforced inside the trial (docs/cluster-path.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdl.api.experiment import ExperimentSpec
from cdl.engines.base import DataRef, ResourceKey
from cdl.engines.training.determined import experiment_config
from cdl.runtime import trial
from cdl.runtime.stopping import guard as guard_module

TRAIN_PY = '''
import json, os
from cdl.runtime import trial

def main(hparams, data_dir):
    root = trial.data_dir()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    with open(os.path.join(os.environ["OUT_DIR"], "seen.json"), "w") as f:
        json.dump({"files": files, "data_dir": str(data_dir), "env": os.environ["CDL_DATA_DIR"],
                   "text": (root / "business" / "001.txt").read_text(),
                   "entrypoint": trial.info().entrypoint}, f)
'''


def spec() -> ExperimentSpec:
    return ExperimentSpec.model_validate({
        "data": {"pipelineRef": {"name": "news"}},
        "model": {"path": "model", "entrypoint": "train:main"},
        "searcher": {"name": "single", "metric": "validation_accuracy", "smallerIsBetter": False,
                     "maxLength": {"epochs": 1},
                     "earlyStopping": {"patience": 2, "minDelta": 0.01, "maxTrialSeconds": 600}},
        "hyperparameters": {"lr": 0.1},
        "checkpointStorage": {"uri": "file:///shared/checkpoints"},
    })


def determined_env(config: dict[str, Any]) -> dict[str, str]:
    """What a trial container's environment holds of the experiment config."""
    return dict(item.split("=", 1) for item in config["environment"]["environment_variables"])


@pytest.mark.slow
def test_a_function_trial_runs_with_only_what_determined_gives_it(cluster_pachd: Any, tmp_path: Path) -> None:
    from pachyderm_sdk import Client
    from pachyderm_sdk.api import pfs

    client = Client("127.0.0.1", cluster_pachd.port)
    project = pfs.Project(name="ml")
    client.pfs.create_project(project=project)
    repo = pfs.Repo(name="news-train", type="user", project=project)
    client.pfs.create_repo(repo=repo)
    with client.pfs.commit(branch=pfs.Branch(repo=repo, name="master")) as commit:
        commit.put_file_from_bytes(path="/business/001.txt", data=b"shares rose")
        commit.put_file_from_bytes(path="/sport/002.txt", data=b"a late goal")
    commit_id = commit.id
    data = DataRef("news-train", commit_id, uri=f"pfs://ml/news-train@master={commit_id}")
    config = experiment_config(spec(), data, key=ResourceKey("ml", "bbc"))
    assert config["entrypoint"] == "python3 -m cdl.runtime.launch"

    work = tmp_path / "trial"  # Determined's working directory: the uploaded model directory only
    work.mkdir()
    (work / "train.py").write_text(TRAIN_PY)
    out = tmp_path / "out"
    out.mkdir()
    env = {**determined_env(config), "PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "XDG_DATA_HOME": str(tmp_path / "xdg"), "OUT_DIR": str(out),
           "CDL_PACHD_ADDRESS": f"grpc://127.0.0.1:{cluster_pachd.port}"}
    assert "CDL_TRIAL_CONFIG" not in env and "CDL_DATA_DIR" not in env
    done = subprocess.run([sys.executable, "-m", "cdl.runtime.launch"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads((out / "seen.json").read_text())
    assert seen["files"] == ["business/001.txt", "sport/002.txt"]
    assert seen["text"] == "shares rose" and seen["env"] == seen["data_dir"]
    assert seen["entrypoint"] == "train:main"


def test_trial_settings_come_from_determineds_cluster_info(monkeypatch: pytest.MonkeyPatch) -> None:
    import determined._info as det_info

    config = experiment_config(spec(), None, key=ResourceKey("ml", "bbc"))
    for name, value in determined_env(config).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CDL_TRIAL_CONFIG", raising=False)
    ti = det_info.TrialInfo(trial_id=7, experiment_id=3, trial_seed=1234, hparams={"lr": 0.05},
                            config={"searcher": config["searcher"], "resources": {"slots_per_trial": 1},
                                    "min_validation_period": {"epochs": 1}},
                            steps_completed=0, trial_run_id=1, debug=False, inter_node_network_interface=None)
    ci = det_info.ClusterInfo(master_url="http://master:8080", cluster_id="c", agent_id="a", slot_ids=[],
                              task_id="t", allocation_id="al", session_token="tok", task_type="TRIAL",
                              latest_checkpoint="ck-1", trial_info=ti)
    monkeypatch.setattr(det_info, "_info", ci)
    monkeypatch.setattr(trial, "_INFO", None)
    found = trial.info()
    assert found.on_cluster and found.trial_id == "7" and found.seed == 1234
    assert found.hparams == {"lr": 0.05} and found.latest_checkpoint == "ck-1"
    assert found.entrypoint == "train:main" and found.metric == "validation_accuracy"
    assert str(found.max_length) == "1 epochs" and str(found.validation_period) == "1 epochs"


class _Metrics:
    def __init__(self) -> None:
        self.reports: list[tuple[str, int, dict[str, Any]]] = []

    def report(self, group: str, steps_completed: int, metrics: dict[str, Any], batch_metrics: Any = None) -> None:
        self.reports.append((group, steps_completed, metrics))


class _Response:
    status_code = 200

    def json(self) -> dict[str, Any]:
        return {}


class _Session:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []

    def _do_request(self, method: str, path: str, **kwargs: Any) -> _Response:
        self.requests.append((method, path, kwargs.get("json")))
        return _Response()

    def post(self, path: str, **kwargs: Any) -> _Response:
        return self._do_request("POST", path, **kwargs)


class _Watcher:
    def should_preempt(self) -> bool:
        return False


def test_patience_is_enforced_inside_the_trial_on_determined(monkeypatch: pytest.MonkeyPatch,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    """The experiment config's CDL_EARLY_STOPPING stops the trial through Determined's own
    preemption check, and the reason reaches the master (trial status + metrics group)."""
    from determined import core
    from determined.core import _preempt, _train

    for cls, name in ((_train.TrainContext, "_report_trial_metrics"), (_preempt.PreemptContext, "should_preempt")):
        monkeypatch.setattr(cls, name, getattr(cls, name))  # restored after the test
    for name, value in (("_GUARD", None), ("_RECORDED", False), ("_TRAIN", None), ("_LAST_STEPS", 0)):
        monkeypatch.setattr(guard_module, name, value)

    env = determined_env(experiment_config(spec(), None, key=ResourceKey("ml", "bbc")))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CDL_TRIAL_STOP", raising=False)
    guard = guard_module.install_from_env()
    assert guard is not None

    session, metrics = _Session(), _Metrics()
    dist = core.DummyDistributedContext()
    train = _train.TrainContext(session, 7, 3, metrics, dist, core.TensorboardMode.MANUAL, None, None)
    preempt = _preempt.PreemptContext(session, "alloc", dist)
    preempt._started, preempt._watcher = True, _Watcher()

    for steps, acc in ((100, 0.50), (200, 0.60), (300, 0.605), (400, 0.59)):
        assert not preempt.should_preempt()
        train.report_validation_metrics(steps, {"validation_accuracy": acc, "validation_loss": 1.0})
    assert preempt.should_preempt()
    reason = "early-stopped: no improvement > 0.01 in 2 validations"
    err = capfd.readouterr().err
    assert f"cdl: early stop: {reason}" in err and "could not report" not in err, err
    assert ("cdl_early_stopping", 400, {"stopped": 1, "reason": reason}) in metrics.reports
    assert ("POST", "/api/v1/trials/7/runner/metadata", {"state": reason}) in session.requests


def test_the_wall_clock_budget_stops_a_trial_that_reports_nothing() -> None:
    guard = guard_module.TrialGuard.from_env({"CDL_EARLY_STOPPING": json.dumps({"maxTrialSeconds": 5}),
                                              "CDL_METRIC": "loss"})
    assert guard is not None and guard.stop_reason() is None
    guard.started -= 6
    assert guard.stop_reason() == "budget: wall time 5 s exceeded"
    assert guard_module.TrialGuard.from_env({"CDL_EARLY_STOPPING": json.dumps({"maxTrialSeconds": 5}),
                                             "CDL_TRIAL_STOP": "/x"}) is None  # the local engine's driver applies them


def test_the_engine_reports_a_trial_that_stopped_itself_as_early_stopped() -> None:
    """What the trial sets as its runner state comes back as the trial's stop reason, and the
    Experiment counts it as early-stopped, not completed."""
    from determined.common.api import bindings as b

    from cdl.engines.base import JobState, TrainingStatus
    from cdl.engines.training.determined import DeterminedTrainingEngine

    reason = "early-stopped: no improvement > 0.01 in 2 validations"

    def trial(id_: int, runner_state: str | None) -> b.trialv1Trial:
        return b.trialv1Trial(experimentId=1, hparams={"lr": 0.1}, id=id_, restarts=0, startTime="2026-01-01T00:00:00Z",
                              state=b.trialv1State.COMPLETED, totalBatchesProcessed=400, runnerState=runner_state)

    engine = DeterminedTrainingEngine.__new__(DeterminedTrainingEngine)
    searcher = {"name": "single", "metric": "validation_accuracy", "max_length": {"epochs": 4}}
    stopped = engine._report(trial(1, reason), searcher, {})
    finished = engine._report(trial(2, "validating"), searcher, {})
    assert stopped.state == JobState.SUCCEEDED and stopped.stop_reason == reason
    assert finished.stop_reason is None
    counts = TrainingStatus(JobState.SUCCEEDED, trials=[stopped, finished]).counts()
    assert counts["earlyStopped"] == 1 and counts["completed"] == 1
