"""kill -9 of the API server during 1,000 creates loses no acknowledged write, and it comes back
on the same port (the writers' kubeconfig keeps working)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from cdl.devcluster import process
from cdl.devcluster.tls import client_context

pytestmark = pytest.mark.slow
PATH = "/api/v1/namespaces/default/configmaps"
CREATES = 1000
KILLS = 3


def _create(url: str, token: str, ca, name: str) -> int:
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": name}})
    request = urllib.request.Request(f"{url}{PATH}", data=body.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10, context=client_context(ca)) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # the server is down: try again


def test_kill_9_during_1000_creates_loses_no_acknowledged_write(tmp_path) -> None:
    info = process.start_background(tmp_path)
    acknowledged: list[str] = []
    retries = 0
    done = threading.Event()

    def writer() -> None:
        nonlocal retries
        for i in range(CREATES):
            name = f"cm-{i:04d}"
            while True:
                code = _create(info.url, info.token, info.ca_file, name)
                if code in (201, 409):  # 409: written by an attempt whose answer the kill cut off
                    if code == 201:
                        acknowledged.append(name)
                    break
                retries += 1
                time.sleep(0.05)
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    ports = [info.port]
    try:
        for kill in range(KILLS):
            while len(acknowledged) < (kill + 1) * CREATES // (KILLS + 1) and not done.is_set():
                time.sleep(0.01)
            running = process.read_status(tmp_path)
            os.killpg(running.pid, signal.SIGKILL)
            os.waitpid(running.pid, 0)
            ports.append(process.start_background(tmp_path).port)
        assert done.wait(300), f"only {len(acknowledged)} creates acknowledged"
        info = process.read_status(tmp_path)
        code, listing = process.request(f"{info.url}{PATH}", info.token, ca_file=info.ca_file)
        stored = {item["metadata"]["name"] for item in listing["items"]}
    finally:
        process.stop(tmp_path)
    print(f"\nAPI server killed {KILLS} times during {CREATES} creates: {len(acknowledged)} acknowledged, "
          f"{len(stored)} stored, {retries} retried requests, ports {ports}")
    assert code == 200 and set(acknowledged) <= stored
    assert len(stored) == CREATES
    assert ports == [ports[0]] * (KILLS + 1)
