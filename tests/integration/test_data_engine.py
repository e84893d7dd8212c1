"""The local data engine end to end: ingestion, steps as subprocesses under the /pfs contract,
incremental re-runs, the split, failures that keep the last good outputs, restarts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cdl.api.datapipeline import DataPipelineSpec
from cdl.engines.base import DataEngine, DataRunRequest, DataRunStatus, JobState, ResourceKey
from cdl.engines.data.local import LocalDataEngine
from cdl.errors import DependencyNotReady, PermanentEngineError
from tests.plugins.data import REPO_ROOT, make_idx_pair, make_text_corpus
from tests.plugins.operator import wait_for

KEY = ResourceKey("ml", "bbc")
VALIDATE = {"name": "validate", "command": ["python", "-m", "pipelines.text.validate", "--min-chars", "100"],
            "glob": "/*/*"}
CLEAN = {"name": "clean", "command": ["python", "-m", "pipelines.text.clean"], "glob": "/*/*"}


def spec(uri: str, steps: list[dict[str, Any]] | None = None, split: dict[str, Any] | None = None,
         **source: Any) -> DataPipelineSpec:
    body: dict[str, Any] = {"source": {"uri": uri, **source}, "steps": steps or []}
    if split is not None:
        body["split"] = split
    return DataPipelineSpec.model_validate(body)


def run(engine: LocalDataEngine, pipeline: DataPipelineSpec, generation: int = 1, key: ResourceKey = KEY,
        **kwargs: Any) -> DataRunStatus:
    ref = engine.start_run(DataRunRequest(key, pipeline, generation, base_dir=REPO_ROOT, **kwargs))
    return engine.wait(key, ref.id, timeout=300)


def files_of(path: str | Path) -> dict[str, bytes]:
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_engine_implements_the_protocol(data_engine: LocalDataEngine) -> None:
    assert isinstance(data_engine, DataEngine)


def test_the_engine_reports_each_phase_of_a_run_and_its_end(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    """Change reports (what the operator follows instead of polling): one per phase or state
    change of a run, the last one once the run is finished; progress alone reports nothing."""
    from cdl.engines.base import ReportsChanges

    assert isinstance(data_engine, ReportsChanges)
    src = tmp_path / "bbc"
    make_text_corpus(src, per_label=4)
    seen: list[tuple[ResourceKey, str]] = []
    started: dict[str, str] = {}

    def listener(key: ResourceKey) -> None:  # what the operator would read when it looks now
        run_id = started.get("id")
        seen.append((key, data_engine.run_status(key, run_id).state.value if run_id else "starting"))

    data_engine.subscribe(listener)
    ref = data_engine.start_run(DataRunRequest(KEY, spec(src.as_uri(), [CLEAN], {"test": 0.25}), 1,
                                               base_dir=REPO_ROOT))
    started["id"] = ref.id
    assert data_engine.wait(KEY, ref.id, timeout=300).state == JobState.SUCCEEDED
    wait_for(lambda: seen and seen[-1][1] == "succeeded", timeout=10, what="the end reported")
    assert {k for k, _ in seen} == {KEY}
    assert 2 <= len(seen) <= 8  # phases, not every datum


def test_steps_validate_and_clean_then_the_split(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "bbc"
    make_text_corpus(src, per_label=4)
    (src / "sport" / "short.txt").write_text("Too short.")
    (src / "tech" / "notes.md").write_text("Not a text file. " * 20)
    (src / "business" / "199.txt").write_bytes(b"Shares rose \xa3100m " + b"in trading " * 20)  # not UTF-8
    status = run(data_engine, spec(src.as_uri(), [VALIDATE, CLEAN], {"test": 0.25, "seed": 42, "stratify": True}))

    assert status.state == JobState.SUCCEEDED and status.phase == "Ready", status.message
    assert status.repos == {"raw": "ml--bbc-raw", "validate": "ml--bbc-validate", "clean": "ml--bbc-clean",
                            "train": "ml--bbc-train", "test": "ml--bbc-test"}
    validate, clean, split = status.lineage
    assert (validate.datums_processed, validate.datums_skipped, validate.datums_failed) == (15, 0, 0)
    assert validate.report["discarded"] == {"too-short": 1, "suffix": 1}
    assert validate.report["repaired"] == {"non-utf8": 1}
    assert clean.datums_processed == 13 and clean.input_commit == validate.output_commit
    assert "2 discarded" not in status.message and "1 discarded: suffix" in status.message

    train, test = status.outputs["train"], status.outputs["test"]
    cleaned = {k: v for k, v in files_of(data_engine.resolve(KEY, "clean").path).items() if not k.startswith(".")}
    train_files, test_files = files_of(train.path), files_of(test.path)
    assert not set(train_files) & set(test_files)
    assert {**train_files, **test_files} == cleaned  # what was cleaned is what is split
    assert Counter(p.split("/")[0] for p in test_files) == {"business": 1, "sport": 1, "tech": 1}
    assert "£100m" in train_files.get("business/199.txt", test_files.get("business/199.txt", b"")).decode()
    assert (train.files, test.files) == (len(train_files), len(test_files))
    assert train.bytes == sum(len(v) for v in train_files.values())
    assert oct(Path(train.path, "sport").stat().st_mode & 0o777) == "0o555"
    report = json.loads(Path(data_engine.resolve(KEY, "validate").path, ".cdl-report.json").read_text())
    assert {f["path"]: f["reason"] for f in report["files"] if f["action"] == "discarded"} == {
        "sport/short.txt": "too-short", "tech/notes.md": "suffix"}

    chain = data_engine.provenance(train.repo, train.commit)
    assert [(c["repo"], c["origin"]["kind"]) for c in chain] == [
        ("ml--bbc-clean", "step"), ("ml--bbc-validate", "step"), ("ml--bbc-raw", "ingest")]
    assert data_engine.outputs(KEY)["train"].commit == train.commit
    assert data_engine.resolve(KEY, "test").path == test.path


@pytest.mark.slow
def test_adding_one_of_fifty_files_processes_exactly_one_datum(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "bbc"
    make_text_corpus(src, labels=("business", "entertainment", "politics", "sport", "tech"), per_label=10)
    pipeline = spec(src.as_uri(), [VALIDATE], {"test": 0.2, "seed": 42})
    first = run(data_engine, pipeline)
    assert first.lineage[0].datums_processed == 50, first.message
    fingerprint = data_engine.source_fingerprint(DataRunRequest(KEY, pipeline, 1, base_dir=REPO_ROOT))
    assert fingerprint == first.source_hash

    (src / "tech" / "new.txt").write_text("A brand new technology story. " * 10)
    request = DataRunRequest(KEY, pipeline, 1, base_dir=REPO_ROOT)
    assert data_engine.source_fingerprint(request) != first.source_hash
    second = run(data_engine, pipeline)
    step = second.lineage[0]
    assert (step.datums_processed, step.datums_skipped, step.datums_failed) == (1, 50, 0)
    assert second.outputs["train"].files + second.outputs["test"].files == 51
    assert second.outputs["raw"].commit != first.outputs["raw"].commit


def test_changing_a_step_reprocesses_every_datum(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "bbc"
    make_text_corpus(src, labels=("sport",), per_label=4)
    first = run(data_engine, spec(src.as_uri(), [VALIDATE]))
    assert first.lineage[0].datums_processed == 4
    changed = dict(VALIDATE, command=[*VALIDATE["command"][:-1], "50"])
    second = run(data_engine, spec(src.as_uri(), [changed]), generation=2)
    assert (second.lineage[0].datums_processed, second.lineage[0].datums_skipped) == (4, 0)
    assert second.outputs["validate"].commit != first.outputs["validate"].commit


def test_recommitting_unchanged_files_stores_no_new_objects(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "bbc"
    make_text_corpus(src, per_label=3)
    pipeline = spec(src.as_uri(), [CLEAN], {"test": 0.3, "seed": 1})
    first = run(data_engine, pipeline)
    objects, created = data_engine.objects.count(), data_engine.objects.created
    again = run(data_engine, pipeline, force=True)  # a scheduled re-run of the same data
    assert again.run_id != first.run_id and again.state == JobState.SUCCEEDED
    assert "(0 new object(s))" in again.message
    assert (data_engine.objects.count(), data_engine.objects.created) == (objects, created)
    assert again.lineage[0].datums_skipped == 9 and again.lineage[0].datums_processed == 0
    assert {k: v.commit for k, v in again.outputs.items()} == {k: v.commit for k, v in first.outputs.items()}


def test_without_a_split_train_is_the_last_steps_data(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "bbc"
    make_text_corpus(src, labels=("sport",), per_label=2)
    status = run(data_engine, spec(src.as_uri(), [CLEAN]))
    assert "test" not in status.outputs and status.repos["train"] == "ml--bbc-train"
    assert set(files_of(status.outputs["train"].path)) == {"sport/000.txt", "sport/001.txt"}
    assert status.outputs["clean"].path is None  # materialized on demand
    assert ".cdl-report.json" in files_of(data_engine.resolve(KEY, "clean").path)


def test_no_outputs_before_the_first_run(data_engine: LocalDataEngine) -> None:
    assert data_engine.outputs(KEY) == {}
    with pytest.raises(DependencyNotReady):
        data_engine.resolve(KEY, "train")


# --------------------------------------------------------------------------- failures


@pytest.fixture
def good_run(data_engine: LocalDataEngine, tmp_path: Path) -> DataRunStatus:
    src = tmp_path / "bbc"
    make_text_corpus(src, labels=("sport", "tech"), per_label=3)
    status = run(data_engine, spec(src.as_uri(), split={"test": 0.3, "seed": 1}))
    assert status.state == JobState.SUCCEEDED
    return status


def assert_outputs_kept(engine: LocalDataEngine, good: DataRunStatus) -> None:
    current = engine.outputs(KEY)
    assert {k: v.commit for k, v in current.items()} == {k: v.commit for k, v in good.outputs.items()}
    assert engine.resolve(KEY, "train").path == good.outputs["train"].path
    assert engine.repos.head("ml--bbc-train") == good.outputs["train"].commit


def test_a_missing_source_fails_and_keeps_the_last_good_output(data_engine: LocalDataEngine, tmp_path: Path,
                                                               good_run: DataRunStatus) -> None:
    missing = tmp_path / "gone"
    status = run(data_engine, spec(missing.as_uri(), split={"test": 0.3, "seed": 1}), generation=2)
    assert status.state == JobState.FAILED and status.phase == "Failed"
    assert f"source {missing.as_uri()}: no such file or directory" in status.message
    assert "previous outputs stay current" in status.message
    assert_outputs_kept(data_engine, good_run)


def test_a_bad_archive_fails_and_keeps_the_last_good_output(data_engine: LocalDataEngine, tmp_path: Path,
                                                            good_run: DataRunStatus) -> None:
    archive = tmp_path / "bbc.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bbc/sport/1.txt", "x" * 10_000)
    archive.write_bytes(archive.read_bytes()[:-30])
    status = run(data_engine, spec(archive.as_uri()), generation=2)
    assert status.state == JobState.FAILED and "not a valid zip archive" in status.message
    assert_outputs_kept(data_engine, good_run)


def test_a_failing_step_fails_the_run_with_the_datums_log(data_engine: LocalDataEngine, tmp_path: Path,
                                                          good_run: DataRunStatus) -> None:
    code = textwrap.dedent("""
        import os, sys, pathlib
        datum = os.environ["PFS_DATUM"]
        if datum.endswith("001.txt") and "tech" in datum:
            print("cannot parse", datum, file=sys.stderr)
            sys.exit(1)
        for p in pathlib.Path(os.environ["PFS_INPUT_DIR"]).rglob("*.txt"):
            out = pathlib.Path(os.environ["PFS_OUT"]) / p.relative_to(os.environ["PFS_INPUT_DIR"])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(p.read_bytes())
    """)
    src = Path(data_engine.resolve(KEY, "raw").path)
    step = {"name": "parse", "command": ["python", "-c", code], "glob": "/*/*", "datumTries": 2, "parallelism": 1}
    status = run(data_engine, spec(src.as_uri(), [step], {"test": 0.3, "seed": 1}), generation=2)
    assert status.state == JobState.FAILED
    assert "step parse: datum /tech/001.txt failed after 2 tries with exit code 1: cannot parse" in status.message
    report = status.lineage[0]
    assert report.datums_failed == 1 and "cannot parse /tech/001.txt" in report.failed_datum_log
    assert report.output_commit is None
    assert_outputs_kept(data_engine, good_run)


def test_datum_tries_retry_a_flaky_datum(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_text_corpus(src, labels=("sport",), per_label=2)
    marks = tmp_path / "marks"
    marks.mkdir()
    code = textwrap.dedent("""
        import os, sys, pathlib, shutil
        mark = pathlib.Path(os.environ["MARKS"]) / os.environ["PFS_DATUM"].replace("/", "_")
        if not mark.exists():
            mark.write_text("tried")
            sys.exit(3)
        shutil.copytree(os.environ["PFS_INPUT_DIR"], os.environ["PFS_OUT"], dirs_exist_ok=True)
    """)
    step = {"name": "flaky", "command": ["python", "-c", code], "glob": "/*/*", "datumTries": 2,
            "env": {"MARKS": str(marks)}}
    status = run(data_engine, spec(src.as_uri(), [step]))
    assert status.state == JobState.SUCCEEDED, status.message
    assert status.lineage[0].datums_processed == 2 and len(list(marks.iterdir())) == 2
    assert status.outputs["train"].files == 2


def test_a_step_writing_to_its_input_is_refused(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_text_corpus(src, labels=("sport",), per_label=1)
    code = "import os; p = os.environ['PFS_DATUM_PATH']; os.chmod(p, 0o644); open(p, 'a').write('x')"
    step = {"name": "vandal", "command": ["python", "-c", code], "glob": "/*/*", "datumTries": 1}
    status = run(data_engine, spec(src.as_uri(), [step]))
    assert status.state == JobState.FAILED and "modified its input file sport/000.txt" in status.lineage[0].failed_datum_log


# --------------------------------------------------------------------------- idempotence and restarts


def test_start_run_is_idempotent_and_status_survives_a_restart(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_text_corpus(src, labels=("sport", "tech"), per_label=3)
    root = tmp_path / "engine"
    pipeline = spec(src.as_uri(), [CLEAN], {"test": 0.3, "seed": 1})
    engine = LocalDataEngine(root, workers=2)
    request = DataRunRequest(KEY, pipeline, 1, base_dir=REPO_ROOT)
    first = engine.start_run(request)
    assert engine.start_run(request).id == first.id
    done = engine.wait(KEY, first.id)
    engine.close()

    restarted = LocalDataEngine(root, workers=2)
    try:
        assert restarted.start_run(request).id == first.id  # the same run, not a second one
        again = restarted.run_status(KEY, first.id)
        assert again.state == JobState.SUCCEEDED and again.message == done.message
        assert {k: v.commit for k, v in again.outputs.items()} == {k: v.commit for k, v in done.outputs.items()}
        assert again.outputs["train"].path == done.outputs["train"].path
        assert again.lineage[0].datums_processed == 6
    finally:
        restarted.close()


def test_an_orderly_stop_leaves_the_run_to_the_next_engine(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_text_corpus(src, labels=("sport",), per_label=6)
    root = tmp_path / "engine"
    slow = {"name": "slow", "glob": "/*/*", "command": [
        "python", "-c", "import shutil, os, time; time.sleep(0.2); "
                        "shutil.copytree(os.environ['PFS_INPUT_DIR'], os.environ['PFS_OUT'], dirs_exist_ok=True)"]}
    pipeline = spec(src.as_uri(), [slow])
    engine = LocalDataEngine(root, workers=1)
    ref = engine.start_run(DataRunRequest(KEY, pipeline, 1, base_dir=REPO_ROOT))
    while len(list((root / "cache").rglob("*.json"))) < 2:
        assert not engine.run_status(KEY, ref.id).state.finished
    engine.close()  # the operator shuts down mid-run
    assert engine.run_status(KEY, ref.id).state == JobState.RUNNING  # left to the next engine, not failed

    restarted = LocalDataEngine(root, workers=2)
    try:
        done = restarted.wait(KEY, ref.id, timeout=120)
        assert done.state == JobState.SUCCEEDED, done.message
        assert done.lineage[0].datums_skipped >= 2 and done.outputs["train"].files == 6
    finally:
        restarted.close()


@pytest.mark.slow
def _interrupted_run(tmp_path: Path) -> tuple[Path, str]:
    """A data run whose operator process was killed (SIGKILL) after three datums: (engine root, run id)."""
    src = tmp_path / "src"
    make_text_corpus(src, labels=("sport",), per_label=8)
    root = tmp_path / "engine"
    driver = textwrap.dedent(f"""
        import json, os, signal, sys, time
        from pathlib import Path
        from cdl.api.datapipeline import DataPipelineSpec
        from cdl.engines.base import DataRunRequest, ResourceKey
        from cdl.engines.data.local import LocalDataEngine
        spec = DataPipelineSpec.model_validate(json.loads(sys.argv[1]))
        engine = LocalDataEngine(Path({str(root)!r}), workers=1)
        ref = engine.start_run(DataRunRequest(ResourceKey("ml", "bbc"), spec, 1, base_dir=Path({str(REPO_ROOT)!r})))
        print(ref.id, flush=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if len(list((Path({str(root)!r}) / "cache").rglob("*.json"))) >= 3:
                os.kill(os.getpid(), signal.SIGKILL)  # the operator dies mid-run
            time.sleep(0.05)
    """)
    slow = {"name": "slow", "glob": "/*/*", "command": [
        "python", "-c", "import shutil, os, time; time.sleep(0.3); "
                        "shutil.copytree(os.environ['PFS_INPUT_DIR'], os.environ['PFS_OUT'], dirs_exist_ok=True)"]}
    pipeline = spec(src.as_uri(), [slow])
    proc = subprocess.run([sys.executable, "-c", driver, json.dumps(pipeline.wire())], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, start_new_session=True)
    assert proc.returncode == -9, proc.stderr
    run_id = proc.stdout.split()[0]

    return root, run_id


def test_an_interrupted_run_resumes_after_a_restart(tmp_path: Path) -> None:
    root, run_id = _interrupted_run(tmp_path)
    engine = LocalDataEngine(root, workers=2)
    try:
        interrupted = json.loads((root / "runs" / "ml--bbc" / f"{run_id}.json").read_text())
        assert interrupted["state"] == "running"
        status = engine.run_status(KEY, run_id)  # resumes it
        assert not status.state.finished
        done = engine.wait(KEY, run_id, timeout=120)
        assert done.state == JobState.SUCCEEDED, done.message
        step = done.lineage[0]
        assert step.datums_processed + step.datums_skipped == 8 and step.datums_skipped >= 3
        assert done.outputs["train"].files == 8
    finally:
        engine.close()


def test_a_run_whose_driver_keeps_dying_at_the_same_point_fails_and_one_that_moves_on_resumes(tmp_path: Path) -> None:
    """Three drivers that died without the run moving on are a crash loop: the run fails and
    says so. Drivers that died after the run moved on (an operator killed at several stages) are
    not: the run resumes."""
    root, run_id = _interrupted_run(tmp_path)
    path = root / "runs" / "ml--bbc" / f"{run_id}.json"
    record = json.loads(path.read_text())
    looping = {**record, "attempts": 3, "phase_at_start": record["phase"], "progress_at_start": record["progress"]}
    path.write_text(json.dumps(looping))
    engine = LocalDataEngine(root, workers=2)
    try:
        engine.run_status(KEY, run_id)
        failed = engine.wait(KEY, run_id, timeout=60)
        assert failed.state == JobState.FAILED
        assert "interrupted 3 times at the same point" in failed.message
    finally:
        engine.close()

    root2, run_id2 = _interrupted_run(tmp_path / "second")
    path2 = root2 / "runs" / "ml--bbc" / f"{run_id2}.json"
    record2 = json.loads(path2.read_text())
    moved_on = {**record2, "attempts": 3, "phase_at_start": "Ingesting", "progress_at_start": -1.0}
    path2.write_text(json.dumps(moved_on))
    engine = LocalDataEngine(root2, workers=2)
    try:
        engine.run_status(KEY, run_id2)
        done = engine.wait(KEY, run_id2, timeout=120)
        assert done.state == JobState.SUCCEEDED, done.message
    finally:
        engine.close()


# --------------------------------------------------------------------------- other formats and sources


def test_idx_images_are_validated_and_split(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    from cdl.runtime.idx import encode_idx, load_dataset

    src = tmp_path / "fashion"
    make_idx_pair(src, "train", 100, gz=True)
    _, labels = make_idx_pair(src, "t10k", 20, seed=1)
    labels[:2] = 11  # two labels out of range
    (src / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(labels))
    step = {"name": "validate", "glob": "/",
            "command": ["python", "-m", "pipelines.image.validate", "--shape", "28,28", "--num-classes", "10"]}
    status = run(data_engine, spec(src.as_uri(), [step], {"test": 0.2, "seed": 7}, format="idx", labelsFrom="none"))
    assert status.state == JobState.SUCCEEDED, status.message
    assert status.lineage[0].report["kept"] == 118 and status.lineage[0].report["discarded"] == {"bad-label": 2}
    train_x, train_y = load_dataset(status.outputs["train"].path)
    test_x, test_y = load_dataset(status.outputs["test"].path)
    assert set(files_of(status.outputs["test"].path)) == {"test-images-idx3-ubyte", "test-labels-idx1-ubyte"}
    assert (train_x.shape, test_x.shape) == ((94, 28, 28), (24, 28, 28))
    assert set(test_y.tolist()) == set(range(10))


def test_csv_rows_are_split(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    src = tmp_path / "csv"
    src.mkdir()
    rows = "\n".join(["text,label"] + [f"row {i},{'pos' if i % 2 else 'neg'}" for i in range(40)])
    (src / "reviews.csv").write_text(rows + "\n")
    status = run(data_engine, spec(src.as_uri(), split={"test": 0.25, "seed": 3}, format="csv"))
    test_rows = files_of(status.outputs["test"].path)["reviews.csv"].decode().splitlines()
    train_rows = files_of(status.outputs["train"].path)["reviews.csv"].decode().splitlines()
    assert test_rows[0] == train_rows[0] == "text,label"
    assert (len(test_rows), len(train_rows)) == (11, 31)


def test_an_http_zip_archive_is_ingested(data_engine: LocalDataEngine, tmp_path: Path, data_http_server) -> None:
    corpus = tmp_path / "corpus"
    made = make_text_corpus(corpus, labels=("sport", "tech"), per_label=3)
    archive = data_http_server.root / "bbc-fulltext.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bbc/README.TXT", "BBC articles")
        for rel in made:
            zf.write(corpus / rel, f"bbc/{rel}")
    pipeline = spec(data_http_server.url("bbc-fulltext.zip"), split={"test": 0.34, "seed": 42})
    status = run(data_engine, pipeline)
    assert status.state == JobState.SUCCEEDED, status.message
    assert set(files_of(data_engine.resolve(KEY, "raw").path)) == {"README.TXT", *made}
    # The README has no label folder: it stays in raw but belongs to neither train nor test.
    assert status.outputs["train"].files + status.outputs["test"].files == 6

    request = DataRunRequest(KEY, pipeline, 1, base_dir=REPO_ROOT)
    assert data_engine.source_fingerprint(request) == status.source_hash
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("bbc/tech/new.txt", "new")
    assert data_engine.source_fingerprint(request) != status.source_hash


def test_a_missing_http_source_fails(data_engine: LocalDataEngine, data_http_server) -> None:
    status = run(data_engine, spec(data_http_server.url("nothing.zip")))
    assert status.state == JobState.FAILED and "not found (HTTP 404)" in status.message


def test_s3_source_with_credentials_from_the_secret(tmp_path: Path, s3_server) -> None:
    from minio import Minio

    client = Minio(s3_server.endpoint.removeprefix("http://"), access_key=s3_server.access_key,
                   secret_key=s3_server.secret_key, secure=False)
    client.make_bucket("bbc-raw")
    corpus = tmp_path / "corpus"
    made = make_text_corpus(corpus, labels=("sport", "tech"), per_label=2)
    for rel in made:
        client.fput_object("bbc-raw", f"2024/{rel}", str(corpus / rel))
    client.fput_object("bbc-raw", "2024-other/sport/x.txt", str(corpus / rel))  # a sibling prefix, not ours

    engine = LocalDataEngine(tmp_path / "engine", workers=2, s3_endpoint=s3_server.endpoint)
    try:
        pipeline = spec("s3://bbc-raw/2024", credentialsSecretRef={"name": "s3", "key": "creds"})
        secret = f"{s3_server.access_key}:{s3_server.secret_key}"
        status = run(engine, pipeline, secrets={"s3/creds": secret})
        assert status.state == JobState.SUCCEEDED, status.message
        assert files_of(engine.resolve(KEY, "raw").path) == {rel: (corpus / rel).read_bytes() for rel in made}

        assert secret not in json.dumps([p.read_text() for p in (tmp_path / "engine").rglob("*.json")])

        with pytest.raises(PermanentEngineError, match="credentialsSecretRef: secret s3 key creds was not provided"):
            run(engine, pipeline, generation=2)
        with pytest.raises(PermanentEngineError, match="must hold ACCESS_KEY:SECRET_KEY") as refused:
            run(engine, pipeline, generation=2, secrets={"s3/creds": "no-colon-here"})
        assert "no-colon-here" not in str(refused.value)
    finally:
        engine.close()


def test_objects_are_written_through_an_artifact_store(tmp_path: Path, s3_store) -> None:
    src = tmp_path / "src"
    make_text_corpus(src, labels=("sport",), per_label=3)
    engine = LocalDataEngine(tmp_path / "engine", artifacts=s3_store, workers=2)
    try:
        status = run(engine, spec(src.as_uri()))
        keys = s3_store.list("data/objects")
        assert len(keys) == engine.objects.count() == 3
        # an object lost locally comes back from the store
        engine.remove_checkouts()
        sha = next(iter(engine.repos.get_commit(status.outputs["train"].repo, status.outputs["train"].commit)
                        .files.values())).sha256
        os.unlink(engine.objects.path(sha))
        path = engine.resolve(KEY, "train").path
        assert files_of(path) == {rel: (src / rel).read_bytes() for rel in files_of(src)}
    finally:
        engine.close()


def test_delete_removes_only_its_own_repos_and_collects_objects(data_engine: LocalDataEngine, tmp_path: Path) -> None:
    shared, own = tmp_path / "shared", tmp_path / "own"
    make_text_corpus(shared, labels=("sport",), per_label=2)
    shutil.copytree(shared, own)
    (own / "sport" / "only-here.txt").write_text("only in the pipeline that is deleted")
    other = ResourceKey("ml", "bbc-v2")  # its repos start with "ml--bbc-" too
    run(data_engine, spec(own.as_uri()))
    kept = run(data_engine, spec(shared.as_uri()), key=other)
    assert data_engine.objects.count() == 3

    data_engine.delete(KEY)
    assert data_engine.outputs(KEY) == {}
    assert not [r for r in data_engine.repos.list_repos() if r.startswith("ml--bbc-") and "v2" not in r]
    assert data_engine.objects.count() == 2
    assert files_of(data_engine.resolve(other, "train").path) == files_of(kept.outputs["train"].path)
