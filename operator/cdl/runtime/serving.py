"""The generic predictor wrapper that Seldon Core's Python server runs: `CdlPredictor`.

One class serves any ModelVersion package: it fetches and unpacks the package, imports the use
case's predictor class from the package's code (`module:Class`, constructed with no arguments,
then `load(artifact_dir)` and `predict(X) -> list`), checks each request's shape and type, and
answers in Seldon's protocol. The local serving engine starts `seldon-core-microservice
CdlPredictor` from a folder holding a one-line `CdlPredictor.py` and a copy of `cdl.runtime`; a
cluster image runs `seldon-core-microservice cdl.runtime.serving.CdlPredictor` under a
SeldonDeployment. It runs in seldon-core's environment, so it imports the standard library,
numpy (seldon-core pins numpy<2: nothing numpy-2-only), `cdl.runtime.package` and
`cdl.runtime.seldon_protocol` (standard library only) at module level; seldon-core lazily;
nothing from the operator side.

Parameters (Seldon `parameters`, else the environment):
- `model_package` / `CDL_MODEL_PACKAGE`: an unpacked package folder, a `.tar.gz`, or a URI
  (`file://`, `s3://bucket/key.tar.gz`, `http(s)://`) of one.
- `predictor` / `CDL_PREDICTOR`: `module:Class` in the package's `model/` folder (default: the
  package's `entrypoints.predictor`).
- `model_version` / `CDL_MODEL_VERSION`: the name reported in metadata and health.
- `cache_dir` / `CDL_PACKAGE_CACHE`: where downloaded packages are unpacked.
- S3: `CDL_S3_ENDPOINT` (or `AWS_ENDPOINT_URL`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
  `AWS_REGION`.

What a request costs under seldon-core is what the protocol needs: `predict_raw` answers the
REST `data.ndarray` / `data.tensor` requests itself (no numpy round trip, no per-request custom
metrics: seldon-core sends those through a `multiprocessing.Manager` process, several round trips
per call), the request body is parsed with orjson when the environment has it, and the
per-request figures (examples, model time) ride back to the router in `meta.tags`, which counts
them for Prometheus. The same `predict_rows` serves MLServer's runtime (`cdl.runtime.mlserver_runtime`).
Every REST request's envelope is checked here, on the body Flask already parsed (the router reads
no body on the way through): a malformed request is a 400 naming the field, never a prediction.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import hmac
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from cdl.runtime import package
from cdl.runtime.seldon_protocol import EnvelopeError, check_payload

log = logging.getLogger("cdl.serving")

LOAD_ERROR_MARK = "CDL-LOAD-ERROR:"  # the engine reads the reason a model failed to load from this line
MAX_ROWS = 10_000
MODEL_MS_TAG = "cdl_model_ms"  # meta.tags of each answer: the model's own time (the router's Prometheus reads it)
EXAMPLES_TAG = "cdl_examples"


class InvalidInput(ValueError):
    """A request the model cannot take; Seldon answers it with HTTP 400."""


def speed_up_seldon_core() -> None:
    """Cut seldon-core's per-request cost to the protocol's (called before its app is built):

    - seldon-core calls `SeldonMetrics.update(metrics)` after every request even when there are
      no metrics, and each call is several round trips to a `multiprocessing.Manager` process
      (more than the model costs): an empty update now returns at once;
    - Flask parses and writes JSON with orjson when the environment has it (the standard
      library's parser costs about 0.8 ms on a 25 KB request).
    Idempotent; does nothing outside seldon-core."""
    try:
        from seldon_core import metrics as seldon_metrics
    except Exception:  # not under seldon-core
        return
    cls = seldon_metrics.SeldonMetrics
    if not getattr(cls.update, "_cdl_skips_empty", False):
        update = cls.update

        def update_if_any(self: Any, custom_metrics: Any, method: str) -> None:
            if custom_metrics:
                update(self, custom_metrics, method)

        update_if_any._cdl_skips_empty = True  # type: ignore[attr-defined]
        cls.update = update_if_any
    try:
        import flask
        import orjson
        from flask.json.provider import DefaultJSONProvider
    except Exception:  # an environment without orjson keeps the standard library's parser
        return

    class OrjsonProvider(DefaultJSONProvider):
        def loads(self, s: Any, **kwargs: Any) -> Any:
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError:  # NaN and the like: the standard parser's leniency
                return super().loads(s, **kwargs)

        def dumps(self, obj: Any, **kwargs: Any) -> str:
            try:
                return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()
            except TypeError:
                return super().dumps(obj, **kwargs)

    flask.Flask.json_provider_class = OrjsonProvider


def name_grpc_refusals() -> None:
    """seldon-core's gRPC `Predict` lets the 400 exception escape, and gRPC answers it UNKNOWN with
    an empty message; a refused request then says INVALID_ARGUMENT (or INTERNAL for a server's
    own failure) with the message that names what is wrong, as REST does. Idempotent; does
    nothing outside seldon-core."""
    try:
        import grpc
        from seldon_core import wrapper
        from seldon_core.flask_utils import SeldonMicroserviceException
    except Exception:  # not under seldon-core
        return
    cls = wrapper.SeldonModelGRPC
    if getattr(cls.Predict, "_cdl_names_refusals", False):
        return
    predict = cls.Predict

    def predict_naming_refusals(self: Any, request_grpc: Any, context: Any) -> Any:
        try:
            return predict(self, request_grpc, context)
        except SeldonMicroserviceException as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT if exc.status_code < 500 else grpc.StatusCode.INTERNAL
            context.abort(code, str(exc.message))

    predict_naming_refusals._cdl_names_refusals = True  # type: ignore[attr-defined]
    cls.Predict = predict_naming_refusals


def _request_body() -> bytes | None:
    """The bytes of the REST request being answered (Flask keeps them once it parsed the JSON),
    so the envelope check scans them for `true`/`false` instead of walking every example; None
    outside a request (then the examples are walked)."""
    try:
        from flask import has_request_context, request
    except Exception:  # not under seldon-core's Flask
        return None
    if not has_request_context():
        return None
    body = request.get_data(cache=True)
    return body or None  # a form-encoded request leaves no body bytes: walk the examples


def _bad_request(message: str) -> Exception:
    """Seldon's own 400 exception when running under seldon-core, else `InvalidInput`."""
    try:
        from seldon_core.flask_utils import SeldonMicroserviceException
    except Exception:  # not under seldon-core (tests, the benchmark's in-process floor)
        return InvalidInput(message)
    return SeldonMicroserviceException(message, status_code=400, reason="MICROSERVICE_BAD_DATA")


# --------------------------------------------------------------------------- packages


def _s3_get(uri: str, dest: Path) -> None:
    """GET an object with an AWS Signature V4 request (path style), standard library only."""
    parsed = urllib.parse.urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    endpoint = (os.environ.get("CDL_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
                or "https://s3.amazonaws.com")
    if "://" not in endpoint:
        endpoint = ("https://" if os.environ.get("CDL_S3_SECURE", "").lower() in ("1", "true") else "http://") \
            + endpoint
    access = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    base = urllib.parse.urlparse(endpoint)
    path = "/" + urllib.parse.quote(f"{bucket}/{key}", safe="/-_.~")
    now = datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(b"").hexdigest()
    headers = {"host": base.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    if access and secret:
        signed = ";".join(sorted(headers))
        canonical = "\n".join(["GET", path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed,
                               payload_hash])
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = f"AWS4{secret}".encode()
        for part in (day, region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, "
                                    f"Signature={signature}")
    request = urllib.request.Request(f"{base.scheme}://{base.netloc}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def _download(ref: str, dest: Path) -> None:
    if urllib.parse.urlparse(ref).scheme == "s3":
        _s3_get(ref, dest)
    else:
        with urllib.request.urlopen(ref, timeout=120) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)


class PackageMismatch(ValueError):
    """The package archive's bytes are not the ones the ModelVersion registered."""


def _check_sha256(archive: Path, ref: str, expected: str) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise PackageMismatch(f"model package {ref}: sha256 mismatch: the archive is {digest.hexdigest()}, "
                              f"CDL_PACKAGE_SHA256 says {expected}; refusing to load it")


def fetch_package(ref: str, cache_dir: Path | None = None, sha256: str | None = None) -> Path:
    """A local, unpacked package folder for `ref` (folder, archive, or URI); downloads and unpacks
    once per ref. Server workers load at the same time: a file lock makes one of them do it.

    With `sha256` (CDL_PACKAGE_SHA256) an archive whose bytes hash differently is refused
    (`PackageMismatch`) before anything in it is unpacked or imported."""
    parsed = urllib.parse.urlparse(ref)
    local: Path | None = None
    if parsed.scheme in ("", "file"):
        local = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else ref).expanduser()
        if local.is_dir():
            return local
        if not local.is_file():
            raise FileNotFoundError(f"model package {ref} does not exist")
    elif parsed.scheme not in ("s3", "http", "https"):
        raise ValueError(f"model package {ref}: unsupported scheme {parsed.scheme!r}; use a folder, file://, "
                         "s3:// or http(s)://")
    cache = Path(cache_dir or os.environ.get("CDL_PACKAGE_CACHE") or Path(tempfile.gettempdir()) / "cdl-packages")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha256(f"{ref}#{sha256 or ''}".encode()).hexdigest()[:16]
    with open(cache / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / package.MANIFEST).is_file():
            return target
        archive = local
        if archive is None:
            archive = cache / f".{target.name}.tar.gz"
            _download(ref, archive)
        try:
            if sha256:
                _check_sha256(archive, ref, sha256)
            package.unpack(archive, target)
        finally:
            if local is None:
                archive.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- inputs


def _shape(value: Any) -> tuple[int, ...] | None:
    """The shape of a nested list of numbers, or None when it is ragged or holds non-numbers."""
    if isinstance(value, (list, tuple)):
        if not value:
            return (0,)
        inner = [_shape(v) for v in value]
        if any(s is None for s in inner) or any(s != inner[0] for s in inner):
            return None
        return (len(value), *inner[0])  # type: ignore[misc]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ()
    return None


def as_rows(X: Any) -> list[Any]:
    """Seldon's request data (numpy array, list, str, bytes, or jsonData dict) as a list of rows."""
    if isinstance(X, np.ndarray):
        if X.ndim == 0:
            return [X.item()]
        if X.dtype.kind in "OUS" and X.ndim == 2 and X.shape[1] == 1:
            return [_scalar(v) for v in X[:, 0]]
        return [_scalar(v) for v in X] if X.dtype.kind in "OUS" and X.ndim == 1 else X.tolist()
    if isinstance(X, (bytes, bytearray)):
        try:
            return [bytes(X).decode("utf-8")]
        except UnicodeDecodeError as exc:
            raise _bad_request(f"binData is not UTF-8 text ({exc.reason} at byte {exc.start}): this model takes "
                               "text") from None
    if isinstance(X, str):
        return [X]
    if isinstance(X, dict):
        for key in ("instances", "inputs", "data", "ndarray"):
            if isinstance(X.get(key), list):
                return list(X[key])
        raise _bad_request("jsonData must hold a list under 'instances' (one entry per example)")
    if isinstance(X, (list, tuple)):
        return list(X)
    raise _bad_request(f"unsupported request data of type {type(X).__name__}; send data.ndarray rows")


def _scalar(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def validate_rows(rows: list[Any], input_type: str | None, input_shape: tuple[int | None, ...] | None) -> list[Any]:
    """Check one request's rows; raise a 400 whose message says what was expected.

    `input_type` is `text` (each row a string, or a one-element row holding one) or `tensor`
    (each row a number array of `input_shape`, None/-1 meaning any size); unknown means rows must
    at least agree with each other."""
    if not rows:
        raise _bad_request("the request holds no examples: send data.ndarray with one row per example")
    if len(rows) > MAX_ROWS:
        raise _bad_request(f"too many examples in one request ({len(rows)}); at most {MAX_ROWS}")
    texts = [r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], str) else r for r in rows]
    all_text = all(isinstance(r, str) for r in texts)
    if input_type == "text" or (input_type is None and all_text):
        if not all_text:
            bad = next(i for i, r in enumerate(texts) if not isinstance(r, str))
            raise _bad_request(f"row {bad} is {type(rows[bad]).__name__} {_preview(rows[bad])}: this model takes "
                               "text, one string per row")
        return texts
    if any(isinstance(r, str) for r in texts):
        bad = next(i for i, r in enumerate(texts) if isinstance(r, str))
        raise _bad_request(f"row {bad} is a string: this model takes numbers "
                           f"{'of shape ' + _fmt(input_shape) if input_shape else ''}".rstrip())
    try:  # fast path: numpy sees a regular array of numbers at C speed
        array = np.asarray(rows)
    except (ValueError, TypeError):
        array = None
    if array is not None and array.dtype.kind in "iuf" and array.ndim >= 1:
        check_shape(tuple(array.shape[1:]), input_shape)
        return rows
    shapes = [_shape(r) for r in rows]  # slow path, for a message that says which row is wrong
    for i, s in enumerate(shapes):
        if s is None:
            raise _bad_request(f"row {i} is not an array of numbers (ragged or holding non-numbers): "
                               f"{_preview(rows[i])}")
    if any(s != shapes[0] for s in shapes):
        i = next(i for i, s in enumerate(shapes) if s != shapes[0])
        raise _bad_request(f"rows differ in shape: row 0 is {_fmt(shapes[0])}, row {i} is {_fmt(shapes[i])}")
    check_shape(shapes[0] or (), input_shape)
    return rows


def check_shape(got: tuple[int, ...], input_shape: tuple[int | None, ...] | None) -> None:
    """Each example's shape against the model's (None/-1: any size; a flat row of the right size
    passes for a multi-dimensional input, e.g. 784 pixels for 28x28)."""
    if input_shape is None:
        return
    want = tuple(input_shape)
    fits = len(got) == len(want) and all(w in (None, -1) or w == g for w, g in zip(want, got, strict=True))
    flat_fits = (not fits and len(got) == 1 and all(w not in (None, -1) for w in want)
                 and got[0] == int(np.prod(want)))
    if not (fits or flat_fits):
        raise _bad_request(f"each row must have shape {_fmt(want)}, got {_fmt(got)}")


def _fmt(shape: Any) -> str:
    return "[" + ", ".join("*" if s in (None, -1) else str(s) for s in (shape or ())) + "]"


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors and the like
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- the wrapper


class CdlPredictor:
    """Seldon Core Python wrapper around a ModelVersion package's predictor class."""

    def __init__(self, model_package: str | None = None, predictor: str | None = None,
                 model_version: str | None = None, cache_dir: str | None = None, **params: Any) -> None:
        self.package_ref = model_package or os.environ.get("CDL_MODEL_PACKAGE") or ""
        self.predictor_ref = predictor or os.environ.get("CDL_PREDICTOR") or ""
        self.model_version = model_version or os.environ.get("CDL_MODEL_VERSION") or ""
        self.cache_dir = cache_dir or os.environ.get("CDL_PACKAGE_CACHE") or None
        self.package_sha256 = params.pop("package_sha256", None) or os.environ.get("CDL_PACKAGE_SHA256") or None
        self.params = params
        self.package_dir: Path | None = None
        self.manifest: dict[str, Any] = {}
        self.model: Any = None
        self.class_names: list[str] = []
        self.input_type: str | None = None
        self.input_shape: tuple[int | None, ...] | None = None
        self.ready = False
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self.examples_total = 0  # in-process figures (no other process involved)
        self.model_seconds_total = 0.0
        self._last_rows = 0
        self._last_ms = 0.0
        speed_up_seldon_core()
        name_grpc_refusals()

    # ------------------------------------------------------------------ seldon's interface

    def load(self) -> None:
        """Fetch the package and load the predictor. A failure is logged on one line starting with
        LOAD_ERROR_MARK (the engine shows it as the reason) and raised as RuntimeError: seldon-core
        would swallow an AttributeError and serve without a model."""
        with self._lock:
            if self.ready:
                return
            try:
                self._load()
            except BaseException as exc:  # noqa: BLE001 - anything the user's code raises
                self.load_error = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                log.error("%s %s (package %s, predictor %s)", LOAD_ERROR_MARK, self.load_error,
                          self.package_ref or "-", self.predictor_ref or "-")
                print(f"{LOAD_ERROR_MARK} {self.load_error}", file=sys.stderr, flush=True)
                raise RuntimeError(f"could not load the model: {self.load_error}") from exc
            self.ready = True

    def _load(self) -> None:
        if not self.package_ref:
            raise ValueError("no model package: set CDL_MODEL_PACKAGE (or the model_package parameter)")
        started = time.monotonic()
        self.package_dir = fetch_package(self.package_ref, Path(self.cache_dir) if self.cache_dir else None,
                                         sha256=self.package_sha256)
        info = package.load_package(self.package_dir)
        self.manifest = info.raw
        ref = self.predictor_ref or info.entrypoints.get("predictor", "")
        if not ref:
            raise ValueError("no predictor class: set CDL_PREDICTOR=module:Class or entrypoints.predictor in "
                             f"{package.MANIFEST}")
        self.predictor_ref = ref
        package.prepare_process(info)  # e.g. a dynamic-int8 variant loads through the same user code
        cls = package.import_from_package(self.package_dir, ref)
        model = cls()
        model.load(str(self.package_dir))
        self.model = model
        self.class_names = [str(c) for c in (getattr(model, "class_names", None) or info.class_names() or [])]
        spec = self.manifest.get("input") if isinstance(self.manifest.get("input"), dict) else {}
        self.input_type = getattr(model, "input_type", None) or spec.get("type") or None
        shape = getattr(model, "input_shape", None) or spec.get("shape")
        self.input_shape = tuple(None if s is None else int(s) for s in shape) if shape else None
        if not self.model_version:
            self.model_version = f"{info.name}-{info.version}" if info.name else ""
        log.info("cdl: loaded %s (%s) from %s in %.2f s", self.model_version or "model", ref, self.package_dir,
                 time.monotonic() - started)

    def predict(self, X: Any, features_names: Any = None, **kwargs: Any) -> Any:
        """Seldon's standard path (strData, jsonData, gRPC); REST ndarray/tensor take `predict_raw`."""
        if isinstance(X, np.ndarray) and X.dtype.kind in "iuf" and X.ndim >= 2 and self.input_type != "text":
            # what seldon hands over for data.ndarray of numbers: the shape is known without a walk
            if not 0 < len(X) <= MAX_ROWS:
                raise _bad_request(f"send between 1 and {MAX_ROWS} examples per request, got {len(X)}")
            check_shape(tuple(X.shape[1:]), self.input_shape)
            out = self.predict_rows(X.tolist(), checked=True)
        else:
            out = self.predict_rows(as_rows(X))
        if out and all(isinstance(o, str) for o in out):
            return np.array(out, dtype=object)  # labels: kept as strings in data.ndarray
        return out

    def predict_rows(self, rows: list[Any], checked: bool = False) -> list[Any]:
        """The model's answers for a list of examples, one per row (checked against the model's
        input unless `checked`); raises the 400 exception for input the model cannot take."""
        if not self.ready:
            self.load()
        if not checked:
            rows = validate_rows(rows, self.input_type, self.input_shape)
        started = time.perf_counter()
        try:
            out = self.model.predict(rows)
        except (TypeError, ValueError) as exc:
            # the predictor refused the input (its own checks): the caller's mistake, not ours
            raise _bad_request(f"the model refused the input: {type(exc).__name__}: {exc}") from exc
        out = _to_jsonable(out)
        if not isinstance(out, list) or len(out) != len(rows):
            raise RuntimeError(f"predictor {self.predictor_ref} returned {type(out).__name__} of "
                               f"{len(out) if hasattr(out, '__len__') else '?'} for {len(rows)} row(s)")
        seconds = time.perf_counter() - started
        self._last_rows, self._last_ms = len(rows), seconds * 1000.0
        self.examples_total += len(rows)
        self.model_seconds_total += seconds
        return out

    def predict_raw(self, request: Any) -> Any:
        """Seldon's raw interface: a REST request with `data.ndarray` or `data.tensor` is answered
        here, in the shape seldon-core's own path gives (labels and numbers under
        `data.ndarray`, a numeric answer to a tensor as a tensor, class names as `names` for
        per-class rows), with the model's time and example count in `meta.tags`. Every REST
        request's envelope is checked here first (`seldon_protocol.check_payload`: a 400 naming
        the field); strData, jsonData and binData then go down seldon-core's standard path."""
        if not isinstance(request, dict | list | str | int | float) and request is not None:
            from seldon_core.user_model import SeldonNotImplementedError  # a gRPC SeldonMessage

            _check_grpc_envelope(request)  # booleans among numbers are refused on gRPC too
            raise SeldonNotImplementedError("not a REST request")
        try:  # the envelope first, whatever the payload: nothing malformed reaches the model
            check_payload(request, _request_body(), shapes=False)
        except EnvelopeError as exc:
            raise _bad_request(str(exc)) from None
        data = request.get("data")
        if not isinstance(data, dict):
            from seldon_core.user_model import SeldonNotImplementedError

            raise SeldonNotImplementedError("not a REST ndarray/tensor request")
        if "ndarray" in data:
            rows = data["ndarray"]
            if not isinstance(rows, list):
                raise _bad_request("data.ndarray must be a list of examples, one row per example")
        else:
            tensor = data["tensor"]
            try:
                rows = np.asarray(tensor["values"], dtype=np.float64).reshape(tensor["shape"]).tolist()
            except (KeyError, TypeError, ValueError) as exc:
                raise _bad_request(f"data.tensor must hold shape and values that fit it: {exc}") from exc
            if not isinstance(rows, list):
                rows = [rows]
        out = self.predict_rows(rows)
        tags = {MODEL_MS_TAG: round(self._last_ms, 4), EXAMPLES_TAG: len(out)}
        numeric = bool(out) and all(isinstance(o, (int, float)) and not isinstance(o, bool) or
                                    (isinstance(o, list) and all(isinstance(v, (int, float)) for v in o))
                                    for o in out)
        if "tensor" in data and numeric:
            array = np.asarray(out)
            body: dict[str, Any] = {"tensor": {"shape": list(array.shape), "values": array.ravel().tolist()}}
        else:
            body = {"ndarray": out}
        per_class = bool(out) and isinstance(out[0], list) and len(out[0]) == len(self.class_names)
        body["names"] = list(self.class_names) if per_class else []
        return {"data": body, "meta": {"tags": tags}}

    def health_status(self) -> dict[str, Any]:
        if not self.ready:
            raise RuntimeError(f"model not loaded: {self.load_error or 'loading'}")
        return {"status": "ok", "model_version": self.model_version, "predictor": self.predictor_ref}

    def tags(self) -> dict[str, Any]:
        """Seldon's per-response tags on its standard path: the same figures `predict_raw` gives.
        (No `metrics()`: seldon-core would send them to another process after every request.)"""
        return {MODEL_MS_TAG: round(self._last_ms, 4), EXAMPLES_TAG: self._last_rows}

    def init_metadata(self) -> dict[str, Any]:
        """Model metadata for /metadata; asked before `load()` runs, so from the manifest only."""
        manifest: dict[str, Any] = {}
        try:
            ref = self.package_ref
            local = Path(urllib.parse.unquote(urllib.parse.urlparse(ref).path)) if ref.startswith("file://") \
                else Path(ref)
            if ref and local.is_dir():
                manifest = package.load_package(local).raw
        except Exception:  # metadata is informative: never stop the server for it
            manifest = {}
        name = str(manifest.get("name") or self.model_version or "cdl-model")
        version = str(manifest.get("version") or "")
        predictor = self.predictor_ref or str((manifest.get("entrypoints") or {}).get("predictor", ""))
        return {
            "name": name,
            "versions": [version] if version else [],
            "platform": "cdl",
            "inputs": [{"messagetype": "ndarray", "schema": {"names": []}}],
            "outputs": [{"messagetype": "ndarray", "schema": {"names": []}}],
            "custom": {"predictor": predictor, "framework": str(manifest.get("framework", "")),
                       "model_version": self.model_version},
        }


def _check_grpc_envelope(message: Any) -> None:
    """The envelope check of a gRPC SeldonMessage, on its JSON form (a ListValue keeps true and
    false apart from numbers; seldon-core's own path would predict on them as 1 and 0).

    A `data.tensor` holds doubles by its type, so it is checked without turning every value into
    JSON first: seldon-core pins protobuf < 4, which has no compiled wheel for Python 3.11, and
    the pure-Python walk costs about a millisecond per 5,000 values."""
    if not hasattr(message, "DESCRIPTOR"):
        return
    from google.protobuf.json_format import MessageToDict

    try:
        if message.WhichOneof("data_oneof") == "data" and message.data.WhichOneof("data_oneof") == "tensor":
            tensor = message.data.tensor
            data: dict[str, Any] = {"tensor": {"shape": list(tensor.shape), "values": list(tensor.values)}}
            if message.data.names:
                data["names"] = list(message.data.names)
            payload: dict[str, Any] = {"data": data}
            if message.HasField("meta"):
                payload["meta"] = MessageToDict(message.meta, preserving_proto_field_name=False)
            check_payload(payload, b"", shapes=False)  # no true/false among doubles: no walk
        else:
            check_payload(MessageToDict(message, preserving_proto_field_name=False), None, shapes=False)
    except EnvelopeError as exc:
        raise _bad_request(str(exc)) from None

