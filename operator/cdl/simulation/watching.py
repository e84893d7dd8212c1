"""The watch loop the fake cluster controllers share (the Seldon controller, the Job controller).

A real controller follows its objects through a watch that resumes from the last resourceVersion
and lists again when the watch drops (410, an API server restart); so do the fakes, with the
short server-side timeout that lets them notice `stop` within a second.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def follow(stop: threading.Event, list_fn: Callable[..., Any], *args: Any,
           handle: Callable[[str, Any], None], version_of: Callable[[Any], str | None]) -> None:
    """Hand every event of `list_fn(*args)`'s watch to `handle(type, object)` until `stop`."""
    from kubernetes import watch

    resource_version = ""
    while not stop.is_set():
        w = watch.Watch()
        try:
            kwargs: dict[str, Any] = {"timeout_seconds": 1}
            if resource_version:
                kwargs["resource_version"] = resource_version
            for event in w.stream(list_fn, *args, **kwargs):
                if stop.is_set():
                    break
                obj = event["object"]
                resource_version = version_of(obj) or resource_version
                handle(event["type"], obj)
        except Exception:  # noqa: BLE001 - a dropped watch (410, server restart): list again
            resource_version = ""
            stop.wait(0.2)
        finally:
            w.stop()
