"""Regenerate operator/cdl/devcluster/kube_proto_fields.json from Kubernetes' own .proto files.

kubectl sends built-in kinds as protobuf. The devcluster decodes them with the field tables of
k8s.io/api and k8s.io/apimachinery (`generated.proto` of each group-version), reduced here to
`message -> [[number, json name, label, type, keep zero]]` (label o: optional, r: repeated,
m: map, i: an embedded struct whose fields are inlined in JSON). JSON names come from the OpenAPI
definitions bundled with kubernetes-validate where the proto name differs (`uID` -> `uid`).

Usage: python scripts/gen_kube_proto_fields.py API_CHECKOUT APIMACHINERY_CHECKOUT TAG
(checkouts of github.com/kubernetes/api and kubernetes/apimachinery at the same tag).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

GROUP_VERSIONS = [
    "core/v1", "apps/v1", "batch/v1", "rbac/v1", "policy/v1", "networking/v1", "scheduling/v1",
    "authentication/v1", "authorization/v1", "autoscaling/v1", "autoscaling/v2", "coordination/v1",
    "discovery/v1", "storage/v1", "admissionregistration/v1", "events/v1",
]
MACHINERY = ["pkg/apis/meta/v1", "pkg/runtime", "pkg/util/intstr", "pkg/api/resource"]
OUT = Path(__file__).resolve().parents[1] / "operator" / "cdl" / "devcluster" / "kube_proto_fields.json"

_FIELD = re.compile(r"^\s*(optional|repeated)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+);")
_MAP = re.compile(r"^\s*map<\s*(\w+)\s*,\s*([\w.]+)\s*>\s+(\w+)\s*=\s*(\d+);")
_DEFAULTS_NONZERO = re.compile(r"Defaults to (?!0\b|false\b|nil\b|empty)")


def _qualify(typ: str, package: str) -> str:
    if typ in {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "double", "float"}:
        return typ
    if typ.startswith("."):
        name = typ[1:]
    else:
        name = f"{package}.{typ}"
    return "io.k8s." + name.removeprefix("k8s.io.")


def parse(text: str) -> dict[str, list[list]]:
    package = re.search(r"^package ([\w.]+);", text, re.M).group(1)  # type: ignore[union-attr]
    messages: dict[str, list[list]] = {}
    current: list[list] | None = None
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("//"):
            comment.append(stripped[2:])
            continue
        if m := re.match(r"^message (\w+) \{", stripped):
            current = messages.setdefault("io.k8s." + package.removeprefix("k8s.io.") + "." + m.group(1), [])
        elif current is not None and (m := _FIELD.match(line)):
            label, typ, name, num = m.groups()
            text_c = " ".join(comment)
            keep_zero = "+optional" not in text_c or bool(_DEFAULTS_NONZERO.search(text_c))
            current.append([int(num), name, "r" if label == "repeated" else "o", _qualify(typ, package), keep_zero])
        elif current is not None and (m := _MAP.match(line)):
            key, value, name, num = m.groups()
            current.append([int(num), name, "m", [_qualify(key, package), _qualify(value, package)], False])
        elif stripped == "}":
            current = None
        comment = [] if not stripped.startswith("//") else comment
    return messages


def main() -> None:
    api, machinery, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    messages: dict[str, list[list]] = {}
    for gv in GROUP_VERSIONS:
        messages.update(parse((api / gv / "generated.proto").read_text()))
    for pkg in MACHINERY:
        messages.update(parse((machinery / pkg / "generated.proto").read_text()))
    import kubernetes_validate  # the OpenAPI definitions of the same release line

    schema_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    defs = json.loads((schema_dir / "v1.35.0-local" / "_definitions.json").read_text())["$defs"]
    renamed = inlined = 0
    for name, flds in messages.items():
        if name not in defs:
            continue
        props = defs[name].get("properties") or {}
        lower = {p.lower(): p for p in props}
        for f in flds:
            if f[1] in props:
                continue
            if f[1].lower() in lower:
                f[1] = lower[f[1].lower()]
                renamed += 1
            elif f[2] == "o" and isinstance(f[3], str) and f[3] in messages:
                # an embedded Go struct (`json:",inline"`, e.g. Volume.volumeSource): its fields
                # appear in the parent's JSON
                f[2] = "i"
                inlined += 1
    OUT.write_text(json.dumps({"source": f"k8s.io/api and k8s.io/apimachinery {tag} generated.proto",
                               "messages": messages}, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{len(messages)} messages, {renamed} fields renamed to their JSON names, {inlined} inlined -> {OUT}")


if __name__ == "__main__":
    main()
