"""The write semantics of every kind: create, update, patch and delete as kube performs them.

This is the one writer: each method validates, computes the new object, commits it through the
store, then publishes the watch event (the rv in a response always equals the rv of its event).
All methods are synchronous, so on the server's event loop writes never interleave.
"""

from __future__ import annotations

import base64
import datetime
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

from cdl.devcluster import defaulting, fieldmanager, kube_schema, schema, validation
from cdl.devcluster import patch as patches
from cdl.devcluster import scale as scales
from cdl.devcluster.errors import (
    ApiError,
    Cause,
    already_exists,
    bad_request,
    conflict,
    invalid,
    not_found,
)
from cdl.devcluster.jsonutil import clone, loads
from cdl.devcluster.registry import (
    CRD_KEY,
    NAMESPACE_KEY,
    SERVICE_ACCOUNT_KEY,
    Registry,
    ResourceType,
    crd_names_problem,
    from_crd,
)
from cdl.devcluster.selectors import Selector
from cdl.devcluster.store import Store, Stored
from cdl.devcluster.watch import Broadcaster, Event

PROTECTED_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
_SUFFIX_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WriteOptions:
    """Query parameters of a write."""

    dry_run: bool = False
    field_validation: str = ""  # Strict | Warn | Ignore ("" = Warn)
    field_manager: str = ""
    force: bool = False
    user_agent: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def manager(self) -> str:
        """The field manager of an update: `fieldManager`, else the User-Agent's product name."""
        return self.field_manager or self.user_agent.split("/", 1)[0].strip() or "unknown"


@dataclass
class DeleteOptions:
    propagation: str = "Background"
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False


class Collector(Protocol):
    """What the writer tells the garbage collector (gc.py)."""

    def owner_gone(self, uid: str) -> None: ...

    def namespace_terminating(self, name: str) -> None: ...

    def crd_terminating(self, name: str) -> None: ...

    def orphan(self, uid: str) -> None: ...


def _spec_part(obj: dict[str, Any], drop_status: bool) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "metadata" and not (drop_status and k == "status")}


