"""The scoring-data sink receives what Seldon's request logger sends (CloudEvents in binary
mode, headers as Seldon Core's executor sets them) and writes paired rows into a real
PostgreSQL. There is no Seldon executor here; the events are built from its documented headers."""

from __future__ import annotations

import json
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer

from cdl.engines.serving.scoring_sink import ScoringSink


def headers(kind: str, request_id: str, endpoint: str = "news-classifier-v1") -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Ce-Specversion": "0.3",
        "Ce-Id": request_id,
        "Ce-Requestid": request_id,
        "Ce-Type": f"io.seldon.serving.inference.{kind}",
        "Ce-Source": "io.seldon.serving.deployment.news-classifier.ml",
        "Ce-Inferenceservicename": "news-classifier",
        "Ce-Namespace": "ml",
        "Ce-Endpoint": endpoint,
        "Ce-Modelid": "classifier",
    }


@pytest.fixture
async def sink_client(database):
    sink = ScoringSink(database, batch=1000, flush_seconds=60)
    async with TestClient(TestServer(sink.app())) as client:
        yield sink, client


async def test_request_and_response_become_one_row(sink_client, database):
    sink, client = sink_client
    for i, endpoint in enumerate(["news-classifier-v1", "news-classifier-v1", "news-classifier-v2-shadow"]):
        rid = str(uuid.uuid4())
        body = {"data": {"ndarray": [f"text {i}"]}}
        assert (await client.post("/", data=json.dumps(body), headers=headers("request", rid, endpoint))).status == 202
        out = {"data": {"ndarray": ["business"]}, "meta": {}}
        assert (await client.post("/", data=json.dumps(out), headers=headers("response", rid, endpoint))).status == 202
    assert await sink.flush() == 3
    rows = database.scoring_window("ml", "news-classifier", 10)
    assert len(rows) == 3
    assert sorted(r.model_version for r in rows) == ["news-classifier-v1", "news-classifier-v1", "news-classifier-v2"]
    assert sum(r.shadow for r in rows) == 1
    first = next(r for r in rows if r.request == {"data": {"ndarray": ["text 0"]}})
    assert first.response["data"]["ndarray"] == ["business"] and first.status_code == 200


async def test_a_failed_prediction_is_an_error_row(sink_client, database):
    sink, client = sink_client
    rid = str(uuid.uuid4())
    await client.post("/", data="{}", headers=headers("request", rid))
    failure = {"status": {"status": "FAILURE", "code": 500, "info": "model exploded"}}
    await client.post("/", data=json.dumps(failure), headers=headers("response", rid))
    await sink.flush()
    (row,) = database.scoring_window("ml", "news-classifier", 10)
    assert row.status_code == 500 and row.error == "model exploded"


async def test_not_a_seldon_event_is_refused(sink_client):
    _, client = sink_client
    resp = await client.post("/", data="{}", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert "Ce-Type" in (await resp.json())["error"]


async def test_query_from_the_seldon_engine_names_the_row_and_samples(sink_client, database):
    sink, client = sink_client
    query = "?namespace=team&deployment=clf&modelVersion=clf-v2&role=shadow&sampleRate=0.5"
    for i in range(200):
        rid = f"req-{i}"
        await client.post(f"/{query}", data="{}", headers=headers("request", rid, "predictor-b"))
        await client.post(f"/{query}", data='{"data": {"ndarray": [1]}}', headers=headers("response", rid, "predictor-b"))
    await sink.flush()
    rows = database.scoring_window("team", "clf", 1000)
    assert 70 <= len(rows) <= 130  # about half, each request with its response
    assert all(r.model_version == "clf-v2" and r.shadow and r.request == {} for r in rows)


async def test_with_a_key_only_events_carrying_their_namespaces_token_are_taken(database):
    """Anyone in the cluster could otherwise post rows, fake drift and start retrains."""
    from cdl.engines.serving.scoring_sink import sink_token

    key = b"k" * 32
    sink = ScoringSink(database, batch=1000, flush_seconds=60, key=key)
    async with TestClient(TestServer(sink.app())) as client:
        request_id = str(uuid.uuid4())
        body = json.dumps({"data": {"ndarray": [[1]]}})
        for query, expected in [
            ({}, 401),                                                           # no token
            ({"namespace": "ml", "token": "0" * 64}, 401),                       # a wrong token
            ({"namespace": "ml", "token": sink_token(key, "other-team")}, 401),  # another namespace's
            ({"namespace": "ml", "token": sink_token(key, "ml")}, 202),
        ]:
            resp = await client.post("/", params=query, data=body, headers=headers("request", request_id))
            assert resp.status == expected, query
        resp = await client.post("/", params={"namespace": "ml", "token": sink_token(key, "ml")},
                                 data=json.dumps({"data": {"ndarray": [["a"]]}}), headers=headers("response", request_id))
        assert resp.status == 202
        assert await sink.flush() == 1 and sink.refused == 3
    assert [r.namespace for r in database.scoring_window("ml", "news-classifier", 10)] == ["ml"]


def test_the_seldon_logger_url_carries_the_namespaces_token(monkeypatch):
    from urllib.parse import parse_qs, urlparse

    from cdl.engines.base import ResourceKey, ServedModel, ServingRequest
    from cdl.engines.serving.scoring_sink import KEY_ENV, sink_token
    from cdl.engines.serving.seldon import _logger
    from cdl.engines.settings import SeldonSettings

    monkeypatch.setenv(KEY_ENV, "secret-key")
    request = ServingRequest(key=ResourceKey("team-a", "news"), generation=1,
                             models=[ServedModel("news-v1", "s3://b/k", "0" * 64, "serve:P", "primary", 100)])
    settings = SeldonSettings(scoring_sink_url="http://cdl-scoring-sink.cdl.svc:8081")
    query = parse_qs(urlparse(_logger(request.models[0], request, settings)["url"]).query)
    assert query["token"] == [sink_token(b"secret-key", "team-a")] and query["namespace"] == ["team-a"]
