"""The local training engine: Experiments as trial processes on this machine (see engine.py)."""

from cdl.engines.local.training.engine import LocalTrainingEngine, compare, logs, read_status, run_id_for
from cdl.engines.local.training.runner import DriverSettings

__all__ = ["DriverSettings", "LocalTrainingEngine", "compare", "logs", "read_status", "run_id_for"]
