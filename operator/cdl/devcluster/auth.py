"""Authentication: the data directory's bearer token (the one all-powerful user) and the service
account tokens the server issues (`kubectl create token`), plus who a request is (`kubectl auth
whoami`).

Service account tokens are JWTs signed (HS256) with a key derived from the data directory's
token, so they stay valid across restarts and die with the data directory. They authenticate as
`system:serviceaccount:NS:NAME`; the devcluster has no RBAC, so they may do everything too.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = API_AUDIENCE
MIN_EXPIRATION_SECONDS = 600
DEFAULT_EXPIRATION_SECONDS = 3600


@dataclass(frozen=True)
class User:
    """authentication.k8s.io/v1 UserInfo."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.username, "groups": list(self.groups)}
        if self.uid:
            out["uid"] = self.uid
        if self.extra:
            out["extra"] = self.extra
        return out


ADMIN = User("kubernetes-admin", groups=("kubeadm:cluster-admins", "system:authenticated"))


def load_or_create_token(path: Path) -> str:
    """The token in `path`, created on first use so kubeconfigs stay valid across restarts."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _signing_key(token: str) -> bytes:
    return hashlib.sha256(b"cdl-devcluster service account signing key\0" + token.encode()).digest()


def identify(header: str | None, token: str) -> User | None:
    """The user a request's `Authorization` header names, or None (401)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer":
        return None
    if hmac.compare_digest(value.encode(), token.encode()):
        return ADMIN
    if value.count(".") != 2:
        return None
    try:
        claims = jwt.decode(value, _signing_key(token), algorithms=["HS256"], audience=API_AUDIENCE, issuer=ISSUER)
    except jwt.PyJWTError:
        return None
    info = claims.get("kubernetes.io") or {}
    ns, sa = info.get("namespace", ""), (info.get("serviceaccount") or {})
    return User(claims.get("sub", ""), sa.get("uid", ""),
                ("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"))


def issue_service_account_token(token: str, namespace: str, name: str, uid: str, audiences: list[str],
                                expiration_seconds: int) -> tuple[str, str]:
    """A signed token for a service account: (token, expirationTimestamp)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    exp = now + datetime.timedelta(seconds=expiration_seconds)
    claims = {
        "iss": ISSUER, "sub": f"system:serviceaccount:{namespace}:{name}", "aud": audiences,
        "iat": now, "nbf": now, "exp": exp, "jti": secrets.token_hex(16),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
    }
    return jwt.encode(claims, _signing_key(token), algorithm="HS256"), exp.strftime("%Y-%m-%dT%H:%M:%SZ")


def token_request(token: str, sa: dict[str, Any], body: Any) -> dict[str, Any]:
    """Answer a TokenRequest (`POST .../serviceaccounts/NAME/token`), or raise the 422 kube gives."""
    from cdl.devcluster.errors import Cause, invalid

    spec = dict((body or {}).get("spec") or {}) if isinstance(body, dict) else {}
    meta = sa["metadata"]
    audiences = list(spec.get("audiences") or [API_AUDIENCE])
    seconds = spec.get("expirationSeconds") or DEFAULT_EXPIRATION_SECONDS
    if not isinstance(seconds, int) or seconds < MIN_EXPIRATION_SECONDS:
        raise invalid("TokenRequest", "authentication.k8s.io", meta["name"], [Cause(
            "FieldValueInvalid", f"Invalid value: {seconds}: may not specify a duration less than 10 minutes",
            "spec.expirationSeconds")])
    signed, expires = issue_service_account_token(token, meta.get("namespace", ""), meta["name"],
                                                  meta.get("uid", ""), audiences, seconds)
    spec.update({"audiences": audiences, "expirationSeconds": seconds})
    spec.setdefault("boundObjectRef", None)
    return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace", ""), "creationTimestamp": None},
            "spec": spec, "status": {"token": signed, "expirationTimestamp": expires}}


def review(body: Any, user: User, token: str) -> dict[str, Any]:
    """Answer a review: Self{Subject}Review (who am I), TokenReview (whose token is this) or
    SelfSubject{Access,Rules}Review (yes: a devcluster has no RBAC)."""
    out = dict(body) if isinstance(body, dict) else {}
    kind = out.get("kind")
    out.setdefault("metadata", {})
    out["metadata"].setdefault("creationTimestamp", None)
    if kind == "SelfSubjectReview":
        out["status"] = {"userInfo": user.to_dict()}
    elif kind == "TokenReview":
        found = identify(f"Bearer {(out.get('spec') or {}).get('token', '')}", token)
        out["status"] = ({"authenticated": True, "user": found.to_dict(), "audiences": [API_AUDIENCE]}
                         if found else {"authenticated": False, "user": {}, "error": "invalid bearer token"})
    elif kind == "SelfSubjectRulesReview":
        out["status"] = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                         "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": False}
    else:
        out["status"] = {"allowed": True, "reason": "the devcluster's single user may do everything"}
    return out
