"""kill -9 of the operator three times during a DataPipeline run (the real operator process,
local data engine, steps run as processes) ends in the same outputs as a run without kills:
same files, same bytes, no step's datum lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cdl.devcluster import process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PATH = "/apis/cdl.dev/v1alpha1/namespaces/{ns}/datapipelines"
# Kill when the run is seen in these phases (the operator's status), each time a fresh operator
# has picked it up again: while ingesting, while the steps run, and while they still run.
KILL_IN = ("Ingesting", "Processing", "Processing")


def _pipeline(corpus: Path) -> dict:
    manifest = yaml.safe_load((ROOT / "usecases/bbc-news/manifests/datapipeline.yaml").read_text())
    manifest["metadata"] = {"name": "news"}
    manifest["spec"]["source"]["uri"] = corpus.as_uri()
    manifest["spec"].pop("labeling")
    return manifest


def _operator(config: Path, kubeconfig: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        # only its configuration file configures it (a CDL_* variable would override the file)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDL_")}
        return subprocess.Popen([sys.executable, "-m", "cdl.cli.main", "operator", "run", "--config", str(config),
                                 "--kubeconfig", str(kubeconfig), "-A"], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True, env=env)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _status(info: process.ServerInfo, ns: str) -> dict:
    code, obj = process.request(f"{info.url}{PATH.format(ns=ns)}/news", info.token, ca_file=info.ca_file)
    return (obj.get("status") or {}) if code == 200 else {}


def _ready(info: process.ServerInfo, ns: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _status(info, ns)
        if st.get("phase") in ("Ready", "Failed"):
            return st
        time.sleep(0.5)
    raise AssertionError(f"DataPipeline {ns}/news not Ready in {timeout:.0f} s: {st}")


def _status_changes(info: process.ServerInfo, ns: str, phase: str, timeout: float = 30) -> None:
    """Wait until the (new) operator writes something: the status message moves on."""
    before = _status(info, ns).get("message")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _status(info, ns).get("message") == before:
        time.sleep(0.05)


def _run(info: process.ServerInfo, ns: str, corpus: Path, config: Path, log: Path,
         kills: tuple[str, ...]) -> tuple[dict, float, list[str]]:
    code, _ = process.request(f"{info.url}/api/v1/namespaces", info.token, "POST",
                              {"metadata": {"name": ns}}, ca_file=info.ca_file)
    assert code == 201
    proc = _operator(config, info.kubeconfig, log)
    try:
        code, _ = process.request(f"{info.url}{PATH.format(ns=ns)}", info.token, "POST", _pipeline(corpus),
                                  ca_file=info.ca_file)
        assert code == 201
        started = time.monotonic()
        phases = []
        for wanted in kills:
            deadline, seen = time.monotonic() + 60, ""
            while time.monotonic() < deadline:
                seen = _status(info, ns).get("phase") or "-"
                if seen in (wanted, "Ready", "Failed"):
                    break
                time.sleep(0.05)
            phases.append(seen)  # what the run was doing when its operator was killed
            _kill(proc)
            proc = _operator(config, info.kubeconfig, log)
            if seen != "Ready":  # the next operator must pick the run up before it is killed again
                _status_changes(info, ns, seen)
        st = _ready(info, ns)
        return st, time.monotonic() - started, phases
    finally:
        _kill(proc)


def test_operator_kill_9_schedule_gives_the_same_outputs_as_a_clean_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(ROOT / "usecases/bbc-news/data/generate.py"), "--out", str(corpus),
                    "--per-class", "100", "--seed", "42"], check=True, capture_output=True)
    info = process.start_background(tmp_path / "api", crds_dir=ROOT / "crds")

    def config_for(name: str) -> Path:
        """Each run its own engine state: the killed run must do the work again, not find the
        clean run's datums in the data engine's cache."""
        state = tmp_path / f"state-{name}"
        state.mkdir()
        config = state / "operator.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(state), "base_dir": str(ROOT), "artifact_url": (state / "artifacts").as_uri(),
            "engines": {k: "local" for k in ("DataPipeline", "Experiment", "ModelVersion", "Deployment")},
            "poll_seconds": 0.5}))
        return config

    log = tmp_path / "operator.log"
    try:
        clean, took, _ = _run(info, "clean", corpus, config_for("clean"), log, ())
        killed, took_killed, phases = _run(info, "killed", corpus, config_for("killed"), log, KILL_IN)
    finally:
        process.stop(tmp_path / "api")

    def outputs(st: dict) -> dict:
        return {name: (o["files"], o["bytes"]) for name, o in (st.get("outputs") or {}).items()}

    def datums(st: dict) -> list:
        return [(s["step"], s["datumsProcessed"] + s["datumsSkipped"], s["datumsFailed"]) for s in st.get("lineage", [])]

    print(f"\nclean run {took:.1f} s; operator killed 3 times (in phases {phases}), run {took_killed:.1f} s: outputs "
          f"{outputs(killed)} (clean run {outputs(clean)}), steps {datums(killed)}")
    assert clean["phase"] == killed["phase"] == "Ready", (clean.get("message"), killed.get("message"))
    assert any(phase in ("Ingesting", "Processing") for phase in phases), phases  # a kill hit the run
    assert outputs(killed) == outputs(clean) and outputs(clean)["train"][0] > 0
    assert datums(killed) == datums(clean)
    assert json.dumps(sorted(killed["repos"])) == json.dumps(sorted(clean["repos"]))
