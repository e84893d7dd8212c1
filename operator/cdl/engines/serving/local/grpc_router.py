"""The router's gRPC side, for both protocols a Deployment can speak:

- the Open Inference Protocol's `inference.GRPCInferenceService` (MLServer): each `ModelInfer`
  is scored in the V2 JSON form (`{"inputs": [{"name", "datatype", "shape", "data"}]}`);
- the Seldon protocol's `seldon.protos.Seldon` / `seldon.protos.Model` (seldon-core-microservice):
  each `Predict` is scored in the Seldon JSON form REST sends (`{"data": {"ndarray": ...}}`,
  `tensor`, `strData`, `jsonData`, `binData` as base64, `meta`).

Requests are forwarded as the bytes received (no decoding on the way through) to a model
server's gRPC port, split between primary and canary like REST, copied to the shadow; the
request and response of a prediction become a Scoring Data row as protobuf bytes, turned into
JSON only when the writer's thread stores them. The other methods (health, metadata, feedback)
go to a primary server as they are.

The messages are described here (the fields cdl reads of KServe/MLServer's `dataplane.proto` and
seldon-core's `prediction.proto`), so the operator's environment needs grpcio and protobuf but no
generated code.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import grpc
import numpy as np

log = logging.getLogger("cdl.router.grpc")

SERVICE = "inference.GRPCInferenceService"
INFER = f"/{SERVICE}/ModelInfer"
SELDON_SERVICES = ("seldon.protos.Seldon", "seldon.protos.Model")
SELDON_PREDICT = frozenset(f"/{service}/Predict" for service in SELDON_SERVICES)
TIMEOUT_S = 60.0
_CODES = {"OK": 200, "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503,
          "DEADLINE_EXCEEDED": 504, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400}


# --------------------------------------------------------------------------- the messages


def _messages() -> tuple[Any, Any]:
    """ModelInferRequest and ModelInferResponse classes built from a descriptor of their fields."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="cdl_dataplane.proto", package="cdl_inference", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> descriptor_pb2.DescriptorProto:
        msg = descriptor_pb2.DescriptorProto(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    file.message_type.append(message("InferTensorContents", [
        ("bool_contents", 1, F.TYPE_BOOL, rep, ""), ("int_contents", 2, F.TYPE_INT32, rep, ""),
        ("int64_contents", 3, F.TYPE_INT64, rep, ""), ("uint_contents", 4, F.TYPE_UINT32, rep, ""),
        ("uint64_contents", 5, F.TYPE_UINT64, rep, ""), ("fp32_contents", 6, F.TYPE_FLOAT, rep, ""),
        ("fp64_contents", 7, F.TYPE_DOUBLE, rep, ""), ("bytes_contents", 8, F.TYPE_BYTES, rep, "")]))
    tensor = [("name", 1, F.TYPE_STRING, opt, ""), ("datatype", 2, F.TYPE_STRING, opt, ""),
              ("shape", 3, F.TYPE_INT64, rep, ""),
              ("contents", 5, F.TYPE_MESSAGE, opt, ".cdl_inference.InferTensorContents")]
    file.message_type.append(message("InferTensor", tensor))
    head = [("model_name", 1, F.TYPE_STRING, opt, ""), ("model_version", 2, F.TYPE_STRING, opt, ""),
            ("id", 3, F.TYPE_STRING, opt, "")]
    file.message_type.append(message("ModelInferRequest", [
        *head, ("inputs", 5, F.TYPE_MESSAGE, rep, ".cdl_inference.InferTensor"),
        ("raw_input_contents", 7, F.TYPE_BYTES, rep, "")]))
    file.message_type.append(message("ModelInferResponse", [
        *head, ("outputs", 5, F.TYPE_MESSAGE, rep, ".cdl_inference.InferTensor"),
        ("raw_output_contents", 6, F.TYPE_BYTES, rep, "")]))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("cdl_inference.ModelInferRequest")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("cdl_inference.ModelInferResponse")))


