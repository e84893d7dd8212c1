"""The Label Studio labeling engine against a real Label Studio 1.23.2 and a real PostgreSQL:
project creation, task import with pre-labels, no duplicates, annotations exported as rows."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cdl.api.datapipeline import Labeling
from cdl.engines.base import LabelingEngine, LabelingRequest, LabelItem, ResourceKey
from cdl.engines.labeling.labelstudio import PREDICTION_MODEL, LabelStudioEngine
from cdl.errors import PermanentEngineError
from cdl.stores.postgres import Database
from tests.plugins.data import REPO_ROOT

pytestmark = pytest.mark.slow

KEY = ResourceKey("ml", "bbc")


def labeling(server, project: str, table: str = "bbc_labels", config: str | None = None) -> Labeling:
    ls = {"url": server.url, "tokenSecretRef": {"name": "label-studio", "key": "token"}, "project": project}
    if config:
        ls["labelConfig"] = config
    return Labeling.model_validate({"labelStudio": ls, "database": {"table": table}})


def text_items(commit: str = "c1") -> list[LabelItem]:
    items = []
    for label in ("business", "sport"):
        for i in range(3):
            split = "test" if i == 2 else "train"
            items.append(LabelItem(path=f"{label}/{i:03d}.txt", text=f"A {label} story number {i}.", label=label,
                                   split=split, repo=f"ml--bbc-{split}", commit=f"{split}-{commit}"))
    return items


def request_for(server, project: str, items: list[LabelItem], database_url: str, **kw) -> LabelingRequest:
    return LabelingRequest(key=KEY, labeling=kw.pop("labeling", None) or labeling(server, project), repo="ml--bbc-train",
                           commit="train-c1", items=items, token=server.token, database_url=database_url,
                           labels=["business", "sport"], **kw)


@pytest.fixture
def client(labelstudio_server):
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=labelstudio_server.url, api_key=labelstudio_server.token)


def annotate(client, task_id: int, label: str) -> None:
    """What a labeler's click on a choice sends."""
    client.annotations.create(id=task_id, result=[
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}])


def test_sync_imports_once_with_pre_labels_and_exports_annotations(labelstudio_server, client, postgres_url) -> None:
    engine = LabelStudioEngine()
    assert isinstance(engine, LabelingEngine)
    project = f"bbc-{uuid.uuid4().hex[:8]}"
    request = request_for(labelstudio_server, project, text_items(), postgres_url)

    first = engine.sync(request)
    assert (first.tasks, first.annotated, first.exported_rows) == (6, 0, 0)
    assert first.url == f"{labelstudio_server.url}/projects/{first.project_id}"
    config = client.projects.get(first.project_id).label_config
    assert '<Choice value="business"/>' in config and '<Choice value="sport"/>' in config
    tasks = {t.data["cdl_path"]: t for t in client.tasks.list(project=first.project_id, fields="all")}
    assert set(tasks) == {i.path for i in request.items}
    sport = tasks["sport/001.txt"]
    assert sport.data["text"] == "A sport story number 1." and sport.data["cdl_split"] == "train"
    predictions = client.predictions.list(task=sport.id)
    assert [(p.model_version, p.result[0]["value"]["choices"]) for p in predictions] == [(PREDICTION_MODEL, ["sport"])]

    again = engine.sync(request)  # nothing new: nothing imported twice
    assert again.project_id == first.project_id and again.tasks == 6
    assert len(list(client.tasks.list(project=first.project_id))) == 6

    annotate(client, tasks["sport/001.txt"].id, "sport")
    annotate(client, tasks["business/002.txt"].id, "sport")  # the labeler disagrees with the automatic label
    done = engine.sync(request)
    assert (done.annotated, done.exported_rows) == (2, 2)
    db = Database(postgres_url)
    try:
        rows = {r.path: r for r in db.labels("bbc_labels", namespace="ml", pipeline="bbc")}
        assert set(rows) == {"sport/001.txt", "business/002.txt"}
        relabeled = rows["business/002.txt"]
        assert (relabeled.label, relabeled.split, relabeled.repo, relabeled.commit) == \
            ("sport", "test", "ml--bbc-test", "test-c1")
        assert relabeled.labeler == labelstudio_server.username and relabeled.annotated_at is not None
        assert relabeled.project == project and relabeled.task_id == tasks["business/002.txt"].id

        engine.sync(request)  # re-export: the same rows, not more
        assert len(db.labels("bbc_labels", namespace="ml", pipeline="bbc")) == 2

        changed = text_items()
        changed[0] = LabelItem(path="business/000.txt", text="An edited business story.", label="business",
                               split="train", repo="ml--bbc-train", commit="train-c2")
        grown = engine.sync(request_for(labelstudio_server, project, changed + [
            LabelItem(path="sport/new.txt", text="A new sport story.", label="sport", split="train")], postgres_url))
        assert grown.tasks == 8  # the edited item and the new one
    finally:
        db.close()


