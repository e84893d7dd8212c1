"""The local serving engine with the real seldon-core microservice, the router and PostgreSQL.

One Deployment (`main`: toy-1 primary 90 % on torch, toy-2 canary 10 %, toy-3 shadow) is shared by
most tests; the tests that kill, break or replace servers get Deployments of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import numpy as np
import pytest

from cdl.engines.base import ResourceKey, ServingRequest
from cdl.engines.serving.local.client import PredictionError, predict, predictions
from cdl.quality.monitoring import summarize
from tests.fixtures.serving.build import CLASSES, PREDICTOR, sample
from tests.plugins.serving import served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def main_deployment(serving_deploy, serving_packages) -> tuple[ResourceKey, Any]:
    p = serving_packages
    # the primary runs torch in the seldon environment; the canary and shadow the numpy twin
    return serving_deploy("main", [served(p["v1"], "primary", 90, PREDICTOR), served(p["v2"], "canary", 10),
                                   served(p["v3"], "shadow", 0)])


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def drained(url: str) -> None:
    """Wait until the router has written every scoring row and finished every shadow copy."""
    import urllib.request

    def idle() -> bool:
        with urllib.request.urlopen(url.replace("/api/v1.0/predictions", "/health"), timeout=5) as resp:
            health = json.loads(resp.read())
        return health["scoring"]["queued"] == 0 and health["shadow_inflight"] == 0

    wait_for(idle, 30, "the router to write its queued scoring rows")


def rows_of(x: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in x]


async def load(url: str, bodies: list[bytes], concurrency: int) -> list[tuple[int, str, dict[str, Any]]]:
    """Send every body with `concurrency` clients; (status, model version header, answer) each."""
    results: list[tuple[int, str, dict[str, Any]]] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    answer = await resp.json(content_type=None)
                    results.append((resp.status, resp.headers.get("X-Cdl-Model-Version", ""), answer))
            except aiohttp.ClientError as exc:
                results.append((0, "", {"error": str(exc)}))

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results


def bodies_for(x: np.ndarray) -> list[bytes]:
    return [json.dumps({"data": {"ndarray": [row]}}).encode() for row in rows_of(x)]


# --------------------------------------------------------------------------- serving


def test_serves_the_trained_model_end_to_end(main_deployment, serving_engine, serving_post) -> None:
    key, status = main_deployment
    assert status.state == "Available"
    assert status.url.startswith("http://127.0.0.1:") and status.url.endswith("/api/v1.0/predictions")
    assert (status.desired, status.ready) == (1, 1)
    x, y = sample(60, seed=11)
    code, answer, headers = serving_post(status.url, {"data": {"ndarray": rows_of(x)}})
    assert code == 200, answer
    labels = answer["data"]["ndarray"]
    accuracy = np.mean([CLASSES.index(label) == truth for label, truth in zip(labels, y, strict=True)])
    assert accuracy >= 0.9
    assert headers["X-Cdl-Model-Version"] in ("toy-1", "toy-2")
    assert set(answer["meta"]["requestPath"].values()) <= {"toy-1", "toy-2"}


def test_cdl_predict_client(main_deployment) -> None:
    _, status = main_deployment
    answer = predict(status.url, [[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    assert predictions(answer) == ["alpha", "gamma"]
    with pytest.raises(PredictionError) as err:
        predict(status.url, [[1.0, 2.0]])
    assert err.value.status == 400 and "shape [4]" in err.value.message


def test_canary_gets_its_share_of_1000_requests(main_deployment) -> None:
    _, status = main_deployment
    x, _ = sample(1000, seed=3)
    results = asyncio.run(load(status.url, bodies_for(x), concurrency=4))
    assert all(code == 200 for code, _, _ in results)
    split = Counter(version for _, version, _ in results)
    assert set(split) == {"toy-1", "toy-2"}
    assert abs(split["toy-2"] - 100) <= 20, split  # 10 % canary, within 2 points


def test_1000_requests_from_10_concurrent_clients_without_error(main_deployment) -> None:
    _, status = main_deployment
    x, _ = sample(1000, seed=4)
    results = asyncio.run(load(status.url, bodies_for(x), concurrency=10))
    assert len(results) == 1000
    errors = [r for r in results if r[0] != 200]
    assert not errors, errors[:3]
    assert all(r[2]["data"]["ndarray"][0] in CLASSES for r in results)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty request body"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (b'{"instances": [[1, 2, 3, 4]]}', 'must hold "data"'),
        (b'{"data": {"ndarray": "abc"}}', "must be a list"),
        (b'{"data": {"ndarray": []}}', "is empty"),
        (b'{"data": {"ndarray": [[1, 2, 3, 4], [1, 2]]}}', "differ in length"),
        (b'{"data": {"ndarray": [[1, 2, 3, 4], "text"]}}', "mixes"),
        (b'{"data": {"tensor": {"shape": [1, 4], "values": [1, 2]}}}', "needs 4"),
        (b'{"data": {"ndarray": [[1, 2, 3]]}}', "shape [4], got [3]"),
        (b'{"data": {"ndarray": [["a", "b", "c", "d"]]}}', "not an array of numbers"),
        (b'{"data": {"ndarray": ["some text"]}}', "takes numbers"),
        (b'{"data": {"ndarray": [[[1, 2], [3, 4]]]}}', "shape [4], got [2, 2]"),
    ],
)
def test_malformed_requests_get_400_with_a_clear_message(main_deployment, serving_post, body, expected) -> None:
    _, status = main_deployment
    code, answer, _ = serving_post(status.url, body)
    assert code == 400, answer
    assert expected in answer["status"]["info"]
    code, _, _ = serving_post(status.url, {"data": {"ndarray": [[3, 0, 0, 0]]}})
    assert code == 200  # the router is still up and serving


# --------------------------------------------------------------------------- scoring data and shadow


def test_scoring_rows_match_the_requests_and_the_shadow_gets_copies(main_deployment, serving_database,
                                                                     serving_post) -> None:
    key, status = main_deployment
    drained(status.url)
    serving_database.delete_scoring_rows(key.namespace, key.name)
    x, _ = sample(40, seed=21)
    sent = rows_of(x)
    answers = []
    for row in sent:
        code, answer, headers = serving_post(status.url, {"data": {"ndarray": [row]}})
        assert code == 200
        assert headers["X-Cdl-Model-Version"] != "toy-3"  # clients never see the shadow
        answers.append((row, headers["X-Cdl-Model-Version"], answer["data"]["ndarray"]))

    def complete() -> list[Any]:
        rows = serving_database.scoring_window(key.namespace, key.name, 1000)
        return rows if len(rows) >= 2 * len(sent) else []

    rows = wait_for(complete, 20, "80 scoring rows (40 live, 40 shadow)")
    live = [r for r in rows if not r.shadow]
    shadow = [r for r in rows if r.shadow]
    assert len(live) == len(shadow) == len(sent)
    assert {r.model_version for r in shadow} == {"toy-3"}
    by_input = {json.dumps(r.request["data"]["ndarray"][0]): r for r in live}
    for row, version, labels in answers:
        stored = by_input[json.dumps(row)]
        assert stored.model_version == version
        assert stored.status_code == 200 and stored.error is None
        assert stored.response["data"]["ndarray"] == labels
        assert 0 < stored.latency_ms < 5000
        assert stored.created_at is not None
    assert {json.dumps(r.request["data"]["ndarray"][0]) for r in shadow} == set(by_input)


def test_a_dead_shadow_does_not_affect_clients(main_deployment, serving_engine, serving_post) -> None:
    key, status = main_deployment
    shadow = [pid for sid, pid in serving_engine.server_pids(key).items() if sid.startswith("toy-3")]
    assert shadow
    os.killpg(shadow[0], signal.SIGKILL)
    for _ in range(20):
        code, answer, headers = serving_post(status.url, {"data": {"ndarray": [[3, 0, 0, 0]]}})
        assert code == 200 and headers["X-Cdl-Model-Version"] in ("toy-1", "toy-2"), answer
    assert serving_engine.wait_available(key, 60).state == "Available"


def test_rejected_requests_are_scored_as_400(main_deployment, serving_database, serving_post) -> None:
    key, status = main_deployment
    drained(status.url)
    serving_database.delete_scoring_rows(key.namespace, key.name)
    serving_post(status.url, b"{oops")
    rows = wait_for(lambda: serving_database.scoring_window(key.namespace, key.name, 10, shadow=False), 20,
                    "the rejected request's row")
    assert rows[-1].status_code == 400 and "not valid JSON" in rows[-1].error
    summary = summarize(rows)
    assert summary.rejected == 1 and summary.errors == 0


def test_drift_found_on_shifted_inputs_only(serving_deploy, serving_packages, serving_database) -> None:
    pkg = serving_packages["v1"]
    key, status = serving_deploy("drift", [served(pkg)])
    window = 300

    def send_and_summarize(x: np.ndarray) -> Any:
        results = asyncio.run(load(status.url, bodies_for(x), concurrency=4))
        assert all(code == 200 for code, _, _ in results)
        drained(status.url)  # every row of this batch is in the database: the window holds only them
        rows = serving_database.scoring_window(key.namespace, key.name, window)
        assert len(rows) == window
        return summarize(rows, pkg.train_labels)

    steady = send_and_summarize(sample(window, seed=31)[0])
    assert steady.requests == window and steady.drift is not None
    assert steady.drift < 0.1, steady
    shifted = send_and_summarize(sample(window, seed=32, shift=1.5)[0])
    assert shifted.drift is not None and shifted.drift > 0.2, shifted
    assert shifted.observed["alpha"] > 0.6


# --------------------------------------------------------------------------- lifecycle


def test_killed_model_server_and_router_are_restarted(serving_deploy, serving_engine, serving_packages,
                                                      serving_post) -> None:
    key, status = serving_deploy("restart", [served(serving_packages["v1"])])
    (sid, pid), = serving_engine.server_pids(key).items()
    os.kill(pid, signal.SIGKILL)  # the master only: its workers are orphaned and must be cleaned up too
    restarted = wait_for(lambda: (serving_engine.server_pids(key).get(sid) or pid) != pid, 30, "a new server")
    assert restarted
    assert serving_engine.wait_available(key, 60).state == "Available"
    assert serving_post(status.url, {"data": {"ndarray": [[3, 0, 0, 0]]}})[0] == 200

    router = serving_engine.router_pid(key)
    os.killpg(router, signal.SIGKILL)
    wait_for(lambda: serving_engine.router_pid(key) not in (None, router), 30, "a new router")
    again = serving_engine.wait_available(key, 60)
    assert again.state == "Available" and again.url == status.url  # same endpoint after the restart
    assert serving_post(status.url, {"data": {"ndarray": [[3, 0, 0, 0]]}})[0] == 200
    serving_engine.delete(key)


def test_a_server_that_stops_answering_is_restarted(serving_deploy, serving_engine, serving_packages,
                                                    serving_post, monkeypatch) -> None:
    from cdl.engines.serving.local import engine as engine_module

    monkeypatch.setattr(engine_module, "HEALTH_EVERY_S", 0.5)
    monkeypatch.setattr(engine_module, "HEALTH_TIMEOUT_S", 0.5)
    monkeypatch.setattr(engine_module, "HEALTH_MISSES", 3)
    key, status = serving_deploy("hung", [served(serving_packages["v1"])])
    (sid, pid), = serving_engine.server_pids(key).items()
    os.killpg(pid, signal.SIGSTOP)  # alive, but answering nothing: a deadlocked predictor
    try:
        wait_for(lambda: (serving_engine.server_pids(key).get(sid) or pid) != pid, 30, "a replacement server")
        assert serving_engine.wait_available(key, 60).state == "Available"
        assert serving_post(status.url, {"data": {"ndarray": [[3, 0, 0, 0]]}})[0] == 200
        assert not _alive(pid)
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        serving_engine.delete(key)


def test_a_model_that_fails_to_load_is_degraded_with_the_reason(serving_deploy, serving_engine,
                                                                serving_packages) -> None:
    key, _ = serving_deploy("broken", [served(serving_packages["broken"])], wait=False)
    status = wait_for(lambda: (lambda s: s if s.state == "Degraded" else None)(serving_engine.status(key)), 90,
                      "Degraded")
    assert "failed to load" in status.message
    assert "checkpoint/weights.npz is missing" in status.message
    assert status.ready == 0
    serving_engine.delete(key)
    assert serving_engine.status(key).state == "Pending"


def test_same_models_restart_nothing_and_a_new_model_rolls_without_errors(serving_deploy, serving_engine,
                                                                           serving_packages, serving_database,
                                                                           serving_post) -> None:
    p = serving_packages
    key, status = serving_deploy("rolling", [served(p["v1"])], generation=1)
    before = serving_engine.server_pids(key)
    _, again = serving_deploy("rolling", [served(p["v1"])], generation=2)
    assert serving_engine.server_pids(key) == before and again.url == status.url

    # a sample rate of 0 changes only the router: no server restarts, no new rows
    serving_database.delete_scoring_rows(key.namespace, key.name)
    serving_deploy("rolling", [served(p["v1"])], generation=3, sample_rate=0.0)
    assert serving_engine.server_pids(key) == before
    wait_for(lambda: serving_engine._deployments[key.slug].state.router.confirmed_version
             >= serving_engine._deployments[key.slug].state.router.written_version, 10, "the router to reload")
    for _ in range(10):
        assert serving_post(status.url, {"data": {"ndarray": [[3, 0, 0, 0]]}})[0] == 200

    # roll to toy-2 while a client keeps sending: every request answered
    async def during_roll() -> Counter[str]:
        seen: Counter[str] = Counter()
        async with aiohttp.ClientSession() as session:
            serving_engine.apply(ServingRequest(key=key, generation=4, models=[served(p["v2"])], sample_rate=0.0))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                async with session.post(status.url, json={"data": {"ndarray": [[3, 0, 0, 0]]}}) as resp:
                    seen[f"{resp.status} {resp.headers.get('X-Cdl-Model-Version')}"] += 1
                if seen["200 toy-2"] >= 20:
                    break
        return seen

    seen = asyncio.run(during_roll())
    assert set(seen) <= {"200 toy-1", "200 toy-2"}, seen
    assert seen["200 toy-2"] >= 20
    assert serving_engine.wait_available(key, 60).state == "Available"
    wait_for(lambda: all(sid.startswith("toy-2") for sid in serving_engine.server_pids(key)), 40,
             "the old server to be stopped")
    for pid in before.values():
        assert not _alive(pid)
    assert not serving_database.scoring_window(key.namespace, key.name, 10)  # sample rate 0 until now
    serving_engine.delete(key)


def test_a_new_engine_adopts_running_servers(tmp_path, seldon_venv, serving_packages, serving_post) -> None:
    from cdl.engines.serving.local import LocalServingEngine

    key = ResourceKey("serving-test", "adopt")
    first = LocalServingEngine(tmp_path / "serving", venv_dir=seldon_venv, poll_seconds=0.2)
    second = None
    try:
        first.apply(ServingRequest(key=key, generation=1, models=[served(serving_packages["v1"])]))
        status = first.wait_available(key, 90)
        assert status.state == "Available"
        pids, router = first.server_pids(key), first.router_pid(key)
        first.close()  # the operator goes away; its servers keep running

        second = LocalServingEngine(tmp_path / "serving", venv_dir=seldon_venv, poll_seconds=0.2)
        adopted = second.wait_available(key, 30)
        assert adopted.state == "Available" and adopted.url == status.url
        assert second.server_pids(key) == pids and second.router_pid(key) == router
        assert serving_post(status.url, {"data": {"ndarray": [[0, 3, 0, 0]]}})[1]["data"]["ndarray"] == ["beta"]
        # a server that died while no operator watched is restarted by the new one
        os.killpg(next(iter(pids.values())), signal.SIGKILL)
        wait_for(lambda: second.server_pids(key) and second.server_pids(key) != pids, 30, "a restart")
        assert second.wait_available(key, 60).state == "Available"
    finally:
        (second or first).delete(key)
        (second or first).close()
        first.close(stop_servers=True)
    assert not _alive(router)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_deployment_stopped_with_the_platform_comes_back_at_the_same_url(tmp_path, seldon_venv, serving_packages,
                                                                           serving_post) -> None:
    """`cdl down` stops every router and model server (close(stop_servers=True)); the engine of the
    next `cdl up` serves the Deployment again at the URL clients already have, and does not say
    Available before that URL answers."""
    from cdl.engines.serving.local import LocalServingEngine

    key = ResourceKey("serving-test", "down-up")
    first = LocalServingEngine(tmp_path / "serving", venv_dir=seldon_venv, poll_seconds=0.2)
    second = None
    try:
        first.apply(ServingRequest(key=key, generation=1, models=[served(serving_packages["v1"])]))
        status = first.wait_available(key, 90)
        assert status.state == "Available"
        router = first.router_pid(key)
        first.close(stop_servers=True)
        assert not _alive(router)

        second = LocalServingEngine(tmp_path / "serving", venv_dir=seldon_venv, poll_seconds=0.2)
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = second.status(key)
            seen.append(now.state)
            if now.state == "Available":
                break
            time.sleep(0.05)
        assert now.state == "Available" and now.url == status.url
        assert seen[0] != "Available"  # not before the router answers again
        assert serving_post(now.url, {"data": {"ndarray": [[0, 3, 0, 0]]}})[0] == 200
    finally:
        (second or first).delete(key)
        (second or first).close()


def test_model_servers_and_router_listen_on_loopback_only(main_deployment, serving_engine) -> None:
    """The router is the only door: no model server, metrics port or router is reachable from
    another machine (requests sent around the router would never be logged)."""
    import ipaddress

    import psutil

    key, _ = main_deployment
    dep = serving_engine._deployments[key.slug]
    ports = {dep.state.router.port, dep.state.router.grpc_port}
    for server in dep.state.servers.values():
        ports |= {server["http_port"], server["grpc_port"], server["metrics_port"]}
    listening = [c for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port in ports]
    assert {c.laddr.port for c in listening} == ports
    def loopback(ip: str) -> bool:  # gRPC listens on an IPv6 socket: 127.0.0.1 appears as ::ffff:127.0.0.1
        address = ipaddress.ip_address(ip)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback

    assert all(loopback(c.laddr.ip) for c in listening), listening
