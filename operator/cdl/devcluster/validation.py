"""Validation of built-in kinds, the rules of kube-apiserver a person meets first
(k8s.io/kubernetes pkg/apis/*/validation), with its field paths and wording.

An object that fails is refused whole with 422 Invalid and every cause, as kube does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cdl.devcluster.errors import Cause
from cdl.devcluster.schema import go_value

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
                 "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
                 "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
DNS_1035_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
                "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
                "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")


def _required(causes: list[Cause], path: str, detail: str = "") -> None:
    causes.append(Cause("FieldValueRequired", "Required value" + (f": {detail}" if detail else ""), path))


def _invalid(causes: list[Cause], path: str, value: Any, detail: str) -> None:
    causes.append(Cause("FieldValueInvalid", f"Invalid value: {go_value(value)}: {detail}", path))


def _unsupported(causes: list[Cause], path: str, value: Any, allowed: list[str]) -> None:
    supported = ", ".join(f'"{a}"' for a in allowed)
    causes.append(Cause("FieldValueNotSupported", f"Unsupported value: {go_value(value)}: supported values: "
                        f"{supported}", path))


def _go_map(labels: dict[str, Any]) -> str:
    inner = ", ".join(f'"{k}":"{v}"' for k, v in sorted(labels.items()))
    return f"map[string]string{{{inner}}}"


def metadata(meta: dict[str, Any]) -> list[Cause]:
    """Label values (every kind): at most 63 characters of the allowed set."""
    causes: list[Cause] = []
    for value in (meta.get("labels") or {}).values():
        if not isinstance(value, str):
            continue
        if len(value) > 63:
            _invalid(causes, "metadata.labels", value, "must be no more than 63 characters")
        elif not _LABEL_VALUE.match(value):
            _invalid(causes, "metadata.labels", value,
                     "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                     "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
                     "'my_value',  or '12345', regex used for validation is "
                     "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
    return causes


def pod_spec(spec: Any, path: str, restart_policies: tuple[str, ...] = ("Always", "OnFailure", "Never")
             ) -> list[Cause]:
    causes: list[Cause] = []
    if not isinstance(spec, dict):
        _required(causes, path)
        return causes
    containers = spec.get("containers")
    if not containers:
        _required(causes, f"{path}.containers")
    seen: set[str] = set()
    for n, c in enumerate(containers or []):
        cpath = f"{path}.containers[{n}]"
        if not isinstance(c, dict):
            continue
        name = c.get("name")
        if not name:
            _required(causes, f"{cpath}.name")
        elif not _DNS_LABEL.match(name):
            _invalid(causes, f"{cpath}.name", name, DNS_LABEL_MSG)
        elif name in seen:
            causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {go_value(name)}", f"{cpath}.name"))
        if name:
            seen.add(name)
        if not c.get("image"):
            _required(causes, f"{cpath}.image")
        for m, p in enumerate(c.get("ports") or []):
            port = p.get("containerPort") if isinstance(p, dict) else None
            if not isinstance(port, int) or not 0 < port < 65536:
                _invalid(causes, f"{cpath}.ports[{m}].containerPort", port, "must be between 1 and 65535, inclusive")
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in restart_policies:
        _unsupported(causes, f"{path}.restartPolicy", policy, list(restart_policies))
    return causes


def _pod(obj: dict[str, Any]) -> list[Cause]:
    return pod_spec(obj.get("spec"), "spec")


def _selector_matches(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _workload(obj: dict[str, Any], restart_policies: tuple[str, ...] = ("Always",),
              selector_required: bool = True) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        _required(causes, "spec")
        return causes
    replicas = spec.get("replicas")
    if isinstance(replicas, int) and replicas < 0:
        _invalid(causes, "spec.replicas", replicas, "must be greater than or equal to 0")
    selector = spec.get("selector")
    template = spec.get("template")
    if selector_required and not selector:
        _required(causes, "spec.selector")
    elif selector_required and not (selector.get("matchLabels") or selector.get("matchExpressions")):
        _invalid(causes, "spec.selector", selector, "empty selector is invalid for deployment")
    if not isinstance(template, dict):
        _required(causes, "spec.template")
        return causes
    labels = (template.get("metadata") or {}).get("labels") or {}
    if isinstance(selector, dict) and (selector.get("matchLabels") or selector.get("matchExpressions")) \
            and not _selector_matches(selector, labels):
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {_go_map(labels)}: `selector` does not match "
                            "template `labels`", "spec.template.metadata.labels"))
    causes += pod_spec(template.get("spec"), "spec.template.spec", restart_policies)
    return causes


def _job_spec(spec: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    if not isinstance(spec, dict):
        _required(causes, path)
        return causes
    tpl = spec.get("template")
    if not isinstance(tpl, dict):
        _required(causes, f"{path}.template")
        return causes
    tspec = tpl.get("spec")
    causes += pod_spec(tspec, f"{path}.template.spec", ("OnFailure", "Never"))
    for key in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"):
        v = spec.get(key)
        if isinstance(v, int) and v < 0:
            _invalid(causes, f"{path}.{key}", v, "must be greater than or equal to 0")
    return causes


def _job(obj: dict[str, Any]) -> list[Cause]:
    return _job_spec(obj.get("spec"), "spec")


def _cronjob(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        _required(causes, "spec")
        return causes
    schedule = spec.get("schedule")
    if not schedule:
        _required(causes, "spec.schedule")
    else:
        from croniter import croniter

        expr = schedule.split(" ", 1)[-1] if schedule.startswith(("TZ=", "CRON_TZ=")) else schedule
        if not croniter.is_valid(expr):
            _invalid(causes, "spec.schedule", schedule, "unparseable cron expression")
    policy = spec.get("concurrencyPolicy")
    if policy not in (None, "Allow", "Forbid", "Replace"):
        _unsupported(causes, "spec.concurrencyPolicy", policy, ["Allow", "Forbid", "Replace"])
    causes += _job_spec((spec.get("jobTemplate") or {}).get("spec"), "spec.jobTemplate.spec")
    return causes


SERVICE_TYPES = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]


def _service(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    name = obj["metadata"].get("name", "")
    if name and not _DNS_1035.match(name):
        _invalid(causes, "metadata.name", name, DNS_1035_MSG)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        _required(causes, "spec")
        return causes
    typ = spec.get("type", "ClusterIP")
    if typ not in SERVICE_TYPES:
        _unsupported(causes, "spec.type", typ, SERVICE_TYPES)
    ports = spec.get("ports") or []
    if not ports and typ != "ExternalName" and spec.get("clusterIP") != "None":
        _required(causes, "spec.ports")
    if typ == "ExternalName" and not spec.get("externalName"):
        _required(causes, "spec.externalName")
    for n, p in enumerate(ports):
        if not isinstance(p, dict):
            continue
        port = p.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            _invalid(causes, f"spec.ports[{n}].port", port, "must be between 1 and 65535, inclusive")
        if len(ports) > 1 and not p.get("name"):
            _required(causes, f"spec.ports[{n}].name")
        if p.get("protocol") not in (None, "TCP", "UDP", "SCTP"):
            _unsupported(causes, f"spec.ports[{n}].protocol", p.get("protocol"), ["SCTP", "TCP", "UDP"])
    return causes


def _ingress(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for n, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
        for m, path in enumerate(((rule or {}).get("http") or {}).get("paths") or []):
            where = f"spec.rules[{n}].http.paths[{m}]"
            kind = (path or {}).get("pathType")
            if not kind:
                _required(causes, f"{where}.pathType", "pathType must be specified")
            elif kind not in ("Exact", "Prefix", "ImplementationSpecific"):
                _unsupported(causes, f"{where}.pathType", kind, ["Exact", "ImplementationSpecific", "Prefix"])
            if not (path or {}).get("backend"):
                _required(causes, f"{where}.backend")
    return causes


def _pdb(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    spec = obj.get("spec") or {}
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        _invalid(causes, "spec", spec, "minAvailable and maxUnavailable cannot be both set")
    return causes


def _binding(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    ref = obj.get("roleRef") or {}
    kinds = ["ClusterRole"] if obj.get("kind") == "ClusterRoleBinding" else ["ClusterRole", "Role"]
    if ref.get("kind") not in kinds:
        _unsupported(causes, "roleRef.kind", ref.get("kind", ""), kinds)
    if not ref.get("name"):
        _required(causes, "roleRef.name")
    return causes


def _config_keys(obj: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    for field in ("data", "binaryData"):
        for key in obj.get(field) or {}:
            if not _CONFIG_KEY.match(key) or len(key) > 253:
                _invalid(causes, f"{field}[{key}]", key,
                         "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
                         "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                         "'[-._a-zA-Z0-9]+')")
    return causes


def _namespace(obj: dict[str, Any]) -> list[Cause]:
    name = obj["metadata"].get("name", "")
    causes: list[Cause] = []
    if not _DNS_LABEL.match(name) or len(name) > 63:
        _invalid(causes, "metadata.name", name, DNS_LABEL_MSG)
    return causes


VALIDATORS: dict[str, Callable[[dict[str, Any]], list[Cause]]] = {
    "/pods": _pod,
    "/services": _service,
    "/namespaces": _namespace,
    "/configmaps": _config_keys,
    "/secrets": _config_keys,
    "/replicationcontrollers": lambda o: _workload(o, selector_required=False),
    "apps/deployments": _workload,
    "apps/replicasets": _workload,
    "apps/statefulsets": _workload,
    "apps/daemonsets": _workload,
    "batch/jobs": _job,
    "batch/cronjobs": _cronjob,
    "networking.k8s.io/ingresses": _ingress,
    "policy/poddisruptionbudgets": _pdb,
    "rbac.authorization.k8s.io/rolebindings": _binding,
    "rbac.authorization.k8s.io/clusterrolebindings": _binding,
}


def validate(key: str, obj: dict[str, Any]) -> list[Cause]:
    """Every problem of a (defaulted) built-in object of resource `key`; [] when it is valid."""
    causes = metadata(obj.get("metadata") or {})
    fn = VALIDATORS.get(key)
    if fn is not None:
        causes += fn(obj)
    return causes
