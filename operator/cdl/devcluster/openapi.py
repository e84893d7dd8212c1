"""OpenAPI documents: enough for kubectl to leave validation to the server, and to explain kinds.

kubectl 1.35 reads the v3 index; for each group-version we publish the `patch` operations with
their group-version-kind and the `fieldValidation` query parameter (kubectl then sends
fieldValidation=Strict and we validate), plus the schemas of every kind -- kube's own
definitions for built-ins (kube_schema), the CRD's schema for custom kinds -- so
`kubectl explain pods.spec.containers` works. kubectl 1.20 reads /openapi/v2 as protobuf: an
empty, valid document is enough for it; the JSON form carries the built-in definitions.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cdl.devcluster import kube_schema
from cdl.devcluster.jsonutil import dumps
from cdl.devcluster.registry import Registry, ResourceType

PROTOBUF_V2_TYPE = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
INFO = {"title": "Kubernetes", "version": "v1.35.2"}


def _pb_string(field: int, value: str) -> bytes:
    data = value.encode()
    return bytes([(field << 3) | 2, len(data)]) + data


# openapi_v2.Document{swagger: "2.0", info: {title: "Kubernetes", version: "v1.35.2"}}
EMPTY_V2_PROTOBUF = _pb_string(1, "2.0") + bytes([(2 << 3) | 2, 21]) + _pb_string(1, "Kubernetes") + _pb_string(2, "v1.35.2")
EMPTY_V2_JSON = {"swagger": "2.0", "info": INFO, "paths": {}, "definitions": {}}


def v2_document(registry: Registry) -> dict[str, Any]:
    """Swagger 2.0 JSON: the definitions of every served built-in kind (and what they use)."""
    names = [n for rt in registry.all() if rt.builtin for v in rt.versions
             if (n := kube_schema.definition_name(rt.group, v.name, rt.kind))]
    return {**EMPTY_V2_JSON, "definitions": kube_schema.openapi_schemas(names, "#/definitions/")}


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(rt: ResourceType, version: str) -> str:
    rev = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{rev}.{version}.{rt.kind}"


def gv_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in types:
        gvk = {"group": rt.group, "version": version, "kind": rt.kind}
        builtin_def = kube_schema.definition_name(rt.group, version, rt.kind) if rt.builtin else None
        name = builtin_def or _schema_name(rt, version)
        prefix = f"/{gv_path(group, version)}"
        item = (f"{prefix}/namespaces/{{namespace}}/{rt.plural}/{{name}}" if rt.namespaced
                else f"{prefix}/{rt.plural}/{{name}}")
        ref = {"$ref": f"#/components/schemas/{name}"}
        op = {
            "operationId": f"patch{rt.kind}",
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            ],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        }
        paths[item] = {"patch": op}
        if builtin_def:
            schemas.update(kube_schema.openapi_schemas([builtin_def]))
            continue
        info = rt.version(version)
        body: dict[str, Any] = dict(info.schema) if info and info.schema else {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}
        body["x-kubernetes-group-version-kind"] = [gvk]
        schemas[name] = body
    return {"openapi": "3.0.0", "info": INFO, "paths": paths, "components": {"schemas": schemas}}


def v3_index(registry: Registry) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            doc = gv_document(registry, group, version)
            digest = hashlib.sha256(dumps(doc)).hexdigest()[:32].upper()
            path = gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}
