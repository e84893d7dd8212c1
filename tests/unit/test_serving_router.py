"""The Deployment router in process: request checks, the traffic split, shadow copies, Scoring
Data batching and reloads, against real aiohttp backends on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cdl.engines.serving.local.router import (
    PREDICT_PATH,
    BadRequest,
    Route,
    Router,
    ScoringWriter,
    check_request,
    pick_route,
)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": {"ndarray": [[1, 2], [3, 4]]}}',
        b'{"data": {"ndarray": ["some text", "more"]}}',
        b'{"data": {"names": ["a"], "tensor": {"shape": [2, 2], "values": [1, 2, 3, 4]}}}',
        b'{"strData": "hello"}',
        b'{"jsonData": {"instances": [1]}}',
    ],
)
def test_well_formed_requests_pass(body: bytes) -> None:
    assert isinstance(check_request(body), dict)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty request body"),
        (b"{", "not valid JSON"),
        (b"null", "must be a JSON object"),
        (b'{"data": 3}', '"data" must be an object'),
        (b'{"data": {}}', '"data" must hold "ndarray"'),
        (b'{"data": {"ndarray": {"a": 1}}}', "must be a list of examples, got a JSON object"),
        (b'{"data": {"ndarray": []}}', "is empty"),
        (b'{"data": {"ndarray": [[1], [1, 2]]}}', "differ in length"),
        (b'{"data": {"ndarray": [[1], 2]}}', "mixes array and number rows"),
        (b'{"data": {"tensor": {"shape": [2], "values": [1]}}}', "needs 2"),
        (b'{"data": {"tensor": {"shape": [-1], "values": []}}}', "non-negative integers"),
        (b'{"data": {"tensor": [1, 2]}}', "must hold"),
        (b'{"meta": {}}', 'must hold "data"'),
        # the envelope (cdl.runtime.seldon_protocol): what seldon answered 500 or predicted on
        (b'{"binData": "!!aGk="}', '"binData" is not valid base64'),
        (b'{"binData": 5}', '"binData" must be a base64 string'),
        (b'{"strData": [1]}', '"strData" must be a string'),
        (b'{"jsonData": "text"}', '"jsonData" must be an object'),
        (b'{"data": {"ndarray": [[1]]}, "meta": []}', '"meta" must be an object'),
        (b'{"data": {"ndarray": [[1]]}, "meta": {"tags": [1]}}', '"meta.tags" must be an object'),
        (b'{"data": {"ndarray": [[1]]}, "meta": {"puid": 3}}', '"meta.puid" must be a string'),
        (b'{"data": {"ndarray": [[1]]}, "strData": "x"}', "send exactly one of"),
        (b'{"data": {"names": "a", "ndarray": [[1]]}}', '"data.names" must be a list of strings'),
        (b'{"data": {"ndarray": [[1, true]]}}', '"data.ndarray" holds true/false'),
        (b'{"jsonData": {"instances": [[1, false]]}}', '"jsonData.instances" holds true/false'),
        (b'{"data": {"ndarray": [[1, 2], [3, [4]]]}}', '"data.ndarray" is ragged'),
        (b'{"data": {"ndarray": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}}", "nested deeper than 32"),
    ],
)
def test_malformed_requests_are_refused_with_a_message(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as err:
        check_request(body)
    assert message in str(err.value)


def test_the_split_is_exact_and_interleaved() -> None:
    primary = Route("m-1", "primary", 90, ["a"])
    canary = Route("m-2", "canary", 10, ["b"])
    picks = [pick_route([primary, canary]).role for _ in range(1000)]
    assert Counter(picks) == {"primary": 900, "canary": 100}
    for start in range(0, 1000, 10):
        assert picks[start:start + 10].count("canary") == 1


def test_traffic_of_a_route_without_a_ready_server_goes_elsewhere() -> None:
    primary = Route("m-1", "primary", 50, ["a"])
    canary = Route("m-2", "canary", 50, [])
    assert {pick_route([primary, canary]).role for _ in range(20)} == {"primary"}
    only_canary_pct = [Route("m-1", "primary", 0, ["a"])]
    assert pick_route(only_canary_pct).model_version == "m-1"
    assert pick_route([Route("m-1", "primary", 100, [])]) is None


# --------------------------------------------------------------------------- the server in process


class ListSink:
    """An in-memory stand-in for the database's insert_scoring_rows (the real one: integration)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.rows: list[Any] = []
        self.fail_first = fail_first
        self.calls = 0

    def insert_scoring_rows(self, rows: list[Any]) -> int:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionError("database restarting")
        self.rows.extend(rows)
        return len(rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend(answer: str, *, status: int = 200, delay: float = 0.0, seen: list[Any] | None = None) -> web.Application:
    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        if seen is not None:
            seen.append(body)
        await asyncio.sleep(delay)
        if status != 200:
            return web.json_response({"status": {"code": -1, "info": f"{answer} refused", "status": 1}},
                                     status=status)
        return web.json_response({"data": {"names": [], "ndarray": [answer] * len(body["data"]["ndarray"])},
                                  "meta": {}})

    app = web.Application()
    app.router.add_post(PREDICT_PATH, predict)
    return app


async def start(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1", port=_free_port())
    await server.start_server()
    return server


class RouterFront:
    """The router serving in this test's event loop, on a free port."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def make_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.router.port}{path}"

    async def close(self) -> None:
        await self.router.stop(grace=1.0)


async def start_router(router: Router) -> RouterFront:
    await router.start(0)
    return RouterFront(router)


def write_config(path: Path, version: int, routes: list[dict[str, Any]], shadows: list[dict[str, Any]] = (),
                 sample_rate: float = 1.0) -> None:
    path.write_text(json.dumps({"version": version, "namespace": "ns", "deployment": "dep", "routes": routes,
                                "shadows": list(shadows), "logging": {"enabled": True, "sample_rate": sample_rate}}))


def url_of(server: TestServer | RouterFront) -> str:
    return str(server.make_url(PREDICT_PATH))


async def test_router_splits_mirrors_and_scores(tmp_path: Path) -> None:
    shadow_seen: list[Any] = []
    servers = [await start(backend("one")), await start(backend("two")),
               await start(backend("shadow", status=500, delay=0.3, seen=shadow_seen))]
    config = tmp_path / "router.json"
    write_config(config, 1, [
        {"model_version": "m-1", "role": "primary", "percent": 80, "backends": [url_of(servers[0])]},
        {"model_version": "m-2", "role": "canary", "percent": 20, "backends": [url_of(servers[1])]},
    ], [{"model_version": "m-3", "role": "shadow", "percent": 0, "backends": [url_of(servers[2])]}])
    sink = ListSink(fail_first=1)
    router = Router(config, ScoringWriter(None, database=sink))
    front = await start_router(router)
    try:
        async with aiohttp.ClientSession() as session:
            answers = []
            started = asyncio.get_running_loop().time()
            for i in range(20):
                async with session.post(url_of(front), json={"data": {"ndarray": [[i, i]]}}) as resp:
                    assert resp.status == 200
                    body = await resp.json()
                    answers.append((resp.headers["X-Cdl-Model-Version"], body["data"]["ndarray"][0],
                                    body["meta"]["requestPath"]))
            elapsed = asyncio.get_running_loop().time() - started
            assert elapsed < 20 * 0.3  # nobody waited for the slow, failing shadow
            assert Counter(a[0] for a in answers) == {"m-1": 16, "m-2": 4}
            assert all(a[1] == ("one" if a[0] == "m-1" else "two") for a in answers)
            assert {tuple(a[2].items())[0] for a in answers} == {("primary", "m-1"), ("canary", "m-2")}

            async with session.post(url_of(front), data=b"{broken") as resp:
                assert resp.status == 400
                assert "not valid JSON" in (await resp.json())["status"]["info"]

            for _ in range(100):  # the shadow copies finish and the writer retries past the failure
                if len(sink.rows) >= 41:
                    break
                await asyncio.sleep(0.1)
        live = [r for r in sink.rows if not r.shadow]
        shadow = [r for r in sink.rows if r.shadow]
        assert len(live) == 21 and len(shadow) == 20 and len(shadow_seen) == 20
        assert {r.status_code for r in shadow} == {500} and shadow[0].model_version == "m-3"
        assert "shadow refused" in shadow[0].error
        rejected = [r for r in live if r.status_code == 400]
        assert len(rejected) == 1 and rejected[0].request == b"{broken"  # the bytes received, as they came
        # the rows carry the bytes received and sent; the database parses them
        assert sorted(json.loads(r.request)["data"]["ndarray"][0][0] for r in live if r.status_code == 200) \
            == list(range(20))
        assert all(json.loads(r.response)["meta"]["requestPath"] for r in live if r.status_code == 200)
        assert sink.calls >= 2  # the first insert failed and was retried
    finally:
        await front.close()
        for server in servers:
            await server.close()


async def test_router_reloads_passes_400s_and_survives_dead_servers(tmp_path: Path) -> None:
    good, picky = await start(backend("good")), await start(backend("picky", status=400))
    dead = f"http://127.0.0.1:{_free_port()}{PREDICT_PATH}"
    config = tmp_path / "router.json"
    write_config(config, 1, [{"model_version": "m-1", "role": "primary", "percent": 100, "backends": [dead]}],
                 sample_rate=0.0)
    sink = ListSink()
    router = Router(config, ScoringWriter(None, database=sink))
    front = await start_router(router)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url_of(front), json={"data": {"ndarray": [[1]]}}) as resp:
                assert resp.status == 502
                assert "unreachable" in (await resp.json())["status"]["info"]

            write_config(config, 2, [{"model_version": "m-2", "role": "primary", "percent": 100,
                                      "backends": [dead, url_of(good)]}], sample_rate=0.0)
            router.reload()
            for _ in range(4):  # a dead replica is skipped for the live one
                async with session.post(url_of(front), json={"data": {"ndarray": [[1]]}}) as resp:
                    assert resp.status == 200 and resp.headers["X-Cdl-Model-Version"] == "m-2"

            write_config(config, 3, [{"model_version": "m-3", "role": "primary", "percent": 100,
                                      "backends": [url_of(picky)]}], sample_rate=0.0)
            router.reload()
            async with session.post(url_of(front), json={"data": {"ndarray": [[1]]}}) as resp:
                assert resp.status == 400
                assert (await resp.json())["status"]["info"] == "picky refused"

            config.write_text("{ half written")
            router.reload()  # a broken file keeps the last good configuration
            async with session.get(str(front.make_url("/health"))) as resp:
                health = await resp.json()
            assert health["version"] == 3 and health["status"] == "ok"
        assert sink.rows == []  # sample rate 0
    finally:
        await front.close()
        await good.close()
        await picky.close()


async def test_no_ready_server_is_a_503(tmp_path: Path) -> None:
    config = tmp_path / "router.json"
    write_config(config, 1, [{"model_version": "m-1", "role": "primary", "percent": 100, "backends": []}])
    router = Router(config, ScoringWriter(None))
    front = await start_router(router)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url_of(front), json={"data": {"ndarray": [[1]]}}) as resp:
                assert resp.status == 503
                assert "no model server" in (await resp.json())["status"]["info"]
    finally:
        await front.close()


class QuotingSink(ListSink):
    """A database refusing rows with an error that quotes the request, as PostgreSQL's do."""

    def insert_scoring_rows(self, rows: list[Any]) -> int:
        raise ValueError(f"invalid input: {rows[0].request}")


async def test_health_shows_counts_only(tmp_path: Path) -> None:
    """/health is unauthenticated: it never shows a client's request (nor an error quoting one)."""
    good = await start(backend("good"))
    config = tmp_path / "router.json"
    write_config(config, 1, [{"model_version": "m-1", "role": "primary", "percent": 100, "backends": [url_of(good)]}])
    router = Router(config, ScoringWriter(None, database=QuotingSink()))
    front = await start_router(router)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url_of(front), json={"data": {"ndarray": [["secret-token-123"]]}}) as resp:
                assert resp.status == 200
            for _ in range(50):
                if router.writer.failures:
                    break
                await asyncio.sleep(0.1)
            assert router.writer.failures
            async with session.get(str(front.make_url("/health"))) as resp:
                text = await resp.text()
        assert "secret-token-123" not in text
        scoring = json.loads(text)["scoring"]
        assert all(isinstance(v, int) for v in scoring.values()), scoring
    finally:
        await front.close()
        await good.close()
