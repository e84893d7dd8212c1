"""Label Studio engine logic that needs no server: label configs, task identity, export rows."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cdl.engines.base import LabelItem
from cdl.engines.labeling.labelstudio import (
    LabelStudioEngine,
    annotation_rows,
    config_fields,
    default_label_config,
    image_url,
    item_key,
    label_of,
)
from cdl.errors import PermanentEngineError


def test_default_config_is_a_single_choice_over_the_known_labels() -> None:
    config = default_label_config(["business", "sport", "R&D"], "text")
    root = ET.fromstring(config)
    assert [c.get("value") for c in root.iter("Choice")] == ["business", "sport", "R&D"]
    fields = config_fields(config)
    assert (fields.data_field, fields.kind, fields.from_name, fields.to_name) == ("text", "text", "label", "text")
    image = config_fields(default_label_config(["shirt"], "image"))
    assert (image.data_field, image.kind) == ("image", "image")


def test_custom_config_decides_the_data_field() -> None:
    config = ('<View><Header value="Read"/><HyperText name="doc" value="$article"/>'
              '<Choices name="topic" toName="doc"><Choice value="a"/></Choices></View>')
    fields = config_fields(config)
    assert (fields.data_field, fields.from_name, fields.to_name) == ("article", "topic", "doc")
    with pytest.raises(PermanentEngineError, match="not valid XML"):
        config_fields("<View>")


def test_item_key_changes_with_path_or_content() -> None:
    assert item_key("a.txt", b"x") == item_key("a.txt", b"x")
    assert len({item_key("a.txt", b"x"), item_key("b.txt", b"x"), item_key("a.txt", b"y")}) == 3


def test_local_images_become_data_urls(tmp_path: Path) -> None:
    png = tmp_path / "shirt.png"
    png.write_bytes(b"\x89PNG fake")
    url, identity = image_url(LabelItem(path="shirt.png", url=png.as_uri()))
    assert url == "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    assert identity == b"\x89PNG fake"


def task(task_id: int, path: str, annotations: list[dict]) -> dict:
    data = {"text": "t", "cdl_path": path, "cdl_repo": "ns--p-train", "cdl_commit": "c1", "cdl_split": "train",
            "cdl_namespace": "ns", "cdl_pipeline": "p"}
    return {"id": task_id, "data": data, "annotations": annotations}


def choice(value: str, updated: str, by: int = 1, cancelled: bool = False) -> dict:
    return {"id": hash(updated) % 1000, "completed_by": by, "was_cancelled": cancelled, "updated_at": updated,
            "result": [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [value]}}]}


def test_rows_take_the_latest_finished_annotation_per_item() -> None:
    tasks = [
        task(1, "sport/1.txt", [choice("sport", "2024-01-01T10:00:00Z"), choice("tech", "2024-01-02T10:00:00Z", 2)]),
        task(2, "sport/2.txt", [choice("sport", "2024-01-03T10:00:00Z", cancelled=True)]),
        task(3, "sport/3.txt", []),
        {"id": 4, "data": {"text": "not ours"}, "annotations": [choice("x", "2024-01-01T00:00:00Z")]},
    ]
    rows = annotation_rows(tasks, project="p", from_name="label", users={1: "a@x", 2: "b@x"})
    assert len(rows) == 1
    row = rows[0]
    assert (row.path, row.label, row.labeler, row.repo, row.commit, row.split, row.task_id) == \
        ("sport/1.txt", "tech", "b@x", "ns--p-train", "c1", "train", 1)
    assert row.annotated_at.isoformat() == "2024-01-02T10:00:00+00:00"


def test_label_of_reads_other_controls() -> None:
    assert label_of([{"from_name": "x", "value": {"labels": ["PER"]}}]) == "PER"
    assert label_of([{"from_name": "note", "value": {"text": ["free text"]}}], "label") == "free text"
    assert label_of([]) is None


def test_only_images_are_imported_into_an_image_project_in_bounded_batches() -> None:
    from cdl.engines.labeling.labelstudio import MAX_BATCH_BYTES, is_image_url

    assert is_image_url("file:///data/boot/1.png") and is_image_url("https://cdn.example/x")
    assert not is_image_url("file:///data/train-images-idx3-ubyte")
    engine = LabelStudioEngine(batch_size=3)
    big = "x" * (MAX_BATCH_BYTES // 2 + 1)
    tasks = [{"data": {"image": big}}] * 3 + [{"data": {"text": "a"}}] * 4
    assert [len(b) for b in engine._batches(tasks)] == [1, 1, 3, 2]  # by bytes, then by count