def apply_patch_body(current: dict[str, Any], ctype: str, body: Any, builtin: bool,
                     schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """`current` changed by a merge, JSON or strategic patch body (415 for other types);
    `schema` gives a strategic merge the kind's list merge keys."""
    if ctype == patches.MERGE_PATCH:
        if not isinstance(body, dict):
            raise bad_request("json: cannot unmarshal the patch into an object: a merge patch must be a JSON object")
        new = patches.merge_patch(current, body)
    elif ctype == patches.JSON_PATCH:
        new = patches.json_patch(current, body)
    elif ctype == patches.STRATEGIC_PATCH:
        if not builtin:
            raise ApiError(415, "the body of the request was in an unknown format - accepted media types "
                           "include: application/json-patch+json, application/merge-patch+json, "
                           "application/apply-patch+yaml")
        if not isinstance(body, dict):
            raise bad_request("a strategic merge patch must be a JSON object")
        new = patches.strategic_merge(current, body, schema)
    else:
        raise ApiError(415, f"the body of the request was in an unknown format - accepted media types include: "
                       f"{patches.JSON_PATCH}, {patches.MERGE_PATCH}, {patches.APPLY_PATCH}"
                       + (f", {patches.STRATEGIC_PATCH}" if builtin else ""))
    if not isinstance(new, dict):
        raise ApiError(422, "the patched object is not a JSON object")
    return new


def _unknown_fields(rt: ResourceType, version: str, dropped: list[str], opts: WriteOptions) -> None:
    """Fields the schema does not know were dropped: refuse (Strict), warn (Warn, the default) or
    say nothing (Ignore), as kube's fieldValidation does."""
    if not dropped:
        return
    unknown = ", ".join(f'unknown field "{p}"' for p in dropped)
    if opts.field_validation == "Strict":
        raise bad_request(f"{rt.kind} in version \"{version}\" cannot be handled as a {rt.kind}: "
                          f"strict decoding error: {unknown}")
    if opts.field_validation != "Ignore":
        opts.warnings += [f'unknown field "{p}"' for p in dropped]


def _drop_empty_metadata(meta: dict[str, Any]) -> None:
    """ObjectMeta's maps and lists are `omitempty` in kube: `annotations: {}` is not kept."""
    for k in ("labels", "annotations", "finalizers", "ownerReferences", "generateName"):
        if k in meta and not meta[k]:
            del meta[k]


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


class Api:
    """Kube's REST storage strategies, generic over kinds, with a few kind-specific hooks."""

    def __init__(self, store: Store, registry: Registry, events: Broadcaster) -> None:
        self.store = store
        self.registry = registry
        self.events = events
        self.collector: Collector | None = None
        self.on_crd_change: list[Callable[[], None]] = []
        for st in list(self.store.items(CRD_KEY)):
            if not crd_names_problem(st.obj):
                self.registry.add(from_crd(st.obj))

    # --- reads ----------------------------------------------------------------------------
    def get(self, rt: ResourceType, ns: str, name: str) -> Stored:
        st = self.store.get(rt.key, ns if rt.namespaced else "", name)
        if st is None:
            raise not_found(rt.plural, rt.group, name)
        return st

    def list(self, rt: ResourceType, ns: str | None, selector: Selector) -> list[Stored]:
        items = self.store.items(rt.key, ns if rt.namespaced else None)
        if selector.empty:
            out = list(items)
        else:
            out = [st for st in items if selector.matches(st.obj)]
        out.sort(key=lambda st: (st.obj["metadata"].get("namespace", ""), st.obj["metadata"]["name"]))
        return out

    # --- create ---------------------------------------------------------------------------
    def create(self, rt: ResourceType, version: str, ns: str, body: Any, opts: WriteOptions,
               managed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """`managed`: the managedFields an apply computed; an ordinary create owns every field."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        obj = clone(body)
        self._check_type(rt, version, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = ns
            self._check_namespace(ns)
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(rt.kind, rt.group, "", [Cause("FieldValueRequired", "Required value: name or generateName is required", "metadata.name")])
            for _ in range(20):
                meta["name"] = meta["generateName"] + "".join(random.choices(_SUFFIX_CHARS, k=5))
                if self.store.get(rt.key, ns if rt.namespaced else "", meta["name"]) is None:
                    break
        name = meta["name"]
        causes = schema.validate_name(name, rt.key) if isinstance(name, str) else [
            Cause("FieldValueInvalid", "Invalid value: must be a string", "metadata.name")]
        if causes:
            raise invalid(rt.kind, rt.group, str(name), causes)
        if self.store.get(rt.key, ns if rt.namespaced else "", name) is not None:
            raise already_exists(rt.plural, rt.group, name)
        for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation", "managedFields", "selfLink"):
            meta.pop(k, None)
        if rt.status_subresource and rt.key != CRD_KEY:
            obj.pop("status", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        self._prepare(rt, version, obj, None, opts)
        _drop_empty_metadata(meta)
        if managed is None:
            now = meta["creationTimestamp"]
            entries = fieldmanager.record_update(
                {}, fieldmanager.object_leaves(obj, self._field_schema(rt, version), "", rt.status_subresource),
                [], opts.manager, "", rt.api_version(version), now)
            managed = fieldmanager.write_entries(entries)
        if managed:
            meta["managedFields"] = managed
        if opts.dry_run:
            return obj
        rv = self.store.next_rv()
        meta["resourceVersion"] = str(rv)
        self.store.put(rt.key, meta.get("namespace", ""), name, obj, rv)
        self.events.publish(Event("ADDED", rt.key, meta.get("namespace", ""), rv, obj))
        self._after_write(rt, obj)
        if rt.key == NAMESPACE_KEY:
            self.ensure_default_service_account(name)
        return obj

    def ensure_default_service_account(self, namespace: str) -> None:
        """Every namespace has a `default` ServiceAccount, as kube's service account controller
        makes sure (`kubectl create token default`, pods' serviceAccountName)."""
        sa = self.registry.by_key(SERVICE_ACCOUNT_KEY)
        if sa is not None and self.store.get(SERVICE_ACCOUNT_KEY, namespace, "default") is None:
            self.create(sa, "v1", namespace, {"metadata": {"name": "default"}},
                        WriteOptions(field_manager="kube-controller-manager"))

    # --- update ---------------------------------------------------------------------------
    def replace(self, rt: ResourceType, version: str, ns: str, name: str, body: Any, opts: WriteOptions,
                subresource: str = "") -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        old = self.get(rt, ns, name)
        new = clone(body)
        meta = new.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        if not meta.get("resourceVersion") and not rt.builtin:
            raise invalid(rt.kind, rt.group, name, [Cause(
                "FieldValueInvalid", "Invalid value: 0x0: must be specified for an update", "metadata.resourceVersion")])
        if not meta.get("resourceVersion"):
            new.setdefault("metadata", {})["resourceVersion"] = str(old.rv)
        self._check_type(rt, version, new)
        return self._update(rt, version, old, new, opts, subresource)

    def patch(self, rt: ResourceType, version: str, ns: str, name: str, content_type: str, raw: bytes,
              opts: WriteOptions, subresource: str = "") -> tuple[dict[str, Any], bool]:
        """Returns (object, created); only an apply patch may create."""
        ctype = content_type.split(";")[0].strip().lower()
        if ctype == patches.APPLY_PATCH:
            try:
                body = loads(raw) if raw else None  # kubectl, helm and client-go send JSON
            except ValueError:
                try:
                    body = yaml.safe_load(raw)
                except yaml.YAMLError as e:
                    raise bad_request(f"error decoding YAML: {e}")
        else:
            try:
                body = loads(raw) if raw else None
            except ValueError as e:
                raise bad_request(f"error decoding patch: {e}")
        if ctype == patches.APPLY_PATCH:
            if not opts.field_manager:
                raise bad_request("PATCH requests with apply content type must specify fieldManager")
            if not isinstance(body, dict):
                raise bad_request("apply patch must be an object")
            st = self.store.get(rt.key, ns if rt.namespaced else "", name)
            if st is None:
                if subresource:
                    raise not_found(rt.plural, rt.group, name)
                self._check_type(rt, version, body)
                body.setdefault("metadata", {}).setdefault("name", name)
                new, entries = fieldmanager.apply(
                    None, body, self._field_schema(rt, version), opts.field_manager, "", rt.status_subresource,
                    opts.force, rt.api_version(version), now_rfc3339())
                return self.create(rt, version, ns, new, opts, fieldmanager.write_entries(entries)), True
            self._check_type(rt, version, body)
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
            config = {**body, "metadata": {k: v for k, v in (body.get("metadata") or {}).items()
                                           if k not in ("resourceVersion", "managedFields")}}
            new, entries = fieldmanager.apply(
                st.obj, config, self._field_schema(rt, version), opts.field_manager, subresource,
                rt.status_subresource, opts.force, rt.api_version(version), now_rfc3339())
            new.setdefault("metadata", {})["resourceVersion"] = str(wanted_rv or st.rv)
            return self._update(rt, version, st, new, opts, subresource, fieldmanager.write_entries(entries)), False
        old = self.get(rt, ns, name)
        new = apply_patch_body(clone(old.obj), ctype, body, rt.builtin,
                               self._field_schema(rt, version) if rt.builtin else None)
        return self._update(rt, version, old, new, opts, subresource), False

    def scale(self, rt: ResourceType, version: str, ns: str, name: str, method: str, content_type: str,
              raw: bytes, opts: WriteOptions) -> dict[str, Any]:
        """PUT or PATCH of the /scale subresource: the Scale view is changed, then its
        spec.replicas is written into the object (with the same conflict rules)."""
        assert rt.scale is not None
        old = self.get(rt, ns, name)
        view = scales.to_scale(rt, old.obj)
        try:
            body = loads(raw) if raw else None
        except ValueError as e:
            raise bad_request(f"error decoding the request body: {e}")
        if method == "PUT":
            changed = body
        else:
            changed = apply_patch_body(view, content_type.split(";")[0].strip().lower(), body, True)
        try:
            replicas = scales.replicas_of(changed)
        except ValueError as e:
            raise invalid("Scale", "autoscaling", name, [Cause("FieldValueInvalid", str(e).split(": ", 1)[1],
                                                                "spec.replicas")])
        new = clone(old.obj)
        scales.set_path(new, rt.scale.spec_replicas, replicas)
        wanted_rv = (changed.get("metadata") or {}).get("resourceVersion") if isinstance(changed, dict) else None
        new["metadata"]["resourceVersion"] = wanted_rv or str(old.rv)
        return scales.to_scale(rt, self._update(rt, version, old, new, opts, "", owner_subresource="scale"))

    def _update(self, rt: ResourceType, version: str, old: Stored, new: dict[str, Any], opts: WriteOptions,
                subresource: str, managed: list[dict[str, Any]] | None = None,
                owner_subresource: str | None = None) -> dict[str, Any]:
        """`managed`: the managedFields an apply computed; an ordinary update records its own
        (under `owner_subresource`, e.g. "scale", when that is not `subresource`)."""
        if subresource and subresource != "status":
            raise not_found(rt.plural, rt.group, old.obj["metadata"]["name"])
        if subresource == "status" and not rt.status_subresource:
            raise not_found(rt.plural, rt.group, old.obj["metadata"]["name"])
        old_meta = old.obj["metadata"]
        name = old_meta["name"]
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        if str(meta.get("resourceVersion", old.rv)) != str(old.rv):
            raise conflict(rt.plural, rt.group, name)
        if subresource == "status":
            result = clone(old.obj)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if rt.status_subresource:
                if "status" in old.obj:
                    result["status"] = clone(old.obj["status"])
                else:
                    result.pop("status", None)
        result["apiVersion"] = rt.api_version(version)
        result["kind"] = rt.kind
        meta = result.setdefault("metadata", {})
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation"):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        sent_managed = meta.pop("managedFields", None) if subresource != "status" else None
        meta.pop("selfLink", None)
        self._prepare(rt, version, result, old.obj, opts)
        if old_meta.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
            if added:
                raise invalid(rt.kind, rt.group, name, [Cause(
                    "FieldValueForbidden", "Forbidden: no new finalizers can be added if the object is being deleted, "
                    f"found new finalizers {added}", "metadata.finalizers")])
        if _spec_part(result, rt.status_subresource) != _spec_part(old.obj, rt.status_subresource):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        _drop_empty_metadata(meta)
        if managed is None:
            schema = self._field_schema(rt, version)
            entries = fieldmanager.read_entries(old.obj)
            if isinstance(sent_managed, list) and sent_managed and \
                    fieldmanager.comparable(sent_managed) != fieldmanager.comparable(old_meta.get("managedFields")):
                # the client rewrote ownership (kubectl's client-side to server-side apply
                # migration); `[{}]` clears it, as in kube
                entries = [] if sent_managed == [{}] else fieldmanager.read_entries(
                    {"metadata": {"managedFields": sent_managed}})
            entries = fieldmanager.record_update(
                fieldmanager.object_leaves(old.obj, schema, subresource, rt.status_subresource),
                fieldmanager.object_leaves(result, schema, subresource, rt.status_subresource),
                entries, opts.manager,
                subresource if owner_subresource is None else owner_subresource, rt.api_version(version),
                now_rfc3339())
            managed = fieldmanager.write_entries(entries)
        if managed:
            meta["managedFields"] = managed
        if _comparable(result) == _comparable(old.obj) and fieldmanager.comparable(managed) == \
                fieldmanager.comparable(old_meta.get("managedFields")):
            return old.obj
        if opts.dry_run:
            return result
        ns = old_meta.get("namespace", "")
        rv = self.store.next_rv()
        meta["resourceVersion"] = str(rv)
        if old_meta.get("deletionTimestamp") and not meta.get("finalizers") and rt.key not in (NAMESPACE_KEY, CRD_KEY):
            self.store.delete(rt.key, ns, name, rv)
            self.events.publish(Event("DELETED", rt.key, ns, rv, result))
            self._after_remove(rt, result)
            return result
        self.store.put(rt.key, ns, name, result, rv)
        self.events.publish(Event("MODIFIED", rt.key, ns, rv, result, old.obj))
        self._after_write(rt, result)
        return result

    # --- delete ---------------------------------------------------------------------------
    def delete(self, rt: ResourceType, ns: str, name: str, opts: DeleteOptions) -> dict[str, Any]:
        st = self.get(rt, ns, name)
        meta = st.obj["metadata"]
        if opts.uid and opts.uid != meta.get("uid"):
            raise ApiError(409, f"Precondition failed: UID in precondition: {opts.uid}, UID in object meta: {meta.get('uid')}",
                           reason="Conflict", name=name, group=rt.group, kind=rt.plural)
        if opts.resource_version and opts.resource_version != str(st.rv):
            raise ApiError(409, f"Precondition failed: ResourceVersion in precondition: {opts.resource_version}, "
                           f"ResourceVersion in object meta: {st.rv}", reason="Conflict", name=name,
                           group=rt.group, kind=rt.plural)
        if rt.key == NAMESPACE_KEY and name in PROTECTED_NAMESPACES:
            raise ApiError(403, f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                           name=name, kind="namespaces")
        if opts.dry_run:
            return st.obj
        if opts.propagation == "Orphan" and self.collector:
            self.collector.orphan(meta["uid"])
        terminating_kind = rt.key in (NAMESPACE_KEY, CRD_KEY)
        if meta.get("finalizers") or terminating_kind:
            if meta.get("deletionTimestamp"):
                return st.obj
            obj = clone(st.obj)
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            if rt.key == NAMESPACE_KEY:
                obj.setdefault("status", {})["phase"] = "Terminating"
            rv = self.store.next_rv()
            obj["metadata"]["resourceVersion"] = str(rv)
            self.store.put(rt.key, meta.get("namespace", ""), name, obj, rv)
            self.events.publish(Event("MODIFIED", rt.key, meta.get("namespace", ""), rv, obj, st.obj))
            if self.collector and rt.key == NAMESPACE_KEY:
                self.collector.namespace_terminating(name)
            elif self.collector and rt.key == CRD_KEY:
                self.collector.crd_terminating(name)
            return obj
        return self.remove(rt, st)

    def remove(self, rt: ResourceType, st: Stored) -> dict[str, Any]:
        """Drop an object for good (no finalizers left) and emit DELETED."""
        meta = st.obj["metadata"]
        ns = meta.get("namespace", "")
        rv = self.store.next_rv()
        obj = clone(st.obj)
        obj["metadata"]["resourceVersion"] = str(rv)
        self.store.delete(rt.key, ns, meta["name"], rv)
        self.events.publish(Event("DELETED", rt.key, ns, rv, obj))
        self._after_remove(rt, obj)
        return obj

    # --- helpers --------------------------------------------------------------------------
    def _field_schema(self, rt: ResourceType, version: str) -> dict[str, Any]:
        """The schema field ownership and apply follow (list keys, sets, atomic maps)."""
        if rt.builtin:
            name = kube_schema.definition_name(rt.group, version, rt.kind)
            return fieldmanager.root_schema({"$ref": kube_schema.REF_PREFIX + name} if name else None)
        info = rt.version(version)
        return fieldmanager.root_schema(info.schema if info else None)

    def _check_type(self, rt: ResourceType, version: str, obj: dict[str, Any]) -> None:
        expected = rt.api_version(version)
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        served = {rt.api_version(v.name) for v in rt.versions}
        if api_version and api_version not in served:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API version ({expected})")
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        obj["apiVersion"] = expected
        obj["kind"] = rt.kind

    def _check_namespace(self, ns: str) -> None:
        st = self.store.get(NAMESPACE_KEY, "", ns)
        if st is None:
            raise not_found("namespaces", "", ns)
        if st.obj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, f"unable to create new content in namespace {ns} because it is being terminated",
                           reason="Forbidden", name=ns, kind="namespaces")

    def _prepare(self, rt: ResourceType, version: str, obj: dict[str, Any], old: dict[str, Any] | None,
                 opts: WriteOptions) -> None:
        """Kind-specific normalisation and schema processing, before anything is stored."""
        name = obj["metadata"].get("name", "")
        if rt.key == NAMESPACE_KEY:
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        elif rt.key == "/secrets":
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                data = obj.setdefault("data", {})
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
            obj.setdefault("type", "Opaque")
        elif rt.key == CRD_KEY:
            self._prepare_crd(obj, old)
        info = rt.version(version)
        if rt.builtin:
            self._prepare_builtin(rt, version, obj, old, opts)
        elif info is not None and info.schema:
            dropped, causes = schema.process(obj, info.schema)
            if causes:
                raise invalid(rt.kind, rt.group, name, causes)
            _unknown_fields(rt, version, dropped, opts)

    def _prepare_builtin(self, rt: ResourceType, version: str, obj: dict[str, Any], old: dict[str, Any] | None,
                         opts: WriteOptions) -> None:
        """Decode as kube's typed decoder would (unknown fields dropped or refused, wrong types
        refused), then default, give a new object its initial status, and validate."""
        def_name = kube_schema.definition_name(rt.group, version, rt.kind)
        if def_name is not None:
            try:
                dropped = kube_schema.decode(obj, def_name)
            except kube_schema.TypeMismatch as e:
                raise bad_request(f'{rt.kind} in version "{version}" cannot be handled as a {rt.kind}: {e}')
            _unknown_fields(rt, version, dropped, opts)
        defaulting.apply(rt.key, obj, old, lambda: (st.obj for st in self.store.items(rt.key)))
        causes = validation.validate(rt.key, obj)
        if causes:
            raise invalid(rt.kind, rt.group, obj["metadata"].get("name", ""), causes)

    def _prepare_crd(self, crd: dict[str, Any], old: dict[str, Any] | None) -> None:
        problem = crd_names_problem(crd)
        if problem:
            field_path, _, message = problem.partition(": ")
            raise invalid("CustomResourceDefinition", "apiextensions.k8s.io", crd["metadata"].get("name", ""),
                          [Cause("FieldValueInvalid", message, field_path)])
        spec = crd["spec"]
        names = dict(spec["names"])
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
        old_status = (old or {}).get("status") or {}
        stored = list(old_status.get("storedVersions") or [])
        for v in spec["versions"]:
            if v.get("storage") and v["name"] not in stored:
                stored.append(v["name"])
        old_conds = {c.get("type"): c for c in old_status.get("conditions") or []}
        stamp = now_rfc3339()

        def cond(typ: str, reason: str, message: str) -> dict[str, Any]:
            prev = old_conds.get(typ)
            return {"type": typ, "status": "True", "reason": reason, "message": message,
                    "lastTransitionTime": prev.get("lastTransitionTime", stamp) if prev else stamp}

        crd["status"] = {
            "acceptedNames": names,
            "conditions": [cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                           cond("Established", "InitialNamesAccepted", "the initial names have been accepted")],
            "storedVersions": stored,
        }
        if crd["metadata"].get("deletionTimestamp"):
            crd["status"]["conditions"].append(cond("Terminating", "InstanceDeletionInProgress",
                                                    "CustomResource deletion is in progress"))

    def _after_write(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        if rt.key == CRD_KEY:
            self.registry.add(from_crd(obj))
            for cb in self.on_crd_change:
                cb()
        if self.collector and obj["metadata"].get("deletionTimestamp"):
            if rt.key == NAMESPACE_KEY:
                self.collector.namespace_terminating(obj["metadata"]["name"])
            elif rt.key == CRD_KEY:
                self.collector.crd_terminating(obj["metadata"]["name"])

    def _after_remove(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        if rt.key == CRD_KEY:
            spec = obj["spec"]
            self.registry.remove(f"{spec['group']}/{spec['names']['plural']}")
            for cb in self.on_crd_change:
                cb()
        if self.collector:
            self.collector.owner_gone(obj["metadata"].get("uid", ""))
            ns = obj["metadata"].get("namespace")
            if ns:
                self.collector.namespace_terminating(ns)
            if not rt.builtin:
                self.collector.crd_terminating(f"{rt.plural}.{rt.group}")
