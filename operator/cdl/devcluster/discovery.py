"""Discovery documents: legacy (/api, /apis, per group-version) and aggregated (apidiscovery v2).

kopf needs `singularName` and the `namespaces` resource in /api/v1; kubectl 1.35 asks for the
aggregated form and, when it gets it, makes no per-group-version calls.
"""

from __future__ import annotations

from typing import Any

from cdl.devcluster.registry import STATUS_VERBS, Registry, ResourceType

AGGREGATED_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def wants_aggregated(accept: str) -> bool:
    """True when one of the Accept entries is the v2 aggregated discovery type."""
    for part in accept.split(","):
        params = dict(p.strip().partition("=")[::2] for p in part.split(";")[1:])
        if params.get("as") == "APIGroupDiscoveryList" and params.get("v") == "v2" \
                and params.get("g") == "apidiscovery.k8s.io":
            return True
    return False


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups = [_group_entry(g, vs) for g, vs in sorted(registry.group_versions().items()) if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    versions = registry.group_versions().get(group)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for rt in sorted(types, key=lambda t: t.plural):
        entry: dict[str, Any] = {
            "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
            "verbs": rt.verbs,
        }
        if rt.short_names:
            entry["shortNames"] = rt.short_names
        if rt.categories:
            entry["categories"] = rt.categories
        resources.append(entry)
        if rt.status_subresource:
            resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": STATUS_VERBS})
        if rt.scale:
            resources.append({"name": f"{rt.plural}/scale", "singularName": "", "namespaced": rt.namespaced,
                              "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": STATUS_VERBS})
        for sub, group, ver, kind, verbs in rt.extra_subresources:
            resources.append({"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                              "group": group, "version": ver, "kind": kind, "verbs": verbs})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _aggregated_resource(rt: ResourceType, version: str) -> dict[str, Any]:
    kind = {"group": rt.group, "version": version, "kind": rt.kind}
    entry: dict[str, Any] = {
        "resource": rt.plural, "responseKind": kind, "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular, "verbs": rt.verbs,
    }
    if rt.short_names:
        entry["shortNames"] = rt.short_names
    if rt.categories:
        entry["categories"] = rt.categories
    subresources = []
    if rt.status_subresource:
        subresources.append({"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS})
    if rt.scale:
        subresources.append({"subresource": "scale", "verbs": STATUS_VERBS,
                             "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}})
    for sub, group, ver, sub_kind, verbs in rt.extra_subresources:
        subresources.append({"subresource": sub, "verbs": verbs,
                             "responseKind": {"group": group, "version": ver, "kind": sub_kind}})
    if subresources:
        entry["subresources"] = subresources
    return entry


def aggregated(registry: Registry, legacy: bool) -> dict[str, Any]:
    """APIGroupDiscoveryList for /api (legacy=True, the core group) or /apis (all others)."""
    items = []
    for group, versions in sorted(registry.group_versions().items()):
        if (group == "") != legacy:
            continue
        vs = []
        for v in versions:
            types = sorted(registry.in_group_version(group, v), key=lambda t: t.plural)
            vs.append({"version": v, "resources": [_aggregated_resource(rt, v) for rt in types],
                       "freshness": "Current"})
        items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": vs})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}
