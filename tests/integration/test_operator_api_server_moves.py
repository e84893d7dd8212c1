"""An operator still running when the embedded API server comes back on another port (its port
was taken meanwhile) finds it again through the kubeconfig, and reconciles what is created there."""

from __future__ import annotations

import socket

import pytest

from cdl.devcluster import process
from tests.integration.test_operator_core import dpl, engines
from tests.plugins.operator import ROOT, running_operator, wait_for

pytestmark = pytest.mark.slow
PATH = "/apis/cdl.dev/v1alpha1/namespaces/default/datapipelines"


def _status(info: process.ServerInfo, name: str) -> dict:
    code, obj = process.request(f"{info.url}{PATH}/{name}", info.token, ca_file=info.ca_file)
    return (obj.get("status") or {}) if code == 200 else {}


def test_the_operator_follows_the_api_server_to_a_new_port(tmp_path) -> None:
    api = tmp_path / "api"
    info = process.start_background(api, crds_dir=ROOT / "crds")
    overrides, *_ = engines(tmp_path)
    holder = None
    try:
        with running_operator(info, tmp_path / "state", overrides):
            assert process.request(f"{info.url}{PATH}", info.token, "POST", dpl("before"), ca_file=info.ca_file)[0] == 201
            wait_for(lambda: _status(info, "before").get("phase"), 30, "the first DataPipeline's status")

            process.stop(api)
            holder = socket.socket()  # someone else took the port meanwhile
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind(("127.0.0.1", info.port))
            holder.listen()
            moved = process.start_background(api, crds_dir=ROOT / "crds")
            assert moved.port != info.port

            code, _ = process.request(f"{moved.url}{PATH}", moved.token, "POST", dpl("after"), ca_file=moved.ca_file)
            assert code == 201
            st = wait_for(lambda: _status(moved, "after").get("phase"), 60, "the DataPipeline created after the move")
            assert st
    finally:
        if holder is not None:
            holder.close()
        process.stop(api)
