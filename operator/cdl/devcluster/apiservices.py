"""apiregistration.k8s.io: one APIService per served group-version, as kube's autoregister
controller keeps them (`kubectl get apiservices`). They are served locally (no `spec.service`)
and Available; ones for group-versions no longer served (a CRD deleted) go away.
"""

from __future__ import annotations

from typing import Any

from cdl.devcluster.registry import APISERVICE_KEY, Registry

AUTOMANAGED = "kube-aggregator.kubernetes.io/automanaged"


def name_of(group: str, version: str) -> str:
    """`v1.apps`, and `v1.` for the core group, as kube names them."""
    return f"{version}.{group}"


def desired(registry: Registry) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for group, versions in registry.group_versions().items():
        builtin = any(rt.builtin for rt in registry.all() if rt.group == group)
        for n, version in enumerate(versions):
            name = name_of(group, version)
            out[name] = {
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": name, "labels": {AUTOMANAGED: "onstart" if builtin else "true"}},
                "spec": {"group": group, "version": version, "groupPriorityMinimum": 18000 if builtin else 1000,
                         "versionPriority": 15 if n == 0 else 10},
            }
    return out


def sync(api: Any) -> None:
    """Create the APIServices of served group-versions, delete automanaged ones of gone ones."""
    from cdl.devcluster.objects import DeleteOptions, WriteOptions, now_rfc3339

    rt = api.registry.by_key(APISERVICE_KEY)
    if rt is None:
        return
    want = desired(api.registry)
    have = {st.obj["metadata"]["name"]: st for st in api.store.items(APISERVICE_KEY)}
    opts = WriteOptions(field_manager="kube-apiserver")
    for name, obj in want.items():
        if name in have:
            continue
        created = api.create(rt, "v1", "", obj, opts)
        status = {"conditions": [{"type": "Available", "status": "True", "reason": "Local",
                                  "message": "Local APIServices are always available",
                                  "lastTransitionTime": now_rfc3339()}]}
        api.replace(rt, "v1", "", name, {**created, "status": status}, opts, "status")
    for name, st in have.items():
        if name not in want and (st.obj["metadata"].get("labels") or {}).get(AUTOMANAGED):
            api.delete(rt, "", name, DeleteOptions())
