"""Defaults and initial status of built-in kinds, as kube-apiserver's defaulting functions and
create strategies set them (k8s.io/kubernetes pkg/apis/*/v1/defaults.go, registry/*/strategy.go).

Nothing here runs a workload: a Pod stays Pending, a Deployment has the empty status of an object
no controller has looked at yet. A Service gets its cluster IP (and node ports) allocated.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from typing import Any

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
KUBERNETES_SERVICE_IP = "10.96.0.1"
NODE_PORTS = range(30000, 32768)


def _set(obj: dict[str, Any], key: str, value: Any) -> None:
    if obj.get(key) is None:
        obj[key] = value


def _image_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _container(c: dict[str, Any]) -> None:
    if not isinstance(c, dict):
        return
    if isinstance(c.get("image"), str):
        _set(c, "imagePullPolicy", _image_pull_policy(c["image"]))
    _set(c, "terminationMessagePath", "/dev/termination-log")
    _set(c, "terminationMessagePolicy", "File")
    _set(c, "resources", {})
    for p in c.get("ports") or []:
        if isinstance(p, dict):
            _set(p, "protocol", "TCP")
    for env in c.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        if isinstance(ref, dict):
            _set(ref, "apiVersion", "v1")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        pr = c.get(probe)
        if isinstance(pr, dict):
            for k, v in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                         ("failureThreshold", 3)):
                _set(pr, k, v)


def pod_spec(spec: Any, restart_policy: str = "Always") -> None:
    if not isinstance(spec, dict):
        return
    _set(spec, "restartPolicy", restart_policy)
    _set(spec, "dnsPolicy", "ClusterFirst")
    _set(spec, "schedulerName", "default-scheduler")
    _set(spec, "securityContext", {})
    _set(spec, "terminationGracePeriodSeconds", 30)
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            _container(c)
    for vol in spec.get("volumes") or []:
        if not isinstance(vol, dict):
            continue
        for kind in ("secret", "configMap", "downwardAPI", "projected"):
            if isinstance(vol.get(kind), dict):
                _set(vol[kind], "defaultMode", 420)
        if not any(k != "name" for k in vol):
            vol["emptyDir"] = {}


def _template(obj: dict[str, Any], restart_policy: str = "Always") -> None:
    tpl = (obj.get("spec") or {}).get("template")
    if isinstance(tpl, dict):
        pod_spec(tpl.get("spec"), restart_policy)


def _qos_class(spec: dict[str, Any]) -> str:
    containers = [c for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
                  if isinstance(c, dict)]
    requests = [(c.get("resources") or {}).get("requests") or {} for c in containers]
    limits = [(c.get("resources") or {}).get("limits") or {} for c in containers]
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(
        lim.get("cpu") and lim.get("memory") and all(req.get(k, lim[k]) == lim[k] for k in ("cpu", "memory"))
        for req, lim in zip(requests, limits, strict=True))
    return "Guaranteed" if guaranteed else "Burstable"


def _pod(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    pod_spec(spec)
    if isinstance(spec, dict):
        _set(spec, "enableServiceLinks", True)
        _set(spec, "preemptionPolicy", "PreemptLowerPriority")
        _set(spec, "priority", 0)
        _set(spec, "serviceAccountName", "default")
        spec["serviceAccount"] = spec["serviceAccountName"]
        if create:
            obj["status"] = {
                "phase": "Pending", "qosClass": _qos_class(spec),
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                "message": "0/0 nodes are available: the devcluster stores pods and runs "
                                           "none of them.", "lastProbeTime": None,
                                "lastTransitionTime": obj["metadata"]["creationTimestamp"]}],
            }


def _rolling(strategy: dict[str, Any], surge: Any = "25%", unavailable: Any = "25%") -> None:
    _set(strategy, "type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        ru = strategy.setdefault("rollingUpdate", {}) or {}
        strategy["rollingUpdate"] = ru
        if surge is not None:
            _set(ru, "maxSurge", surge)
        _set(ru, "maxUnavailable", unavailable)


def _deployment(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _set(spec, "replicas", 1)
    _set(spec, "revisionHistoryLimit", 10)
    _set(spec, "progressDeadlineSeconds", 600)
    spec["strategy"] = spec.get("strategy") or {}
    _rolling(spec["strategy"])
    _template(obj)
    if create:
        obj["status"] = {}


def _replicaset(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict):
        _set(spec, "replicas", 1)
    _template(obj)
    if create:
        obj["status"] = {"replicas": 0}


def _statefulset(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _set(spec, "replicas", 1)
    _set(spec, "revisionHistoryLimit", 10)
    _set(spec, "podManagementPolicy", "OrderedReady")
    spec["updateStrategy"] = spec.get("updateStrategy") or {}
    _set(spec["updateStrategy"], "type", "RollingUpdate")
    if spec["updateStrategy"]["type"] == "RollingUpdate":
        spec["updateStrategy"].setdefault("rollingUpdate", {}).setdefault("partition", 0)
    _set(spec, "persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
    _template(obj)
    if create:
        obj["status"] = {"replicas": 0, "availableReplicas": 0}


def _daemonset(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _set(spec, "revisionHistoryLimit", 10)
    spec["updateStrategy"] = spec.get("updateStrategy") or {}
    _rolling(spec["updateStrategy"], 0, 1)
    _template(obj)
    if create:
        obj["status"] = {"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                         "numberMisscheduled": 0, "numberReady": 0}


def job_spec(spec: Any) -> None:
    if not isinstance(spec, dict):
        return
    _set(spec, "backoffLimit", 6)
    _set(spec, "completionMode", "NonIndexed")
    _set(spec, "suspend", False)
    _set(spec, "podReplacementPolicy", "TerminatingOrFailed")
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    _set(spec, "parallelism", 1)
    tpl = spec.get("template")
    if isinstance(tpl, dict):
        pod_spec(tpl.get("spec"), "Never")


def _job(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    job_spec(spec)
    if create and isinstance(spec, dict) and not spec.get("manualSelector"):
        uid, name = obj["metadata"]["uid"], obj["metadata"]["name"]
        labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                  "controller-uid": uid, "job-name": name}
        if not spec.get("selector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        tpl = spec.get("template")
        if isinstance(tpl, dict):
            meta = tpl.setdefault("metadata", {})
            meta["labels"] = {**(meta.get("labels") or {}), **labels}
    if create:
        obj["status"] = {}


def _cronjob(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _set(spec, "concurrencyPolicy", "Allow")
    _set(spec, "suspend", False)
    _set(spec, "successfulJobsHistoryLimit", 3)
    _set(spec, "failedJobsHistoryLimit", 1)
    tpl = spec.get("jobTemplate")
    if isinstance(tpl, dict):
        job_spec(tpl.get("spec"))
    if create:
        obj["status"] = {}


def _free(taken: Iterable[Any], choose: Callable[[], Any], what: str) -> Any:
    used = set(taken)
    for _ in range(1000):
        value = choose()
        if value not in used:
            return value
    raise RuntimeError(f"no free {what} left")


def _service(obj: dict[str, Any], create: bool, existing: Callable[[], Iterable[dict[str, Any]]]) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _set(spec, "type", "ClusterIP")
    _set(spec, "sessionAffinity", "None")
    typ = spec["type"]
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            _set(p, "protocol", "TCP")
            if p.get("targetPort") is None and p.get("port") is not None:
                p["targetPort"] = p["port"]
    if typ == "ExternalName":
        return
    _set(spec, "internalTrafficPolicy", "Cluster")
    if typ in ("NodePort", "LoadBalancer"):
        _set(spec, "externalTrafficPolicy", "Cluster")
    if typ == "LoadBalancer":
        _set(spec, "allocateLoadBalancerNodePorts", True)
    if not create and spec.get("clusterIP"):
        return
    others = list(existing())
    if not spec.get("clusterIP"):
        taken = {(o.get("spec") or {}).get("clusterIP") for o in others} | {KUBERNETES_SERVICE_IP}
        first, size = int(SERVICE_CIDR.network_address), SERVICE_CIDR.num_addresses
        spec["clusterIP"] = _free(taken, lambda: str(ipaddress.ip_address(first + random.randrange(2, size - 1))),
                                  "cluster IP")
    spec["clusterIPs"] = spec.get("clusterIPs") or [spec["clusterIP"]]
    if spec["clusterIP"] != "None":
        _set(spec, "ipFamilies", ["IPv4"])
        _set(spec, "ipFamilyPolicy", "SingleStack")
    if typ in ("NodePort", "LoadBalancer"):
        taken = {p.get("nodePort") for o in others for p in (o.get("spec") or {}).get("ports") or []}
        for p in spec.get("ports") or []:
            if isinstance(p, dict) and not p.get("nodePort"):
                p["nodePort"] = _free(taken, lambda: random.choice(NODE_PORTS), "node port")
                taken.add(p["nodePort"])
    if create:
        obj["status"] = {"loadBalancer": {}}


def _pvc(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict):
        _set(spec, "volumeMode", "Filesystem")
    if create:
        obj["status"] = {"phase": "Pending"}


def _pv(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict):
        _set(spec, "persistentVolumeReclaimPolicy", "Retain")
        _set(spec, "volumeMode", "Filesystem")
    if create:
        obj["status"] = {"phase": "Pending"}


def _pdb(obj: dict[str, Any], create: bool, _: Any) -> None:
    if create:
        obj["status"] = {"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0}


def _ingress(obj: dict[str, Any], create: bool, _: Any) -> None:
    if create:
        obj["status"] = {"loadBalancer": {}}


def _priority_class(obj: dict[str, Any], create: bool, _: Any) -> None:
    _set(obj, "preemptionPolicy", "PreemptLowerPriority")


def _quota(obj: dict[str, Any], create: bool, _: Any) -> None:
    if create:
        obj["status"] = {}


def _pod_template(obj: dict[str, Any], create: bool, _: Any) -> None:
    pod_spec((obj.get("template") or {}).get("spec"))


def _rc(obj: dict[str, Any], create: bool, _: Any) -> None:
    spec = obj.get("spec")
    if isinstance(spec, dict):
        _set(spec, "replicas", 1)
        tpl = spec.get("template")
        if isinstance(tpl, dict) and not spec.get("selector"):
            spec["selector"] = dict((tpl.get("metadata") or {}).get("labels") or {})
    _template(obj)
    if create:
        obj["status"] = {"replicas": 0}


DEFAULTERS: dict[str, Callable[[dict[str, Any], bool, Any], None]] = {
    "/pods": _pod,
    "/services": _service,
    "/persistentvolumeclaims": _pvc,
    "/persistentvolumes": _pv,
    "/resourcequotas": _quota,
    "/podtemplates": _pod_template,
    "/replicationcontrollers": _rc,
    "apps/deployments": _deployment,
    "apps/replicasets": _replicaset,
    "apps/statefulsets": _statefulset,
    "apps/daemonsets": _daemonset,
    "batch/jobs": _job,
    "batch/cronjobs": _cronjob,
    "policy/poddisruptionbudgets": _pdb,
    "networking.k8s.io/ingresses": _ingress,
    "scheduling.k8s.io/priorityclasses": _priority_class,
}


def _keep_allocated(svc: dict[str, Any], old: dict[str, Any]) -> None:
    """An update that leaves out a Service's allocated cluster IP or node ports keeps them, as
    kube's service storage does (a PUT of a manifest without them does not re-allocate)."""
    spec, old_spec = svc.get("spec"), old.get("spec") or {}
    if not isinstance(spec, dict) or spec.get("type", "ClusterIP") == "ExternalName":
        return
    if not spec.get("clusterIP") and old_spec.get("clusterIP"):
        for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if k in old_spec and not spec.get(k):
                spec[k] = old_spec[k]
    old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                 for p in old_spec.get("ports") or [] if isinstance(p, dict)}
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        for p in spec.get("ports") or []:
            if isinstance(p, dict) and not p.get("nodePort"):
                allocated = old_ports.get((p.get("port"), p.get("protocol", "TCP")))
                if allocated:
                    p["nodePort"] = allocated


def apply(key: str, obj: dict[str, Any], old: dict[str, Any] | None,
          existing: Callable[[], Iterable[dict[str, Any]]]) -> None:
    """Default `obj` (of resource `key`; `old` its stored state, None on create) in place; on
    create also give it its initial status. `existing` lists the other objects of the kind (for
    cluster IP and node port allocation)."""
    if key == "/services" and old is not None:
        _keep_allocated(obj, old)
    fn = DEFAULTERS.get(key)
    if fn is not None:
        fn(obj, old is None, existing)
