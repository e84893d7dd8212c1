"""The local serving engine: seldon-core-microservice processes behind a router per Deployment.

`LocalServingEngine` (engine.py) implements `cdl.engines.base.ServingEngine`; `venv.py` builds the
seldon environment, `microservice.py` runs one model server, `router.py` is the per-Deployment
router, and `client.py` the small client `cdl predict` uses. Imported lazily, so the router
process does not load the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdl.engines.serving.local.engine import LocalServingEngine

__all__ = ["LocalServingEngine"]


def __getattr__(name: str) -> Any:
    if name == "LocalServingEngine":
        from cdl.engines.serving.local.engine import LocalServingEngine

        return LocalServingEngine
    raise AttributeError(name)
