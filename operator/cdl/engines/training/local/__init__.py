"""The local training engine: Experiments as trial processes on this machine (see engine.py)."""

from cdl.engines.training.local.engine import LocalTrainingEngine, compare, logs, read_status, run_id_for
from cdl.engines.training.local.runner import DriverSettings

__all__ = ["DriverSettings", "LocalTrainingEngine", "compare", "logs", "read_status", "run_id_for"]