def _seldon_message() -> Any:
    """seldon.protos.SeldonMessage (the fields REST has: data with names, tensor or ndarray;
    binData, strData, jsonData; status; meta with puid, tags, routing, requestPath)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

    F = descriptor_pb2.FieldDescriptorProto
    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(name="cdl_seldon_prediction.proto", package="cdl_seldon",
                                              syntax="proto3", dependency=["google/protobuf/struct.proto"])

    def message(name: str, fields: list[tuple[str, int, int, int, str]],
                nested: list[descriptor_pb2.DescriptorProto] = ()) -> descriptor_pb2.DescriptorProto:
        msg = descriptor_pb2.DescriptorProto(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label, json_name=fname)
            if type_name:
                field.type_name = type_name
        msg.nested_type.extend(nested)
        return msg

    def map_entry(name: str, value_type: int, value_type_name: str = "") -> descriptor_pb2.DescriptorProto:
        entry = message(name, [("key", 1, F.TYPE_STRING, opt, ""), ("value", 2, value_type, opt, value_type_name)])
        entry.options.map_entry = True
        return entry

    value, list_value = ".google.protobuf.Value", ".google.protobuf.ListValue"
    file.message_type.append(message("Tensor", [("shape", 1, F.TYPE_INT32, rep, ""),
                                                ("values", 2, F.TYPE_DOUBLE, rep, "")]))
    file.message_type.append(message("DefaultData", [
        ("names", 1, F.TYPE_STRING, rep, ""), ("tensor", 2, F.TYPE_MESSAGE, opt, ".cdl_seldon.Tensor"),
        ("ndarray", 3, F.TYPE_MESSAGE, opt, list_value)]))
    file.message_type.append(message("Status", [
        ("code", 1, F.TYPE_INT32, opt, ""), ("info", 2, F.TYPE_STRING, opt, ""),
        ("reason", 3, F.TYPE_STRING, opt, "")]))
    file.message_type.append(message("Meta", [
        ("puid", 1, F.TYPE_STRING, opt, ""), ("tags", 2, F.TYPE_MESSAGE, rep, ".cdl_seldon.Meta.TagsEntry"),
        ("routing", 3, F.TYPE_MESSAGE, rep, ".cdl_seldon.Meta.RoutingEntry"),
        ("requestPath", 4, F.TYPE_MESSAGE, rep, ".cdl_seldon.Meta.RequestPathEntry")],
        [map_entry("TagsEntry", F.TYPE_MESSAGE, value), map_entry("RoutingEntry", F.TYPE_INT32),
         map_entry("RequestPathEntry", F.TYPE_STRING)]))
    file.message_type.append(message("SeldonMessage", [
        ("status", 1, F.TYPE_MESSAGE, opt, ".cdl_seldon.Status"), ("meta", 2, F.TYPE_MESSAGE, opt, ".cdl_seldon.Meta"),
        ("data", 3, F.TYPE_MESSAGE, opt, ".cdl_seldon.DefaultData"), ("binData", 4, F.TYPE_BYTES, opt, ""),
        ("strData", 5, F.TYPE_STRING, opt, ""), ("jsonData", 6, F.TYPE_MESSAGE, opt, value)]))
    pool = descriptor_pool.DescriptorPool()
    well_known = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(well_known)
    pool.Add(well_known)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("cdl_seldon.SeldonMessage"))


_SELDON_MESSAGE: Any = None


def seldon_json(raw: bytes) -> dict[str, Any]:
    """A seldon.protos.SeldonMessage (protobuf bytes) in the JSON form REST uses. A tensor's
    doubles are copied as one list rather than walked value by value by `MessageToDict`."""
    global _SELDON_MESSAGE
    from google.protobuf import json_format

    if _SELDON_MESSAGE is None:
        _SELDON_MESSAGE = _seldon_message()
    message = _SELDON_MESSAGE.FromString(raw)
    values = None
    if message.HasField("data") and message.data.HasField("tensor") and len(message.data.tensor.values):
        values = list(message.data.tensor.values)
        del message.data.tensor.values[:]
    out = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if values is not None:
        out.setdefault("data", {}).setdefault("tensor", {})["values"] = values
    return out


_CLASSES: tuple[Any, Any] | None = None
_RAW_DTYPES = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
               "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


def _classes() -> tuple[Any, Any]:
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _messages()
    return _CLASSES


def _tensor_data(tensor: Any, raw: bytes | None) -> list[Any]:
    """A tensor's values as a flat JSON list, from its typed contents or its raw bytes."""
    if raw is not None:
        if tensor.datatype == "BYTES":
            out, i = [], 0
            while i + 4 <= len(raw):
                n = int.from_bytes(raw[i:i + 4], "little")
                out.append(raw[i + 4:i + 4 + n].decode("utf-8", errors="replace"))
                i += 4 + n
            return out
        dtype = _RAW_DTYPES.get(tensor.datatype)
        return np.frombuffer(raw, dtype=dtype).tolist() if dtype else []
    c = tensor.contents
    if tensor.datatype == "BYTES":
        return [b.decode("utf-8", errors="replace") for b in c.bytes_contents]
    for name in ("fp32_contents", "fp64_contents", "int_contents", "int64_contents", "uint_contents",
                 "uint64_contents", "bool_contents"):
        values = getattr(c, name)
        if len(values):
            return list(values)
    return []


