"""The Open Inference Protocol (V2) fast path: MLServer with cdl's runtime behind the router.

The same package and predictor class serve through seldon-core-microservice (Seldon protocol,
REST and gRPC) and MLServer (V2, REST and gRPC), real servers from their own environments;
answers must equal the in-process predictor's, adaptive batching must hand each caller its own
rows, and every request under load must become exactly one Scoring Data row.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from cdl.engines.serving.local.microservice import ServerState
from cdl.runtime.serving import CdlPredictor
from tests.fixtures.serving.build import PREDICTOR, sample
from tests.integration.test_serving_engine import drained, wait_for
from tests.plugins.serving import served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def in_process(serving_packages) -> CdlPredictor:
    model = CdlPredictor(model_package=str(serving_packages["v1"].dir), predictor=PREDICTOR)
    model.load()
    return model


@pytest.fixture(scope="module")
def fast(serving_deploy, serving_packages, mlserver_venv) -> tuple[Any, Any]:
    """toy-1 on MLServer with adaptive batching (up to 16 examples, 20 ms)."""
    return serving_deploy("fast", [served(serving_packages["v1"], "primary", 100, PREDICTOR)], server="mlserver",
                          max_batch_size=16, max_batch_time_ms=20.0, timeout=180.0)


@pytest.fixture(scope="module")
def classic(serving_deploy, serving_packages) -> tuple[Any, Any]:
    """The same model on seldon-core-microservice (Seldon protocol)."""
    return serving_deploy("classic", [served(serving_packages["v1"], "primary", 100, PREDICTOR)])


def v2_body(rows: list[list[float]]) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                   "data": [v for r in rows for v in r]}]}).encode()


def labels_of(answer: dict[str, Any]) -> list[str]:
    (output,) = answer["outputs"]
    return list(output["data"])


def server_of(serving_engine, key) -> ServerState:
    (raw,) = serving_engine._deployments[key.slug].state.servers.values()
    return ServerState.from_wire(raw)


async def post_all(url: str, bodies: list[bytes], concurrency: int) -> list[tuple[int, Any]]:
    """Every body, `concurrency` at a time; answers in the order of the bodies."""
    results: list[Any] = [None] * len(bodies)
    todo = list(enumerate(bodies))

    async def client(session: aiohttp.ClientSession) -> None:
        while todo:
            i, body = todo.pop()
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                results[i] = (resp.status, await resp.json(content_type=None))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results


def grpc_infer(venv: Path, target: str, model: str, rows: list[list[float]]) -> list[str]:
    """ModelInfer over gRPC with MLServer's own generated client, in MLServer's environment."""
    script = textwrap.dedent(f"""
        import json, sys
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb, dataplane_pb2_grpc as rpc
        rows = {rows!r}
        tensor = pb.InferTensorContents(fp32_contents=[v for r in rows for v in r])
        request = pb.ModelInferRequest(model_name={model!r}, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x", datatype="FP32", shape=[len(rows), len(rows[0])], contents=tensor)])
        with grpc.insecure_channel("{target}") as channel:
            reply = rpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        print(json.dumps([b.decode() for b in reply.outputs[0].contents.bytes_contents]))
    """)
    done = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


SELDON_GRPC = textwrap.dedent("""
    import json, sys
    from concurrent.futures import ThreadPoolExecutor
    import grpc
    from seldon_core.proto import prediction_pb2 as pb, prediction_pb2_grpc as rpc
    target, requests, concurrency = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    channel = grpc.insecure_channel(target)
    stub = rpc.SeldonStub(channel)
    def predict(rows):
        message = pb.SeldonMessage()
        if isinstance(rows, dict):  # {"shape": [...], "values": [...]}: data.tensor
            message.data.tensor.shape.extend(rows["shape"])
            message.data.tensor.values.extend(rows["values"])
        else:
            message.data.ndarray.extend(rows)
        try:
            reply = stub.Predict(message, timeout=30)
        except grpc.RpcError as exc:
            return {"code": exc.code().name, "details": exc.details()}
        return {"code": "OK", "ndarray": [v for v in reply.data.ndarray]}
    with ThreadPoolExecutor(concurrency) as pool:
        print(json.dumps(list(pool.map(predict, requests))))
""")


def seldon_grpc_predict(venv: Path, target: str, requests: list[Any],
                        concurrency: int = 1) -> list[dict[str, Any]]:
    """seldon.protos.Seldon/Predict with seldon-core's own generated client, in its environment:
    one call per request (its rows as data.ndarray, or a {"shape", "values"} dict as data.tensor),
    `concurrency` at a time; answers in order."""
    done = subprocess.run([str(venv / "bin" / "python"), "-c", SELDON_GRPC, target, json.dumps(requests),
                           str(concurrency)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_seldon_protocol_over_grpc_gives_the_in_process_predictions(classic, in_process, serving_engine,
                                                                    serving_database, seldon_venv) -> None:
    key, status = classic
    x, _ = sample(30, seed=46)
    rows = [[round(float(v), 4) for v in r] for r in x]
    expected = list(in_process.predict_rows(rows))
    server = server_of(serving_engine, key)
    (direct,) = seldon_grpc_predict(seldon_venv, f"127.0.0.1:{server.grpc_port}", [rows])  # the microservice
    assert direct == {"code": "OK", "ndarray": expected}
    drained(status.url)
    serving_database.delete_scoring_rows(key.namespace, key.name)
    (routed,) = seldon_grpc_predict(seldon_venv, status.ref["grpc"], [rows])  # through the router
    assert routed == {"code": "OK", "ndarray": expected}

    # the scoring row holds the request and the answer in the JSON form REST uses
    (row,) = wait_for(lambda: serving_database.scoring_window(key.namespace, key.name, 10), 20, "the gRPC row")
    assert row.status_code == 200 and row.model_version == "toy-1" and not row.shadow
    assert row.request == {"data": {"ndarray": rows}} and row.response["data"]["ndarray"] == expected

    # input the model cannot take: refused with the model server's message, and scored as refused
    drained(status.url)
    serving_database.delete_scoring_rows(key.namespace, key.name)
    (bad,) = seldon_grpc_predict(seldon_venv, status.ref["grpc"], [[[1.0, 2.0, 3.0]]])
    assert bad["code"] != "OK" and "shape [4]" in bad["details"], bad
    (row,) = wait_for(lambda: serving_database.scoring_window(key.namespace, key.name, 10), 20, "the refused row")
    assert row.status_code >= 400 and "shape [4]" in row.error

    # booleans among the numbers are refused as on REST, not predicted on as 1 and 0
    for target in (f"127.0.0.1:{server.grpc_port}", status.ref["grpc"]):
        (boolean,) = seldon_grpc_predict(seldon_venv, target, [[[1.0, True, 3.0, 4.0]]])
        assert boolean["code"] != "OK" and "true/false" in boolean["details"], boolean

    # the same rows as a data.tensor (packed doubles, gRPC's cheap form for numbers), and a tensor
    # whose values do not fill its shape, refused naming the field
    tensor = {"shape": [len(rows), len(rows[0])], "values": [v for r in rows for v in r]}
    short = {"shape": [2, 4], "values": [1.0, 2.0, 3.0]}
    drained(status.url)
    serving_database.delete_scoring_rows(key.namespace, key.name)
    as_tensor, refused = seldon_grpc_predict(seldon_venv, status.ref["grpc"], [tensor, short])
    assert as_tensor == {"code": "OK", "ndarray": expected}
    assert refused["code"] == "INVALID_ARGUMENT" and "data.tensor.values" in refused["details"], refused
    stored = wait_for(lambda: (found := serving_database.scoring_window(key.namespace, key.name, 10))
                      and len(found) == 2 and found, 20, "the tensor rows")
    (scored,) = [r for r in stored if r.status_code == 200]
    assert scored.request == {"data": {"tensor": tensor}}  # stored in the JSON form REST uses


def test_seldon_grpc_scoring_rows_match_requests_one_to_one_under_load(classic, in_process, serving_database,
                                                                       seldon_venv) -> None:
    key, status = classic
    drained(status.url)
    serving_database.delete_scoring_rows(key.namespace, key.name)
    x, _ = sample(200, seed=47)
    rows = [[round(float(v), 4) + i * 1e-4 for v in r] for i, r in enumerate(x)]  # every request different
    answers = seldon_grpc_predict(seldon_venv, status.ref["grpc"], [[r] for r in rows], concurrency=16)
    assert [a["code"] for a in answers] == ["OK"] * len(rows)
    assert [a["ndarray"][0] for a in answers] == in_process.predict_rows(rows)

    def complete() -> list[Any]:
        stored = serving_database.scoring_window(key.namespace, key.name, 1000)
        return stored if len(stored) >= len(rows) else []

    stored = wait_for(complete, 30, f"{len(rows)} scoring rows")
    assert len(stored) == len(rows)
    sent = {json.dumps(np.round(r, 4).tolist()): a["ndarray"] for r, a in zip(rows, answers, strict=True)}
    seen = {json.dumps(np.round(row.request["data"]["ndarray"][0], 4).tolist()): row.response["data"]["ndarray"]
            for row in stored}
    assert seen == sent  # each request once, with the answer its caller got
    assert all(row.status_code == 200 and not row.shadow for row in stored)


def test_both_protocols_rest_and_grpc_give_the_in_process_predictions(fast, classic, in_process, serving_engine,
                                                                     serving_post, mlserver_venv) -> None:
    x, _ = sample(30, seed=41)
    rows = [[round(float(v), 4) for v in r] for r in x]
    expected = list(in_process.predict_rows(rows))
    (fast_key, fast_status), (_, classic_status) = fast, classic
    assert fast_status.url.endswith(f"/v2/models/{fast_key.name}/infer")

    code, answer, headers = serving_post(fast_status.url, v2_body(rows))  # V2 REST through the router
    assert code == 200, answer
    assert labels_of(answer) == expected and headers["X-Cdl-Model-Version"] == "toy-1"
    assert answer["parameters"]["cdl_examples"] == 30
    code, answer, _ = serving_post(classic_status.url, {"data": {"ndarray": rows}})  # Seldon REST
    assert code == 200 and answer["data"]["ndarray"] == expected
    code, answer, _ = serving_post(classic_status.url, {"data": {"tensor": {"shape": [30, 4],
                                                                          "values": [v for r in rows for v in r]}}})
    assert code == 200 and answer["data"]["ndarray"] == expected  # labels stay an ndarray
    server = server_of(serving_engine, fast_key)
    assert grpc_infer(mlserver_venv, f"127.0.0.1:{server.grpc_port}", fast_key.name, rows) == expected  # V2 gRPC
    assert grpc_infer(mlserver_venv, fast_status.ref["grpc"], fast_key.name, rows) == expected  # through the router

    # the wrong protocol for the Deployment, and input the model cannot take, say what is wrong
    code, answer, _ = serving_post(fast_status.url.replace(f"/v2/models/{fast_key.name}/infer",
                                                           "/api/v1.0/predictions"), {"data": {"ndarray": rows}})
    assert code == 404 and "Open Inference Protocol" in answer["status"]["info"]
    code, answer, _ = serving_post(fast_status.url, v2_body([[1.0, 2.0, 3.0]]))
    assert code == 400 and "shape [4]" in json.dumps(answer)


def test_adaptive_batching_returns_each_caller_its_own_rows(fast, in_process) -> None:
    _, status = fast
    x, _ = sample(96, seed=42)
    rows = [[round(float(v), 4) for v in r] for r in x]
    expected = in_process.predict_rows(rows)
    answers = asyncio.run(post_all(status.url, [v2_body([r]) for r in rows], concurrency=16))
    assert all(code == 200 for code, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert [labels_of(a)[0] for _, a in answers] == expected
    assert all(a["outputs"][0]["shape"][0] == 1 for _, a in answers)  # one row back per request
    # the model was called on merged batches: the examples it saw per call exceed one request's
    assert max(a["parameters"]["cdl_examples"] for _, a in answers) > 1


def test_scoring_rows_match_requests_one_to_one_under_load(fast, in_process, serving_database) -> None:
    key, status = fast
    drained(status.url.replace(f"/v2/models/{key.name}/infer", "/api/v1.0/predictions"))
    serving_database.delete_scoring_rows(key.namespace, key.name)
    x, _ = sample(300, seed=43)
    rows = [[round(float(v), 4) + i * 1e-4 for v in r] for i, r in enumerate(x)]  # every request different
    answers = asyncio.run(post_all(status.url, [v2_body([r]) for r in rows], concurrency=16))
    assert all(code == 200 for code, _ in answers)

    def complete() -> list[Any]:
        stored = serving_database.scoring_window(key.namespace, key.name, 1000)
        return stored if len(stored) >= len(rows) else []

    stored = wait_for(complete, 30, f"{len(rows)} scoring rows")
    assert len(stored) == len(rows)
    sent = {json.dumps(np.round(r, 4).tolist()): labels_of(a) for r, (_, a) in zip(rows, answers, strict=True)}
    seen = {}
    for row in stored:
        data = row.request["inputs"][0]["data"]
        seen[json.dumps(np.round(data, 4).tolist())] = row.response["outputs"][0]["data"]
        assert row.status_code == 200 and row.model_version == "toy-1" and not row.shadow
    assert seen == sent  # each request once, with the answer its caller got


def test_seldon_protocol_scoring_rows_match_requests_one_to_one_under_load(classic, in_process,
                                                                          serving_database) -> None:
    key, status = classic
    drained(status.url)
    serving_database.delete_scoring_rows(key.namespace, key.name)
    x, _ = sample(300, seed=45)
    rows = [[round(float(v), 4) + i * 1e-4 for v in r] for i, r in enumerate(x)]
    bodies = [json.dumps({"data": {"ndarray": [r]}}).encode() for r in rows]
    answers = asyncio.run(post_all(status.url, bodies, concurrency=16))
    assert all(code == 200 for code, _ in answers)
    assert [a["data"]["ndarray"][0] for _, a in answers] == in_process.predict_rows(rows)

    def complete() -> list[Any]:
        stored = serving_database.scoring_window(key.namespace, key.name, 1000)
        return stored if len(stored) >= len(rows) else []

    stored = wait_for(complete, 30, f"{len(rows)} scoring rows")
    assert len(stored) == len(rows)
    sent = {json.dumps(np.round(r, 4).tolist()): a["data"]["ndarray"] for r, (_, a) in zip(rows, answers, strict=True)}
    seen = {json.dumps(np.round(row.request["data"]["ndarray"][0], 4).tolist()): row.response["data"]["ndarray"]
            for row in stored}
    assert seen == sent  # each request once, with the answer its caller got (requestPath included)
    assert all(row.response["meta"]["requestPath"] == {"primary": "toy-1"} for row in stored)


def test_grpc_requests_through_the_router_are_scored_in_the_v2_json_form(fast, in_process, serving_database,
                                                                        mlserver_venv) -> None:
    key, status = fast
    drained(status.url.replace(f"/v2/models/{key.name}/infer", "/api/v1.0/predictions"))
    serving_database.delete_scoring_rows(key.namespace, key.name)
    rows = [[3.0, 0.0, 0.5, 0.25], [0.0, 3.0, 0.0, 0.125]]
    labels = grpc_infer(mlserver_venv, status.ref["grpc"], key.name, rows)
    stored = wait_for(lambda: serving_database.scoring_window(key.namespace, key.name, 10), 20, "the gRPC row")
    assert len(stored) == 1 and stored[0].status_code == 200 and stored[0].model_version == "toy-1"
    (tensor,) = stored[0].request["inputs"]
    assert tensor["shape"] == [2, 4] and tensor["datatype"] == "FP32" and tensor["data"] == [v for r in rows for v in r]
    assert stored[0].response["outputs"][0]["data"] == labels == in_process.predict_rows(rows)


def test_the_router_counts_examples_and_model_time_for_prometheus(fast, serving_post) -> None:
    key, status = fast
    code, _, _ = serving_post(status.url, v2_body([[3.0, 0, 0, 0], [0, 3.0, 0, 0]]))
    assert code == 200
    import urllib.request

    metrics_url = status.url.replace(f"/v2/models/{key.name}/infer", "/metrics")
    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    examples = [line for line in text.splitlines() if line.startswith("cdl_predicted_examples_total{")]
    assert examples and float(examples[0].rsplit(" ", 1)[1]) >= 2
    assert 'cdl_model_seconds_count{deployment="fast",model_version="toy-1",role="primary"}' in text


def test_the_rendered_seldon_deployment_runs_on_mlserver(serving_packages, in_process, mlserver_venv,
                                                         tmp_path: Path) -> None:
    """What the Seldon engine renders for `server: mlserver` is what the cdl MLServer image runs:
    its container's environment, given to `mlserver start` (the image's command), serves V2."""
    import os
    import time
    import urllib.request

    from cdl.engines.base import ResourceKey, ServingRequest
    from cdl.engines.serving.local.microservice import free_port, prepare_wrapper_dir, stop_group
    from cdl.engines.serving.seldon import seldon_deployment
    from cdl.engines.settings import SeldonSettings

    pkg = serving_packages["v1"]
    request = ServingRequest(ResourceKey("ml", "toy"), 1, [served(pkg, "primary", 100, PREDICTOR)],
                             server="mlserver", max_batch_size=8, max_batch_time_ms=5.0)
    obj = seldon_deployment(request, SeldonSettings.from_env({}))
    (container,) = obj["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env.update(MLSERVER_HTTP_PORT=str(http_port), MLSERVER_GRPC_PORT=str(grpc_port),
               MLSERVER_METRICS_PORT=str(metrics_port), MLSERVER_HOST="127.0.0.1",
               PYTHONPATH=str(prepare_wrapper_dir(tmp_path / "image")), CDL_PACKAGE_CACHE=str(tmp_path / "cache"),
               PATH=f"{mlserver_venv / 'bin'}:{env['PATH']}")
    (tmp_path / "models").mkdir()
    with open(tmp_path / "mlserver.log", "wb") as log:
        proc = subprocess.Popen(["mlserver", "start", str(tmp_path / "models")], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{http_port}"

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "mlserver.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/v2/models/toy/ready", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                time.sleep(0.2)
                return False

        wait_for(ready, 90, "MLServer with the rendered environment")
        x, _ = sample(12, seed=44)
        rows = [[round(float(v), 4) for v in r] for r in x]
        req = urllib.request.Request(f"{base}/v2/models/toy/infer", data=v2_body(rows),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert labels_of(answer) == in_process.predict_rows(rows)
        assert answer["model_version"] == "toy-1"
    finally:
        stop_group(proc.pid, None)
        proc.wait(5)
