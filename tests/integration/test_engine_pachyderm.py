"""The Pachyderm data engine against a protocol-level fake pachd (cdl/simulation/pachd.py): the real
pachyderm-sdk client, real gRPC, pachd's commit-set, job and datum semantics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from pachyderm_sdk import Client
from pachyderm_sdk.api import pfs, pps

from cdl.api.datapipeline import DataPipelineSpec
from cdl.engines.base import DataEngine, DataRunRequest, DataRunStatus, JobState, ResourceKey
from cdl.engines.data.pachyderm import PachydermDataEngine
from cdl.engines.settings import PachydermSettings
from cdl.errors import PermanentEngineError, TransientEngineError
from cdl.simulation.pachd import FakePachd

KEY = ResourceKey("ml", "news", "uid-1")
# One datum per file: upper-case it into the same path under /pfs/out (Pachyderm's contract).
UPPER = (
    "import os, pathlib\n"
    "src = pathlib.Path(os.environ['in'])\n"
    "rel = src.relative_to(os.environ['CDL_INPUT_DIR'])\n"
    "out = pathlib.Path(os.environ['CDL_OUTPUT_DIR']) / rel\n"
    "out.parent.mkdir(parents=True, exist_ok=True)\n"
    "text = src.read_text()\n"
    "assert 'poison' not in text, 'bad datum'\n"
    "out.write_text(text.upper())\n"
)


def make_source(root: Path, per_label: int = 5) -> Path:
    for label in ("business", "sport"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            (root / label / f"{i:03d}.txt").write_text(f"{label} story number {i}")
    return root


def spec_for(source: Path, command: str = UPPER, **step: object) -> DataPipelineSpec:
    return DataPipelineSpec.model_validate({
        "engine": "pachyderm",
        "source": {"uri": source.as_uri(), "format": "files", "labelsFrom": "directory"},
        "split": {"test": 0.2, "seed": 42, "stratify": True},
        "steps": [{
            "name": "clean", "image": "registry.example.com/cdl/pipelines:0.1.0", "glob": "/*/*",
            "command": ["python", "-c", command], "parallelism": 2, "datumTries": 2,
            "resources": {"cpu": "500m", "memory": "1Gi", "gpu": 1},
            "env": {"MIN_CHARS": "10"}, "secrets": [{"name": "hf-token", "key": "token"}],
            **step,
        }],
    })


def engine_for(server: FakePachd, **settings: object) -> PachydermDataEngine:
    return PachydermDataEngine(PachydermSettings.from_env({}, host="127.0.0.1", port=server.port, **settings))


def wait_run(engine: PachydermDataEngine, run_id: str, timeout: float = 60) -> DataRunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = engine.run_status(KEY, run_id)
        if status.state.finished:
            return status
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {status}")


def read(server: FakePachd, uri: str, path: str) -> str:
    client = Client("127.0.0.1", server.port)
    commit = pfs.Commit.from_uri(uri.removeprefix("pfs://"))
    return b"".join(c.value for c in client.pfs.get_file(file=pfs.File(commit=commit, path=path))).decode()


def test_a_run_ingests_processes_splits_and_reports_lineage(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    engine = engine_for(cluster_pachd)
    assert isinstance(engine, DataEngine)
    source = make_source(tmp_path / "bbc")
    request = DataRunRequest(KEY, spec_for(source), generation=1)

    ref = engine.start_run(request)
    status = wait_run(engine, ref.id)

    assert status.state == JobState.SUCCEEDED, status.message
    assert status.phase == "Ready"
    assert status.repos == {"raw": "ml/news-raw", "train": "ml/news-train", "test": "ml/news-test",
                            "clean": "ml/news-clean"}
    train, test = status.outputs["train"], status.outputs["test"]
    assert (train.files, test.files) == (8, 2)  # stratified 80/20 of 2 x 5
    assert train.uri == f"pfs://ml/news-train@master={train.commit}"
    assert status.outputs["clean"].commit == ref.id  # a run is one commit set
    # The step ran on every datum and the split copied its output, not the raw files.
    clean = [s for s in status.lineage if s.step == "clean"][0]
    assert (clean.datums_processed, clean.datums_skipped, clean.datums_failed) == (10, 0, 0)
    assert clean.input_commit == f"news-raw@{ref.id}" and clean.job == f"news-clean@{ref.id}"
    client = Client("127.0.0.1", cluster_pachd.port)
    walked = [f.file.path for f in client.pfs.walk_file(
        file=pfs.File(commit=pfs.Commit.from_uri(test.uri.removeprefix("pfs://")), path="/"))
        if f.file_type == pfs.FileType.FILE]
    assert sorted(p.split("/")[1] for p in walked) == ["business", "sport"]
    assert read(cluster_pachd, test.uri, walked[0]).startswith(walked[0].split("/")[1].upper())
    # The pipeline carries the step's spec.
    info = client.pps.inspect_pipeline(pipeline=pps.Pipeline(name="news-clean", project=pfs.Project(name="ml")),
                                       details=True)
    d = info.details
    assert d.transform.image == "registry.example.com/cdl/pipelines:0.1.0"
    assert d.transform.cmd[0] == "python" and d.input.pfs.glob == "/*/*" and d.input.pfs.repo == "news-raw"
    assert d.parallelism_spec.constant == 2 and d.datum_tries == 2
    assert d.resource_requests.cpu == pytest.approx(0.5) and d.resource_requests.memory == "1Gi"
    assert (d.resource_limits.gpu.type, d.resource_limits.gpu.number) == ("nvidia.com/gpu", 1)
    assert d.transform.env["MIN_CHARS"] == "10"
    assert [(s.name, s.key, s.env_var) for s in d.transform.secrets] == [("hf-token", "token", "TOKEN")]
    # outputs() and resolve() give the same data version afterwards (a restarted operator too).
    again = engine_for(cluster_pachd)
    assert again.outputs(KEY)["train"].commit == train.commit
    assert again.resolve(KEY, "test").uri == test.uri
    assert again.resolve(KEY, "clean", ref.id).files == 10


def test_start_run_is_idempotent_and_new_data_reprocesses_only_changed_datums(
        cluster_pachd: FakePachd, tmp_path: Path) -> None:
    engine = engine_for(cluster_pachd)
    source = make_source(tmp_path / "bbc")
    request = DataRunRequest(KEY, spec_for(source), generation=1)
    first = engine.start_run(request)
    wait_run(engine, first.id)

    assert engine.start_run(request).id == first.id  # same generation and source: same run
    assert engine.source_fingerprint(request) == wait_run(engine, first.id).source_hash

    (source / "sport" / "new.txt").write_text("sport story that is new")
    assert engine.source_fingerprint(request) != wait_run(engine, first.id).source_hash
    second = engine.start_run(request)
    assert second.id != first.id
    status = wait_run(engine, second.id)
    clean = [s for s in status.lineage if s.step == "clean"][0]
    assert (clean.datums_processed, clean.datums_skipped) == (1, 10)
    assert status.outputs["train"].files + status.outputs["test"].files == 11


def test_a_spec_change_updates_the_pipeline_and_reprocesses(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    engine = engine_for(cluster_pachd)
    source = make_source(tmp_path / "bbc")
    wait_run(engine, engine.start_run(DataRunRequest(KEY, spec_for(source), generation=1)).id)

    changed = spec_for(source, command=UPPER.replace("text.upper()", "text.lower()"))
    ref = engine.start_run(DataRunRequest(KEY, changed, generation=2))
    status = wait_run(engine, ref.id)

    pipeline = cluster_pachd.pipelines[("ml", "news-clean")]
    assert pipeline.version == 2  # updated in place, not recreated
    # reprocess draws a new salt: the update's own job ran every datum again with the new command,
    # and this run's job reuses those results.
    assert sum(j.processed for j in cluster_pachd.jobs.values() if j.version == 2) == 10
    clean = [s for s in status.lineage if s.step == "clean"][0]
    assert clean.datums_processed + clean.datums_skipped == 10
    path = "/business/000.txt"
    assert read(cluster_pachd, status.outputs["clean"].uri, path) == "business story number 0"


def test_a_failing_datum_fails_the_run_and_keeps_the_last_good_outputs(
        cluster_pachd: FakePachd, tmp_path: Path) -> None:
    engine = engine_for(cluster_pachd)
    source = make_source(tmp_path / "bbc")
    good = wait_run(engine, engine.start_run(DataRunRequest(KEY, spec_for(source), generation=1)).id)
    (source / "sport" / "bad.txt").write_text("poison pill")

    ref = engine.start_run(DataRunRequest(KEY, spec_for(source), generation=1))
    status = wait_run(engine, ref.id)

    assert status.state == JobState.FAILED and status.phase == "Failed"
    assert "step clean" in status.message and "failed" in status.message and "1 datum(s) failed" in status.message
    assert engine.outputs(KEY)["train"].commit == good.outputs["train"].commit


def test_delete_removes_pipelines_and_repos(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    engine = engine_for(cluster_pachd)
    source = make_source(tmp_path / "bbc", per_label=2)
    wait_run(engine, engine.start_run(DataRunRequest(KEY, spec_for(source), generation=1)).id)
    other = ResourceKey("ml", "other")
    engine.start_run(DataRunRequest(other, DataPipelineSpec.model_validate(
        {"source": {"uri": source.as_uri()}}), generation=1))

    engine.delete(KEY)

    assert ("ml", "news-clean") not in cluster_pachd.pipelines
    assert {name for (project, name) in cluster_pachd.repos} == {"other-raw", "other-train"}
    engine.delete(KEY)  # deleting twice is fine


def test_a_run_left_open_by_a_restart_is_resumed(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    class DiesAfterStart(PachydermDataEngine):
        """The operator dies right after start_run wrote the run id: no driver ever runs."""

        def _ensure_driver(self, run_id: str, key: ResourceKey) -> None:
            pass

    source = make_source(tmp_path / "bbc", per_label=2)
    first = DiesAfterStart(PachydermSettings.from_env({}, host="127.0.0.1", port=cluster_pachd.port))
    ref = first.start_run(DataRunRequest(KEY, spec_for(source), generation=1))
    assert first.run_status(KEY, ref.id).phase == "Ingesting"

    restarted = engine_for(cluster_pachd)
    status = wait_run(restarted, ref.id)

    assert status.state == JobState.SUCCEEDED
    assert status.outputs["train"].files + status.outputs["test"].files == 4


def test_long_names_fit_pachd_limits(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    key = ResourceKey("a-rather-long-namespace-name", "bbc-news-with-a-very-long-pipeline-name")
    engine = engine_for(cluster_pachd)
    source = make_source(tmp_path / "bbc", per_label=2)
    spec = spec_for(source, name="validate-and-clean-the-articles")
    ref = engine.start_run(DataRunRequest(key, spec, generation=1))
    deadline = time.monotonic() + 60
    while not (status := engine.run_status(key, ref.id)).state.finished and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status.state == JobState.SUCCEEDED, status.message
    assert all(len(name) <= 51 for (_, name) in cluster_pachd.pipelines)


def test_unreachable_pachd_is_transient(cluster_closed_port: int, tmp_path: Path) -> None:
    engine = PachydermDataEngine(PachydermSettings.from_env({}, host="127.0.0.1", port=cluster_closed_port))
    request = DataRunRequest(KEY, spec_for(make_source(tmp_path / "bbc", 1)), generation=1)
    started = time.monotonic()
    with pytest.raises(TransientEngineError, match="unreachable|unavailable"):
        engine.start_run(request)
    with pytest.raises(TransientEngineError):
        engine.run_status(KEY, "0" * 32)
    assert time.monotonic() - started < 10


def test_pachd_rejections_are_permanent_with_pachd_message(
        cluster_pachd_with_auth: FakePachd, cluster_pachd: FakePachd, tmp_path: Path) -> None:
    source = make_source(tmp_path / "bbc", 1)
    request = DataRunRequest(KEY, spec_for(source), generation=1)
    anonymous = engine_for(cluster_pachd_with_auth)
    with pytest.raises(PermanentEngineError, match="no authentication token"):
        anonymous.start_run(request)
    wrong = engine_for(cluster_pachd_with_auth, token="not-the-token")
    with pytest.raises(PermanentEngineError, match="corrupted or has expired"):
        wrong.start_run(request)
    with_token = engine_for(cluster_pachd_with_auth, token="cdl-test-token")
    assert wait_run(with_token, with_token.start_run(request).id).state == JobState.SUCCEEDED
    assert "not-the-token" not in repr(wrong.settings)

    bad_glob = DataRunRequest(KEY, spec_for(source, glob="/[*"), generation=1)
    with pytest.raises(PermanentEngineError, match="error parsing glob"):
        engine_for(cluster_pachd).start_run(bad_glob)


def test_a_missing_source_fails_the_run_with_the_path(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    engine = engine_for(cluster_pachd)
    status = wait_run(engine, engine.start_run(DataRunRequest(KEY, spec_for(tmp_path / "nowhere"), generation=1)).id)
    assert status.state == JobState.FAILED
    assert "spec.source.uri" in status.message and "nowhere: no such file or directory" in status.message


def test_idx_sources_are_split_record_by_record(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    import struct

    source = tmp_path / "fmnist"
    source.mkdir()
    n = 20
    images = struct.pack(">HBBIII", 0, 8, 3, n, 2, 2) + bytes(range(n * 4))
    labels = struct.pack(">HBBI", 0, 8, 1, n) + bytes(i % 2 for i in range(n))
    (source / "train-images-idx3-ubyte").write_bytes(images)
    (source / "train-labels-idx1-ubyte").write_bytes(labels)
    spec = DataPipelineSpec.model_validate({
        "source": {"uri": source.as_uri(), "format": "idx", "labelsFrom": "none"},
        "split": {"test": 0.25, "seed": 7, "stratify": True},
    })
    engine = engine_for(cluster_pachd)
    status = wait_run(engine, engine.start_run(DataRunRequest(KEY, spec, generation=1)).id)
    assert status.state == JobState.SUCCEEDED, status.message
    client = Client("127.0.0.1", cluster_pachd.port)
    test = pfs.Commit.from_uri(status.outputs["test"].uri.removeprefix("pfs://"))
    data = b"".join(c.value for c in client.pfs.get_file(file=pfs.File(commit=test, path="/test-labels-idx1-ubyte")))
    # round(20 x 0.25) = 5 test records, shared between the two labels as evenly as possible
    assert struct.unpack(">I", data[4:8])[0] == 5 and sorted(data[8:]) in ([0, 0, 1, 1, 1], [0, 0, 0, 1, 1])
    assert status.outputs["train"].files == 2 and status.outputs["test"].files == 2  # images + labels


@pytest.mark.slow
def test_the_bbc_use_case_steps_run_under_pachyderms_contract(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    """The real `pipelines.text` steps of usecases/bbc-news, as pipelines: /pfs/in datums, /pfs/out
    outputs, one .cdl-report.json per datum merged into the step's report."""
    manifest = yaml.safe_load((Path(__file__).resolve().parents[2] / "usecases" / "bbc-news" / "manifests"
                               / "datapipeline.yaml").read_text())
    words = "the market rallied as investors welcomed strong quarterly results from the banks".split()
    source = tmp_path / "bbc"
    for label in ("business", "sport", "tech"):
        (source / label).mkdir(parents=True)
        for i in range(3):
            (source / label / f"{i:03d}.txt").write_text(f"A {label} headline {i}\n\n" + " ".join(words * (4 + i)))
    (source / "tech" / "short.txt").write_text("too short")
    spec = manifest["spec"]
    spec.pop("labeling")
    spec["source"]["uri"] = source.as_uri()
    engine = engine_for(cluster_pachd)
    key = ResourceKey("default", "bbc-news")
    ref = engine.start_run(DataRunRequest(key, DataPipelineSpec.model_validate(spec), generation=1))
    deadline = time.monotonic() + 120
    while not (status := engine.run_status(key, ref.id)).state.finished and time.monotonic() < deadline:
        time.sleep(0.2)

    assert status.state == JobState.SUCCEEDED, status.message
    validate, clean = [s for s in status.lineage if s.step in ("validate", "clean")]
    assert validate.datums_processed == 10 and validate.report["discardedTotal"] == 1
    assert validate.report["discarded"] == {"too-short": 1} and clean.report["kept"] == 9
    assert status.outputs["train"].files + status.outputs["test"].files == 9
    assert status.outputs["test"].files == 3  # one per label: stratified


def test_a_runs_driver_reports_its_phases_and_its_end(cluster_pachd: FakePachd, tmp_path: Path) -> None:
    """Change reports: the operator hears when a run moved and when it ended, without polling."""
    from cdl.engines.base import ReportsChanges
    from tests.plugins.operator import wait_for

    engine = engine_for(cluster_pachd)
    assert isinstance(engine, ReportsChanges)
    reports: list[tuple[ResourceKey, str]] = []
    engine.subscribe(lambda key: reports.append((key, next(iter(engine._drivers.values())).phase)))
    ref = engine.start_run(DataRunRequest(KEY, spec_for(make_source(tmp_path / "bbc")), generation=1))
    wait_for(lambda: reports and reports[-1][1] == "Done", timeout=60, what="the end reported")
    assert {k for k, _ in reports} == {KEY}
    assert [p for _, p in reports][:2] == ["Ingesting", "Processing"]
    assert engine.run_status(KEY, ref.id).state == JobState.SUCCEEDED
