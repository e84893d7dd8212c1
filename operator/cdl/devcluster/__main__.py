"""`python -m cdl.devcluster serve`: the server process that `cdl up` starts in the background.

After binding it writes `<data-dir>/server.json` (pid, port, url), which is how the parent learns
a port picked by the OS; the parent then waits on /readyz.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from cdl.devcluster.auth import load_or_create_token
from cdl.devcluster.server import start_server
from cdl.files import PRIVATE_UMASK, make_private, write_atomic


def _write_state(data_dir: Path, host: str, port: int, url: str, ca_file: Path | None) -> None:
    state = {"pid": os.getpid(), "host": host, "port": port, "url": url,
             "ca_file": str(ca_file) if ca_file else None}
    write_atomic(data_dir / "server.json", json.dumps(state))


async def serve(args: argparse.Namespace) -> None:
    os.umask(PRIVATE_UMASK)  # state.db holds every Secret: nothing here is for other users
    data_dir = Path(args.data_dir).resolve()
    make_private(data_dir)
    token = load_or_create_token(Path(args.token_file) if args.token_file else data_dir / "token")
    running = await start_server(data_dir, token, args.host, args.port, args.history_size,
                                 args.bookmark_interval, args.access_log, tls=not args.insecure_http)
    _write_state(data_dir, args.host, running.port, running.url, running.ca_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("cdl.devcluster").info("stopping")
    await running.stop()
    try:
        state = json.loads((data_dir / "server.json").read_text())
        if state.get("pid") == os.getpid():
            (data_dir / "server.json").unlink()
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cdl.devcluster")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the embedded control plane in the foreground")
    s.add_argument("--data-dir", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 picks a free port")
    s.add_argument("--token-file", default="", help="default: <data-dir>/token (created if missing)")
    s.add_argument("--history-size", type=int, default=10_000, help="watch events kept for resuming")
    s.add_argument("--bookmark-interval", type=float, default=20.0)
    s.add_argument("--access-log", action="store_true")
    s.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP (kubectl then sends no token: only for token-less tests)")
    s.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
