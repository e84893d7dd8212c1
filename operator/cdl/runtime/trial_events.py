"""The one-way channel from a trial process to the engine that launched it: JSON lines.

Each event is one line appended with a single write (atomic for lines this short on a local
filesystem), so the engine can tail the file while the trial runs and a crashed trial never
leaves half an event behind. Without `CDL_TRIAL_EVENTS` (e.g. on a Determined cluster, which
has its own master) every call is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Any

from cdl.runtime.env import ENV_EVENTS

_LOCK = threading.Lock()


def rank() -> int:
    """This process's rank in a distributed trial (0 when not distributed)."""
    return int(os.environ.get("RANK", "0") or 0)


def _plain(value: Any) -> Any:
    """Numbers (including numpy/torch scalars) as floats; containers recursively; else str."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # "nan"/"inf" stay readable JSON
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    try:
        number = float(value)  # numpy and torch scalars, 0-d tensors
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else repr(number)


def emit(event: str, *, all_ranks: bool = False, **fields: Any) -> None:
    """Append one event (`{"event": ..., "time": ..., **fields}`); only rank 0 unless all_ranks."""
    path = os.environ.get(ENV_EVENTS)
    if not path or (rank() != 0 and not all_ranks):
        return
    record = {"event": event, "time": time.time(), **{k: _plain(v) for k, v in fields.items()}}
    if all_ranks:
        record["rank"] = rank()
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    with _LOCK:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def metric_value(raw: Any) -> float:
    """A reported metric as a float; the strings "nan"/"inf" written for non-finite values too."""
    return float(raw)