def infer_json(raw: bytes, response: bool) -> dict[str, Any]:
    """A ModelInfer request or response (protobuf bytes) in the V2 JSON form REST uses."""
    request_cls, response_cls = _classes()
    msg = (response_cls if response else request_cls).FromString(raw)
    tensors = msg.outputs if response else msg.inputs
    raws = list(msg.raw_output_contents if response else msg.raw_input_contents)
    items = []
    for i, t in enumerate(tensors):
        items.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                      "data": _tensor_data(t, raws[i] if i < len(raws) else None)})
    out: dict[str, Any] = {"model_name": msg.model_name, "outputs" if response else "inputs": items}
    if msg.model_version:
        out["model_version"] = msg.model_version
    if msg.id:
        out["id"] = msg.id
    return out


class GrpcMessage:
    """Protobuf bytes of a prediction call (V2 ModelInfer or Seldon Predict), kept as received;
    the store asks for its JSON form (`scoring_json`) on the writer's thread."""

    __slots__ = ("raw", "response", "seldon")

    def __init__(self, raw: bytes, response: bool, seldon: bool = False) -> None:
        self.raw, self.response, self.seldon = raw, response, seldon

    def scoring_json(self) -> Any:
        try:
            return seldon_json(self.raw) if self.seldon else infer_json(self.raw, self.response)
        except Exception as exc:  # not a message of the protocol: say so rather than lose the row
            return {"grpc_bytes": len(self.raw), "undecodable": f"{type(exc).__name__}: {exc}"[:200]}


# --------------------------------------------------------------------------- the proxy


