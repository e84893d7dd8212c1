"""`seldon-core-microservice` with its HTTP, gRPC and metrics servers on 127.0.0.1 only.

seldon-core binds 0.0.0.0 and has no option for it; on one machine that would let anyone on the
network call a model server directly, skipping the router (and its Scoring Data). The local
serving engine runs `python -m cdl.runtime.microservice_loopback CdlPredictor ...` instead: the
same server, its gunicorn binds and its gRPC server's address rewritten to the loopback
interface. (In a cluster the pod network is the boundary and the image runs
seldon-core-microservice itself.)
"""

from __future__ import annotations

import os
import sys

HOST_ENV = "CDL_MICROSERVICE_HOST"


def main() -> int:
    from seldon_core import gunicorn_utils, microservice

    host = os.environ.get(HOST_ENV) or "127.0.0.1"
    load_config = gunicorn_utils.StandaloneApplication.load_config

    def loopback(self):  # type: ignore[no-untyped-def]
        load_config(self)
        self.cfg.set("bind", [b.replace("0.0.0.0:", f"{host}:", 1) for b in self.cfg.bind])

    gunicorn_utils.StandaloneApplication.load_config = loopback

    run_grpc = microservice._run_grpc_server  # looked up by name when the gRPC worker is forked

    def grpc_on_loopback(user_object, seldon_metrics, args, annotations, bind_address):  # type: ignore[no-untyped-def]
        run_grpc(user_object, seldon_metrics, args, annotations, bind_address.replace("0.0.0.0:", f"{host}:", 1))

    microservice._run_grpc_server = grpc_on_loopback
    sys.argv[0] = "seldon-core-microservice"
    return microservice.main() or 0


if __name__ == "__main__":
    raise SystemExit(main())
