"""Label and field selectors, parsed once per request and matched per object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cdl.devcluster.errors import bad_request

_TOKEN = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "=":
            return present and labels[self.key] == self.values[0]
        if self.op == "!=":
            return not present or labels[self.key] != self.values[0]
        if self.op == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # notin


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise bad_request(f"unable to parse requirement: {text!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def parse_label_selector(text: str | None) -> list[Requirement]:
    """`a=b,c!=d,e in (x,y),f notin (z),g,!h` -> requirements (all must hold)."""
    if not text or not text.strip():
        return []
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def fail() -> None:
        raise bad_request(f"unable to parse requirement: found unexpected token in label selector {text!r}")

    while i < len(toks):
        if toks[i] == "!":
            if i + 1 >= len(toks):
                fail()
            reqs.append(Requirement(toks[i + 1], "!exists"))
            i += 2
        else:
            key = toks[i]
            nxt = toks[i + 1] if i + 1 < len(toks) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif nxt in ("=", "==", "!="):
                value = toks[i + 2] if i + 2 < len(toks) and toks[i + 2] != "," else ""
                reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
                i += 3 if value else 2
            elif nxt in ("in", "notin"):
                if i + 2 >= len(toks) or toks[i + 2] != "(":
                    fail()
                j = i + 3
                values: list[str] = []
                while j < len(toks) and toks[j] != ")":
                    if toks[j] != ",":
                        values.append(toks[j])
                    j += 1
                if j >= len(toks):
                    fail()
                reqs.append(Requirement(key, nxt, tuple(values)))
                i = j + 1
            else:
                fail()
        if i < len(toks):
            if toks[i] != ",":
                fail()
            i += 1
    return reqs


def labels_match(reqs: list[Requirement], obj: dict[str, Any]) -> bool:
    if not reqs:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


@dataclass(frozen=True)
class FieldRequirement:
    path: tuple[str, ...]
    value: str
    negate: bool


def parse_field_selector(text: str | None) -> list[FieldRequirement]:
    """`metadata.name=x,involvedObject.kind!=Pod`: any dotted path, compared as strings."""
    if not text or not text.strip():
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+?)\s*(==|!=|=)\s*(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        out.append(FieldRequirement(tuple(m.group(1).split(".")), m.group(3), m.group(2) == "!="))
    return out


def field_value(obj: dict[str, Any], path: tuple[str, ...]) -> str:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(p)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def fields_match(reqs: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    for r in reqs:
        equal = field_value(obj, r.path) == r.value
        if equal == r.negate:
            return False
    return True


COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
# The field labels kube-apiserver accepts per resource (its GetAttrs / field label conversions).
SUPPORTED_FIELDS: dict[str, frozenset[str]] = {
    "/pods": frozenset({"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                        "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs",
                        "status.nominatedNodeName"}),
    "/events": frozenset({"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                          "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                          "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"}),
    "/secrets": frozenset({"type"}),
    "/namespaces": frozenset({"status.phase"}),
    "/nodes": frozenset({"spec.unschedulable"}),
    "/services": frozenset({"spec.clusterIP", "spec.type"}),
    "/replicationcontrollers": frozenset({"status.replicas"}),
    "apps/replicasets": frozenset({"status.replicas"}),
    "batch/jobs": frozenset({"status.successful"}),
}


@dataclass
class Selector:
    """Both selectors of one request."""

    labels: list[Requirement]
    fields: list[FieldRequirement]

    @classmethod
    def parse(cls, label_selector: str | None, field_selector: str | None) -> Selector:
        return cls(parse_label_selector(label_selector), parse_field_selector(field_selector))

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields

    def matches(self, obj: dict[str, Any]) -> bool:
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)

    def check_fields(self, resource_key: str, extra: frozenset[str] | set[str] = frozenset()) -> None:
        """400 for a field label the resource cannot be selected by, as kube answers (rather than
        an empty list). `extra`: a CRD's selectableFields."""
        allowed = COMMON_FIELDS | SUPPORTED_FIELDS.get(resource_key, frozenset()) | extra
        for r in self.fields:
            label = ".".join(r.path)
            if label not in allowed:
                raise bad_request(f'field label not supported: {label}')