def test_images_are_imported_as_data_urls(labelstudio_server, client, postgres_url, tmp_path: Path) -> None:
    from PIL import Image

    items = []
    for i, label in enumerate(["shirt", "boot"]):
        path = tmp_path / label / f"{i}.png"
        path.parent.mkdir()
        Image.new("L", (28, 28), color=40 * i).save(path)
        items.append(LabelItem(path=f"{label}/{i}.png", url=path.as_uri(), label=label, split="train"))
    project = f"fashion-{uuid.uuid4().hex[:8]}"
    result = LabelStudioEngine().sync(LabelingRequest(
        key=KEY, labeling=labeling(labelstudio_server, project), repo="ml--fashion-train", commit="c1", items=items,
        token=labelstudio_server.token, database_url=postgres_url, labels=["boot", "shirt"]))
    assert result.tasks == 2
    assert '<Image name="image" value="$image"' in client.projects.get(result.project_id).label_config
    task = next(t for t in client.tasks.list(project=result.project_id, fields="all") if t.data["cdl_path"] == "boot/1.png")
    assert task.data["image"].startswith("data:image/png;base64,")


def test_a_wrong_token_is_refused_without_showing_it(labelstudio_server, postgres_url) -> None:
    request = request_for(labelstudio_server, "never-created", text_items(), postgres_url)
    request.token = "0" * 40
    with pytest.raises(PermanentEngineError, match="refused the API token") as refused:
        LabelStudioEngine().sync(request)
    assert "0" * 40 not in str(refused.value)


def test_delete_removes_only_projects_cdl_created(labelstudio_server, client, postgres_url) -> None:
    engine = LabelStudioEngine()
    mine = f"bbc-{uuid.uuid4().hex[:8]}"
    theirs = f"hand-made-{uuid.uuid4().hex[:8]}"
    created = engine.sync(request_for(labelstudio_server, mine, text_items()[:1], postgres_url))
    other = client.projects.create(title=theirs, label_config='<View><Text name="text" value="$text"/>'
                                   '<Choices name="label" toName="text"><Choice value="a"/></Choices></View>')
    engine.delete(KEY, labeling(labelstudio_server, mine), labelstudio_server.token)
    engine.delete(KEY, labeling(labelstudio_server, theirs), labelstudio_server.token)
    titles = {p.title for p in client.projects.list()}
    assert mine not in titles and theirs in titles
    client.projects.delete(other.id)
    assert created.project_id != other.id


def test_the_export_cli_writes_the_same_rows(labelstudio_server, client, postgres_url) -> None:
    project = f"cli-{uuid.uuid4().hex[:8]}"
    engine = LabelStudioEngine()
    first = engine.sync(request_for(labelstudio_server, project, text_items(), postgres_url))
    task = next(iter(client.tasks.list(project=first.project_id)))
    annotate(client, task.id, "business")
    env = {**os.environ, "LABEL_STUDIO_TOKEN": labelstudio_server.token, "CDL_DATABASE_URL": postgres_url,
           "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "cdl.cli.main", "labels", "export", "--url", labelstudio_server.url, "--project", project,
               "--table", "cli_labels"]
    for _ in range(2):  # idempotent
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
        assert done.returncode == 0, done.stderr
        assert "6 task(s), 1 labeled row(s) exported to table cli_labels" in done.stdout
    db = Database(postgres_url)
    try:
        rows = db.labels("cli_labels", namespace="ml", pipeline="bbc")
        assert [(r.path, r.label) for r in rows] == [(task.data["cdl_path"], "business")]
    finally:
        db.close()
    missing = subprocess.run([*command[:-4], "--project", "no-such-project"], env=env, capture_output=True, text=True,
                             timeout=120, start_new_session=True)
    assert missing.returncode == 1 and "no project titled 'no-such-project'" in missing.stderr
