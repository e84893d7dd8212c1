"""Offline validation of manifests: the CRD schemas a real API server applies, plus the
cross-field rules a schema cannot express. `cdl validate` and the operator both use it.

A problem is reported as `Kind namespace/name: field.path: what is wrong and what is allowed`.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel, ValidationError

from cdl.api.common import API_VERSION, DNS_SUBDOMAIN, GROUP, MAX_NESTING_DEPTH
from cdl.api.crdgen import kind_schema
from cdl.api.hyperparameters import hyperparameter_problems
from cdl.api.kinds import BY_KIND, KindInfo
from cdl.errors import InvalidSpec

_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*): (.+)$", re.S)


@dataclass(frozen=True)
class Problem:
    source: str  # file name and document index, e.g. "bbc.yaml#2"
    resource: str  # "Experiment default/bbc-asha"
    path: str  # "spec.searcher.maxLength"
    message: str

    def __str__(self) -> str:
        where = f"{self.resource}: {self.path}: " if self.path else f"{self.resource}: "
        return f"{self.source}: {where}{self.message}"


@dataclass(frozen=True)
class Document:
    source: str
    body: Any


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a structural schema that refuses unknown fields (kubectl's strict validation)."""
    node = copy.deepcopy(schema)
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    for key in ("properties",):
        if key in node:
            node[key] = {k: _strict(v) for k, v in node[key].items()}
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"])
    return node


@cache
def _validator(kind: str) -> jsonschema.Draft4Validator:
    schema = _strict(kind_schema(BY_KIND[kind]))
    schema["properties"]["status"] = {"type": "object"}  # status is the operator's, not the author's
    return jsonschema.Draft4Validator(schema)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_message(err: jsonschema.ValidationError) -> tuple[str, str]:
    path = _path(err.absolute_path)
    v = err.validator
    if v == "required":
        missing = re.findall(r"'([^']+)' is a required property", err.message)
        name = missing[0] if missing else "?"
        return (f"{path}.{name}" if path else name), "Required value"
    if v == "additionalProperties":
        extra = re.findall(r"'([^']+)'", err.message.split("(")[-1])
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        field = f"{path}.{extra[0]}" if extra and path else (extra[0] if extra else path)
        return field, f"unknown field; allowed fields: {allowed}"
    if v == "enum":
        allowed = ", ".join(f'"{x}"' for x in err.validator_value)
        return path, f"Unsupported value: {err.instance!r}: supported values: {allowed}"
    if v == "type":
        return path, f"Invalid value: {err.instance!r}: must be of type {err.validator_value}"
    if v == "pattern":
        return path, f"Invalid value: {err.instance!r}: must match {err.validator_value!r}"
    if v in ("minimum", "maximum"):
        excl = err.schema.get("exclusiveMinimum" if v == "minimum" else "exclusiveMaximum")
        word = ("greater than" if v == "minimum" else "less than") + ("" if excl else " or equal to")
        return path, f"Invalid value: {err.instance!r}: must be {word} {err.validator_value}"
    if v in ("minLength", "maxLength", "minItems", "maxItems"):
        return path, f"Invalid value: {err.instance!r}: {v} is {err.validator_value}"
    return path, err.message


