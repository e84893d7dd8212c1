"""`cdl dashboard`: open the knowledge base's dashboard through the Kubernetes API."""

from __future__ import annotations

import asyncio
import os
import secrets

import typer

from cdl.cli.common import EXIT_USER, console, err_console
from cdl.cli.experiments import KBServiceOption
from cdl.cli.kube import KubeconfigOption, kubeconfig_path


def dashboard(
    port: int = typer.Option(8765, "--port", "-p", help="Local port (0: any free port)."),
    address: str = typer.Option("127.0.0.1", "--address", help="Listen address; anything but loopback needs --token."),
    token: str = typer.Option(None, "--token", envvar="CDL_DASHBOARD_TOKEN",
                              help="Token a browser must present (required off loopback); 'generate' makes one."),
    open_browser: bool = typer.Option(False, "--open", help="Open the dashboard in the default browser."),
    kubeconfig: str = KubeconfigOption,
    kb_service: str = KBServiceOption,
) -> None:
    """Serve the dashboard on 127.0.0.1: a local gateway to the Kubernetes API (like `kubectl proxy`)
    with your kubeconfig's credentials; promote and deploy act under your own permissions.

    Example: cdl dashboard --open
    """
    from cdl.errors import CdlError
    from cdl.kb.gateway import Upstream, dashboard_path, serve

    if token == "generate":
        token = secrets.token_urlsafe(24)
    try:
        path = dashboard_path(kb_service)
        upstream = Upstream.from_kubeconfig(kubeconfig_path(kubeconfig))
    except CdlError as exc:
        err_console.print(str(exc))
        raise typer.Exit(EXIT_USER)

    async def main() -> None:
        try:
            runner, bound = await serve(upstream, address, port, token, os.environ.get("CDL_KB_TOKEN"))
        except CdlError as exc:
            err_console.print(str(exc))
            raise typer.Exit(EXIT_USER)
        shown = "127.0.0.1" if address in ("0.0.0.0", "::") else address
        url = f"http://{shown}:{bound}{path}" + (f"?token={token}" if token else "")
        console.print(f"dashboard: {url}\n(API server {upstream.server}; Ctrl-C stops)", highlight=False)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)