class GrpcProxy:
    """A grpc.aio server forwarding the gRPC service of the Deployment's protocol for a Router
    (`inference.GRPCInferenceService` for V2, `seldon.protos.Seldon`/`Model` for Seldon)."""

    def __init__(self, router: Any, pick_route: Any, scoring_row: Any) -> None:
        """`router` is the REST router whose configuration, writer and figures it shares;
        `pick_route` and `scoring_row` are the router's own (handed in: no import loop)."""
        self.router = router
        self.pick_route = pick_route
        self.scoring_row = scoring_row
        self.server: Any = None
        self._channels: dict[str, Any] = {}
        self._calls: dict[tuple[str, str], Any] = {}  # (target, method) -> multi-callable, made once

    async def start(self, host: str, port: int) -> int:
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                               ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        self.server.add_generic_rpc_handlers((_Handler(self),))
        bound = self.server.add_insecure_port(f"{host}:{port}")
        await self.server.start()
        return bound

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(1.0)
        for channel in self._channels.values():
            await channel.close()

    def _call(self, target: str, method: str) -> Any:
        call = self._calls.get((target, method))
        if call is None:
            channel = self._channels.get(target)
            if channel is None:
                channel = self._channels[target] = grpc.aio.insecure_channel(
                    target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                     ("grpc.max_send_message_length", 64 * 1024 * 1024)])
            # no (de)serializers: the bytes pass as they are
            call = self._calls[(target, method)] = channel.unary_unary(method)
        return call

    async def _forward(self, route: Any, method: str, raw: bytes) -> tuple[int, bytes, Any, str | None]:
        """(HTTP-like status, answer, grpc status code, error) from one of the route's servers."""
        targets = route.grpc_backends
        if not targets:
            return 503, b"", grpc.StatusCode.UNAVAILABLE, f"model {route.model_version} has no gRPC server"
        error: str | None = None
        code: Any = grpc.StatusCode.UNAVAILABLE
        for _attempt in range(len(targets)):
            index = route.pick_index()
            target, url = targets[index % len(targets)], route.backends[index % len(route.backends)]
            inflight = self.router.inflight
            inflight[url] = inflight.get(url, 0) + 1
            try:
                return 200, await self._call(target, method)(raw, timeout=TIMEOUT_S), grpc.StatusCode.OK, None
            except grpc.aio.AioRpcError as exc:
                code, error = exc.code(), exc.details() or exc.code().name
                if code != grpc.StatusCode.UNAVAILABLE:
                    return _CODES.get(code.name, 500), b"", code, error
            finally:
                inflight[url] -= 1
        return 503, b"", code, f"model server {route.model_version} unreachable: {error}"

    async def infer(self, method: str, raw: bytes, context: Any) -> bytes:
        """A prediction (V2 ModelInfer, Seldon Predict): forwarded, mirrored, scored."""
        pick_route, scoring_row = self.pick_route, self.scoring_row
        seldon = method in SELDON_PREDICT
        router = self.router
        router.requests += 1
        started = time.perf_counter()
        config = router.config
        log_it = config.logging_enabled and router.writer.enabled and (
            config.sample_rate >= 1.0 or random.random() < config.sample_rate)
        route = pick_route(config.routes)
        if route is None:
            router.errors += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"no model server of Deployment {config.namespace}/{config.deployment} is ready")
        status, answer, code, error = await self._forward(route, method, raw)
        for shadow in config.shadows:
            if shadow.grpc_backends and status < 400 and len(router.shadow_tasks) < 32:
                task = asyncio.create_task(self._shadow(shadow, method, raw, log_it))
                router.shadow_tasks.add(task)
                task.add_done_callback(router.shadow_tasks.discard)
        seconds = time.perf_counter() - started
        router.figures.observe(config.deployment, route, status, seconds, None, None)
        if log_it:
            router.writer.put(scoring_row(config, route.model_version, GrpcMessage(raw, False, seldon),
                                          GrpcMessage(answer, True, seldon) if answer else None, status,
                                          seconds * 1000.0, False, error))
        if status >= 500:
            router.errors += 1
        if code != grpc.StatusCode.OK:
            await context.abort(code, error or code.name)
        await context.send_initial_metadata((("x-cdl-model-version", route.model_version),
                                             ("x-cdl-role", route.role)))
        return answer

    async def _shadow(self, shadow: Any, method: str, raw: bytes, log_it: bool) -> None:
        started = time.perf_counter()
        seldon = method in SELDON_PREDICT
        try:
            status, answer, _code, error = await self._forward(shadow, method, raw)
            if log_it:
                self.router.writer.put(self.scoring_row(
                    self.router.config, shadow.model_version, GrpcMessage(raw, False, seldon),
                    GrpcMessage(answer, True, seldon) if answer else None, status,
                    (time.perf_counter() - started) * 1000.0, True, error))
        except Exception:  # a shadow's trouble is never the client's
            log.debug("shadow gRPC request failed", exc_info=True)

    async def other(self, method: str, raw: bytes, context: Any) -> bytes:
        """Health, metadata and the rest: answered by a primary model server as they are."""
        route = self.pick_route(self.router.config.routes)
        if route is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no model server is ready")
        _status, answer, code, error = await self._forward(route, method, raw)
        if answer or code.name == "OK":
            return answer
        await context.abort(code, error or code.name)
        return b""


class _Handler(grpc.GenericRpcHandler):
    """Every unary method of the Deployment protocol's gRPC service, bytes in and bytes out."""

    def __init__(self, proxy: GrpcProxy) -> None:
        self.proxy = proxy
        self._handlers: dict[tuple[bool, str], Any] = {}  # grpc asks for every call: made once per method

    def service(self, details: Any) -> Any:
        method = details.method
        seldon = self.proxy.router.config.protocol != "v2"
        key = (seldon, method)
        if key in self._handlers:
            return self._handlers[key]
        handler = self._handlers[key] = self._handler(method, seldon)
        return handler

    def _handler(self, method: str, seldon: bool) -> Any:
        services = SELDON_SERVICES if seldon else (SERVICE,)
        if not any(method.startswith(f"/{name}/") for name in services) or method.endswith("StreamInfer"):
            return None
        if method in (SELDON_PREDICT if seldon else (INFER,)):
            async def predict(raw: bytes, context: Any) -> bytes:
                return await self.proxy.infer(method, raw, context)

            return grpc.unary_unary_rpc_method_handler(predict)

        async def forward(raw: bytes, context: Any) -> bytes:
            return await self.proxy.other(method, raw, context)

        return grpc.unary_unary_rpc_method_handler(forward)

