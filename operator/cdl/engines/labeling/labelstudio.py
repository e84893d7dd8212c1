"""The labeling engine: a Label Studio project per DataPipeline, and its finished annotations in
PostgreSQL (the paper's Data Labeling step feeding ML Data).

`sync` creates the project when missing (a single-choice config over the known labels when the
spec gives no `labelConfig`), imports the items it has not imported before as tasks (text
inline; images as data URLs, so the Label Studio server needs no access to the data engine's
disk), with the automatic label as a prediction a labeler only has to confirm, and upserts one
row per annotated item into the labels table. Everything is idempotent: an item is known by its
path and content (task data `cdl_key`), so a re-run imports nothing twice and a re-export
rewrites the same rows.

Task data fields: the content field of the label config (`text` / `image` by default), plus
`cdl_key`, `cdl_path`, `cdl_repo`, `cdl_commit`, `cdl_split`, `cdl_namespace`, `cdl_pipeline`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import mimetypes
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import quoteattr

from cdl.api.datapipeline import Labeling, LabelStudio
from cdl.engines.base import LabelingRequest, LabelingResult, LabelItem, ResourceKey
from cdl.errors import PermanentEngineError, TransientEngineError

log = logging.getLogger("cdl.engines.labeling.labelstudio")

PREDICTION_MODEL = "cdl-automatic-labels"
MAX_BATCH_BYTES = 16 * 1024 * 1024
DESCRIPTION_MARK = "Created by cdl for DataPipeline"
OBJECT_TAGS = {"Text": "text", "HyperText": "text", "Paragraphs": "text", "Image": "image"}
RESULT_VALUE_KEYS = ("choices", "labels", "rectanglelabels", "polygonlabels", "keypointlabels", "brushlabels",
                     "ellipselabels", "taxonomy", "text", "rating", "number")


@dataclass(frozen=True)
class ConfigFields:
    """Where an item goes in a task and what a pre-label looks like, read from a label config."""

    data_field: str  # the task data key the object tag reads ($text -> "text")
    kind: str  # text | image
    from_name: str | None  # the Choices control, when there is one (pre-labels need it)
    to_name: str | None


def default_label_config(labels: list[str], kind: str) -> str:
    """A single-choice classification over the known labels (free text when none is known)."""
    obj = '  <Image name="image" value="$image" zoom="true"/>' if kind == "image" else \
        '  <Text name="text" value="$text"/>'
    target = "image" if kind == "image" else "text"
    if not labels:
        control = f'  <TextArea name="label" toName="{target}" maxSubmissions="1" editable="true"/>'
    else:
        choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
        control = f'  <Choices name="label" toName="{target}" choice="single" showInline="true">\n{choices}\n  </Choices>'
    return f"<View>\n{obj}\n{control}\n</View>\n"


def config_fields(label_config: str) -> ConfigFields:
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise PermanentEngineError(f"spec.labeling.labelStudio.labelConfig is not valid XML: {exc}",
                                   reason="InvalidLabelConfig")
    objects = {el.get("name"): el for el in root.iter() if el.tag in OBJECT_TAGS and el.get("name")}
    if not objects:
        raise PermanentEngineError(
            "spec.labeling.labelStudio.labelConfig: needs a Text, HyperText, Paragraphs or Image tag "
            "with value=\"$field\"", reason="InvalidLabelConfig")
    choices = next((el for el in root.iter() if el.tag == "Choices"), None)
    target = objects.get(choices.get("toName")) if choices is not None else None
    obj = target if target is not None else next(iter(objects.values()))
    value = (obj.get("value") or "$text").lstrip("$")
    return ConfigFields(value, OBJECT_TAGS[obj.tag], choices.get("name") if target is not None else None,
                        obj.get("name") if target is not None else None)


def item_key(path: str, content: bytes) -> str:
    """What makes an item the same item: its path and its bytes."""
    return hashlib.sha256(path.encode() + b"\x00" + hashlib.sha256(content).digest()).hexdigest()


def image_url(item: LabelItem) -> tuple[str, bytes]:
    """(a URL Label Studio can show, the bytes that identify the image)."""
    url = item.url or ""
    if url.startswith("file:"):
        path = Path(unquote(urlsplit(url).path))
        data = path.read_bytes()
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"data:{mime};base64,{base64.b64encode(data).decode()}", data
    return url, url.encode()


def is_image_url(url: str) -> bool:
    if url.startswith("file:"):
        return (mimetypes.guess_type(unquote(urlsplit(url).path))[0] or "").startswith("image/")
    return url.startswith(("http://", "https://", "data:image/", "s3://", "gs://"))


def label_of(result: list[dict[str, Any]], from_name: str | None = None) -> str | None:
    """The label an annotation gives: the first value of its (named) control."""
    for region in result:
        if from_name and region.get("from_name") != from_name:
            continue
        value = region.get("value") or {}
        for key in RESULT_VALUE_KEYS:
            if key in value:
                found = value[key]
                if isinstance(found, list):
                    found = found[0] if len(found) == 1 else ",".join(map(str, found)) if found else None
                    if isinstance(found, list):  # taxonomy paths
                        found = "/".join(map(str, found))
                return None if found is None else str(found)
    if from_name:
        return label_of(result, None)
    return None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return None


def _labeler(completed_by: Any, users: dict[int, str]) -> str | None:
    if isinstance(completed_by, dict):
        return completed_by.get("email") or users.get(completed_by.get("id", -1)) or str(completed_by.get("id"))
    if isinstance(completed_by, int):
        return users.get(completed_by, str(completed_by))
    return str(completed_by) if completed_by else None


def annotation_rows(tasks: list[dict[str, Any]], *, project: str, from_name: str | None = None,
                    users: dict[int, str] | None = None, namespace: str | None = None,
                    pipeline: str | None = None) -> list[Any]:
    """One `LabelRow` per task with a finished annotation (the latest one that was not skipped)."""
    from cdl.stores.records import LabelRow

    users = users or {}
    rows = []
    for task in tasks:
        data = task.get("data") or {}
        if "cdl_path" not in data:
            continue  # a task cdl did not import
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled") and a.get("result")]
        if not done:
            continue
        latest = max(done, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
        label = label_of(latest.get("result") or [], from_name)
        if label is None:
            continue
        rows.append(LabelRow(
            namespace=namespace or data.get("cdl_namespace", ""), pipeline=pipeline or data.get("cdl_pipeline", ""),
            repo=data.get("cdl_repo", ""), commit=data.get("cdl_commit", ""), path=data["cdl_path"], label=label,
            labeler=_labeler(latest.get("completed_by"), users),
            annotated_at=_parse_time(latest.get("updated_at") or latest.get("created_at")),
            split=data.get("cdl_split"), source="labelstudio", project=project, task_id=task.get("id"),
        ))
    return rows


class LabelStudioEngine:
    """`cdl.engines.base.LabelingEngine` for Label Studio (label-studio-sdk)."""

    name = "labelstudio"

    def __init__(self, timeout: float = 60.0, batch_size: int = 250, export_automatic: bool = False) -> None:
        self.timeout = timeout
        self.batch_size = batch_size
        self.export_automatic = export_automatic  # also write rows (source=auto) for items no one annotated

    # ------------------------------------------------------------------ the protocol

    def sync(self, request: LabelingRequest) -> LabelingResult:
        ls = self._settings(request.labeling)
        client = self._client(ls.url, request.token)
        with self._calls(ls.url, f"project {ls.project!r}"):
            project = self._find_project(client, ls.project)
            kind = "image" if any(i.text is None and i.url and is_image_url(i.url) for i in request.items) and \
                not any(i.text is not None for i in request.items) else "text"
            label_config = ls.label_config or default_label_config(request.labels, kind)
            fields = config_fields(label_config)
            if project is None:
                project = client.projects.create(
                    title=ls.project, label_config=label_config,
                    description=f"{DESCRIPTION_MARK} {request.key}: items of {request.repo}")
                log.info("Label Studio project %r created (id %s) for %s", ls.project, project.id, request.key)
            elif not ls.label_config and request.labels:
                self._extend_labels(client, project, request.labels, kind)
            tasks = self._tasks(client, project.id)
            known = {t.get("data", {}).get("cdl_key") for t in tasks}
            new = list(self._new_tasks(request, fields, known))
            for batch in self._batches(new):
                client.projects.import_tasks(project.id, request=batch, commit_to_project=True)
            if new:
                log.info("Label Studio project %r: %d task(s) imported for %s", ls.project, len(new), request.key)
            users = self._users(client)
        annotated = sum(1 for t in tasks if any(not a.get("was_cancelled") for a in t.get("annotations") or []))
        rows = annotation_rows(tasks, project=ls.project, from_name=fields.from_name, users=users,
                               namespace=request.key.namespace, pipeline=request.key.name)
        if self.export_automatic:
            rows += self._automatic_rows(request, {r.path for r in rows}, ls.project)
        table = request.labeling.database.table if request.labeling.database else "labels"
        exported = self._write_rows(request.database_url, table, rows)
        return LabelingResult(project=ls.project, project_id=project.id, tasks=len(tasks) + len(new),
                              annotated=annotated, exported_rows=exported,
                              url=f"{ls.url.rstrip('/')}/projects/{project.id}")

    def delete(self, key: ResourceKey, labeling: Labeling, token: str) -> None:
        """Delete the project if cdl created it for this DataPipeline (labelers' work in a project
        someone else made is never deleted)."""
        ls = self._settings(labeling)
        client = self._client(ls.url, token)
        with self._calls(ls.url, f"project {ls.project!r}"):
            project = self._find_project(client, ls.project)
            if project is not None and (project.description or "").startswith(f"{DESCRIPTION_MARK} {key}:"):
                client.projects.delete(project.id)
                log.info("Label Studio project %r deleted with DataPipeline %s", ls.project, key)

    # ------------------------------------------------------------------ export only (the CLI)

    def export(self, url: str, token: str, project: str, database_url: str, table: str = "labels") -> tuple[int, int]:
        """Export a project's finished annotations into the labels table: (tasks, rows exported)."""
        client = self._client(url, token)
        with self._calls(url, f"project {project!r}"):
            found = self._find_project(client, project)
            if found is None:
                raise PermanentEngineError(f"Label Studio {url}: no project titled {project!r}", reason="NoProject")
            tasks = self._tasks(client, found.id)
            fields = config_fields(found.label_config) if found.label_config else None
            users = self._users(client)
        rows = annotation_rows(tasks, project=project, from_name=fields.from_name if fields else None, users=users)
        return len(tasks), self._write_rows(database_url, table, rows)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _settings(labeling: Labeling) -> LabelStudio:
        if labeling.label_studio is None:
            raise PermanentEngineError("spec.labeling.labelStudio is required for labeling", reason="InvalidSpec")
        return labeling.label_studio

    def _client(self, url: str, token: str) -> Any:
        from label_studio_sdk import LabelStudio as Client

        if not token:
            raise PermanentEngineError(f"Label Studio {url}: the API token is empty "
                                       "(spec.labeling.labelStudio.tokenSecretRef)", reason="SecretMissing")
        return Client(base_url=url.rstrip("/"), api_key=token, timeout=self.timeout)

    @contextlib.contextmanager
    def _calls(self, url: str, what: str) -> Iterator[None]:
        """Map SDK/HTTP failures to cdl's errors (messages never carry the token)."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            yield
        except ApiError as exc:
            status = exc.status_code or 0
            body = str(exc.body)[:300] if exc.body is not None else ""
            if status in (401, 403):
                raise PermanentEngineError(
                    f"Label Studio {url} refused the API token (HTTP {status}); check "
                    "spec.labeling.labelStudio.tokenSecretRef (legacy tokens need "
                    "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server)", reason="Unauthorized")
            if status >= 500 or status in (408, 429):
                raise TransientEngineError(f"Label Studio {url}: HTTP {status} on {what}")
            raise PermanentEngineError(f"Label Studio {url}: HTTP {status} on {what}: {body}", reason="LabelStudioError")
        except (httpx.TransportError, OSError) as exc:
            raise TransientEngineError(f"Label Studio {url} unreachable ({type(exc).__name__})")

    @staticmethod
    def _find_project(client: Any, title: str) -> Any | None:
        for project in client.projects.list(title=title, page_size=100):
            if project.title == title:
                return client.projects.get(project.id)
        return None

    def _extend_labels(self, client: Any, project: Any, labels: list[str], kind: str) -> None:
        """Add newly seen labels to a default config (removing ones in use is Label Studio's to refuse)."""
        from label_studio_sdk.core.api_error import ApiError

        current = project.label_config or ""
        with contextlib.suppress(PermanentEngineError):
            fields = config_fields(current)
            if fields.from_name == "label":
                have = {el.get("value") for el in ET.fromstring(current).iter("Choice")}
                if set(labels) - have:
                    wanted = default_label_config(sorted(have | set(labels)), kind)
                    try:
                        client.projects.update(project.id, label_config=wanted)
                    except ApiError as exc:
                        log.warning("Label Studio project %s: could not add labels: %s", project.id, exc.body)

    def _tasks(self, client: Any, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (one JSON export call)."""
        body = b"".join(client.projects.exports.download_sync(project_id, export_type="JSON",
                                                               download_all_tasks=True))
        tasks = json.loads(body or b"[]")
        return tasks if isinstance(tasks, list) else []

    @staticmethod
    def _users(client: Any) -> dict[int, str]:
        users: dict[int, str] = {}
        with contextlib.suppress(Exception):
            for user in client.users.list():
                users[user.id] = user.email or user.username or str(user.id)
        return users

    def _new_tasks(self, request: LabelingRequest, fields: ConfigFields, known: set[str]) -> Iterator[dict[str, Any]]:
        seen = set(known)
        for item in request.items:
            if fields.kind == "image":
                if not item.url or not is_image_url(item.url):
                    continue  # e.g. IDX files or reports in an image output
                try:
                    value, identity = image_url(item)
                except OSError as exc:
                    log.warning("labeling %s: cannot read %s: %s", request.key, item.path, exc)
                    continue
            else:
                if item.text is None:
                    continue
                value, identity = item.text, item.text.encode()
            key = item_key(item.path, identity)
            if key in seen:
                continue
            seen.add(key)
            task: dict[str, Any] = {"data": {
                fields.data_field: value,
                "cdl_key": key,
                "cdl_path": item.path,
                "cdl_repo": item.repo or request.repo,
                "cdl_commit": item.commit or request.commit,
                "cdl_split": item.split,
                "cdl_namespace": request.key.namespace,
                "cdl_pipeline": request.key.name,
            }}
            if item.label and fields.from_name and fields.to_name:
                task["predictions"] = [{"model_version": PREDICTION_MODEL, "result": [{
                    "from_name": fields.from_name, "to_name": fields.to_name, "type": "choices",
                    "value": {"choices": [item.label]},
                }]}]
            yield task

    def _batches(self, tasks: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """Import batches of at most `batch_size` tasks and about MAX_BATCH_BYTES (data URLs are big)."""
        batch: list[dict[str, Any]] = []
        size = 0
        for task in tasks:
            task_size = sum(len(v) for v in task["data"].values() if isinstance(v, str))
            if batch and (len(batch) >= self.batch_size or size + task_size > MAX_BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append(task)
            size += task_size
        if batch:
            yield batch

    def _automatic_rows(self, request: LabelingRequest, annotated: set[str], project: str) -> list[Any]:
        from cdl.stores.records import LabelRow

        return [
            LabelRow(namespace=request.key.namespace, pipeline=request.key.name, repo=i.repo or request.repo,
                     commit=i.commit or request.commit, path=i.path, label=i.label, split=i.split, source="auto",
                     project=project)
            for i in request.items if i.label and i.path not in annotated
        ]

    @staticmethod
    def _write_rows(database_url: str, table: str, rows: list[Any]) -> int:
        if not database_url:
            raise PermanentEngineError("no database to export labels into: set spec.labeling.database.urlSecretRef "
                                       "or the operator's database", reason="NoDatabase")
        from cdl.stores.errors import StoreError
        from cdl.stores.postgres import Database

        db = Database(database_url)
        try:
            db.ensure_labels_table(table)
            return db.upsert_labels(table, rows)
        except StoreError as exc:  # a bad table name or a table that is not a labels table
            raise PermanentEngineError(f"spec.labeling.database.table: {exc}", reason="BadLabelsTable")
        finally:
            db.close()