def _pydantic_problems(model: type[BaseModel], spec: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        model.model_validate(spec)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = ["spec", *[p for p in e["loc"] if p not in ("function-after[_one(), Length]",)]]
            msg = str(e["msg"]).removeprefix("Value error, ")
            m = _FIELD_PREFIX.match(msg)
            if m and " " not in m.group(1):
                loc.append(m.group(1))
                msg = m.group(2)
            problems.append((_path(loc), msg))
        return problems
    return []


def resource_name(body: dict[str, Any]) -> str:
    meta = body.get("metadata") or {}
    ns = meta.get("namespace") or "default"
    return f"{body.get('kind', '?')} {ns}/{meta.get('name', '?')}"


def check(body: Any, source: str = "<input>") -> list[Problem]:
    """Every problem in one manifest document; an empty list means it is valid."""
    if not isinstance(body, dict):
        return [Problem(source, "document", "", "must be a mapping with apiVersion, kind, metadata, spec")]
    kind = body.get("kind")
    api_version = body.get("apiVersion")
    resource = resource_name(body)
    if not isinstance(api_version, str) or not api_version.startswith(f"{GROUP}/"):
        return []  # not one of ours: kubectl and the API server judge it
    if api_version != API_VERSION:
        return [Problem(source, resource, "apiVersion", f"Unsupported value: {api_version!r}: supported values: \"{API_VERSION}\"")]
    if kind not in BY_KIND:
        allowed = ", ".join(f'"{k}"' for k in BY_KIND)
        return [Problem(source, resource, "kind", f"Unsupported value: {kind!r}: supported values: {allowed}")]
    problems: list[Problem] = []
    name = (body.get("metadata") or {}).get("name")
    if not name:
        problems.append(Problem(source, resource, "metadata.name", "Required value"))
    elif not re.match(DNS_SUBDOMAIN, str(name)) or len(str(name)) > 253:
        problems.append(Problem(source, resource, "metadata.name",
                                f"Invalid value: {name!r}: must be a lower-case DNS subdomain"))
    schema_errors = sorted(_validator(kind).iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    for err in schema_errors:
        path, message = _schema_message(err)
        problems.append(Problem(source, resource, path, message))
    if not schema_errors and isinstance(body.get("spec"), dict):
        for path, message in _pydantic_problems(BY_KIND[kind].spec_model, body["spec"]):
            problems.append(Problem(source, resource, path, message))
        hps = body["spec"].get("hyperparameters")
        if kind == "Experiment" and isinstance(hps, dict):
            for path, message in hyperparameter_problems(hps, "spec.hyperparameters"):
                problems.append(Problem(source, resource, path, message))
    return problems


def parse_spec(info: KindInfo, body: dict[str, Any]) -> BaseModel:
    """The typed spec of a resource, or InvalidSpec naming every problem (used by the operator)."""
    problems = check(body)
    if problems:
        raise InvalidSpec(resource_name(body), [(p.path, p.message) for p in problems])
    return info.spec_model.model_validate(body["spec"])


def iter_documents(target: str) -> Iterator[Document]:
    """YAML documents from a file, a directory (recursively, *.yaml/*.yml) or '-' (stdin)."""
    if target == "-":
        yield from _load(sys.stdin.read(), "<stdin>")
        return
    path = Path(target)
    if not path.exists():
        raise FileNotFoundError(f"{target}: no such file or directory")
    files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    for file in files:
        yield from _load(file.read_text(), str(file))


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader refusing a key given twice in one mapping, as the API server's strict
    decoding does (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (kubectl and the API server refuse it)", key_node.start_mark)
            try:
                seen.add(key)
            except TypeError:
                pass
        return super().construct_mapping(node, deep=deep)


def nesting_depth(value: Any) -> int:
    """How deeply a loaded document nests (iterative: any depth is measured safely)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _load(text: str, source: str) -> Iterator[Document]:
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        yield Document(source, _YamlFailure(str(exc)))
        return
    except RecursionError:
        yield Document(source, _YamlFailure(f"nested deeper than a manifest may be (at most {MAX_NESTING_DEPTH} "
                                            "levels)"))
        return
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            for j, item in enumerate(doc["items"]):
                yield Document(f"{source}#{i + 1}.{j + 1}", item)
        else:
            yield Document(f"{source}#{i + 1}" if len(docs) > 1 else source, doc)


class _YamlFailure(str):
    """Marks a document that is not even YAML."""


def validate_targets(targets: list[str]) -> tuple[int, list[Problem]]:
    """Check every cdl resource in the targets; return (resources checked, problems)."""
    checked, problems = 0, []
    for target in targets:
        try:
            documents = list(iter_documents(target))
        except FileNotFoundError as exc:
            problems.append(Problem(target, "file", "", str(exc)))
            continue
        for doc in documents:
            if isinstance(doc.body, _YamlFailure):
                problems.append(Problem(doc.source, "document", "", f"not valid YAML: {doc.body}"))
                continue
            if isinstance(doc.body, dict) and str(doc.body.get("apiVersion", "")).startswith(f"{GROUP}/"):
                checked += 1
            depth = nesting_depth(doc.body)
            if depth > MAX_NESTING_DEPTH:
                problems.append(Problem(doc.source, resource_name(doc.body) if isinstance(doc.body, dict) else "document",
                                        "", f"nests {depth} levels deep; at most {MAX_NESTING_DEPTH} are allowed"))
                continue
            try:
                problems.extend(check(doc.body, doc.source))
            except Exception as exc:  # one document's trouble never stops the others being checked
                problems.append(Problem(doc.source, "document", "", f"could not be checked: {type(exc).__name__}: "
                                                                     f"{str(exc)[:200]}"))
    return checked, problems
