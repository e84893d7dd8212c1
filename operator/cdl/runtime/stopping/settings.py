"""`searcher.earlyStopping` as the rules read it, parsed from its wire form (camelCase JSON, the
value of `CDL_EARLY_STOPPING` in a trial). The operator validates the spec with pydantic first;
this parser only reads what already passed, with the same defaults."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

RESOURCE_NAMES = {"cpuSeconds": "cpu_seconds", "wallSeconds": "wall_seconds", "peakMemory": "peak_rss_bytes",
                  "gpuMemory": "gpu_peak_bytes"}


def parse_quantity(text: str | int | float) -> int:
    """Bytes of a Kubernetes quantity such as 512Mi, 4Gi, 1G, 1e9."""
    s = str(text).strip()
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    decimal = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 1e-3}
    for suffix, factor in binary.items():
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * factor)
    if s and s[-1] in decimal:
        return int(float(s[:-1]) * decimal[s[-1]])
    return int(float(s))


def human_bytes(n: float) -> str:
    """1.1 GiB, 1 GiB, 612 MiB: how budgets read in stop reasons."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            value = n / factor
            return f"{value:.1f}".rstrip("0").rstrip(".") + f" {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class PredictSettings:
    min_completed_trials: int = 1
    min_validations: int = 1
    quantile: float = 1.0  # 1.0: stop what cannot beat the best completed trial
    confidence: float = 0.5


@dataclass(frozen=True)
class MedianSettings:
    min_completed_trials: int = 3
    warmup_validations: int = 2


@dataclass(frozen=True)
class ResourceSettings:
    resource: str = "cpu_seconds"  # a Point attribute
    factor: float = 3.0
    min_completed_trials: int = 3
    warmup_validations: int = 2

    @property
    def wire_name(self) -> str:
        return {v: k for k, v in RESOURCE_NAMES.items()}[self.resource]


@dataclass(frozen=True)
class StoppingSettings:
    patience: int | None = None
    min_delta: float = 0.0
    max_trial_seconds: float | None = None
    max_trial_memory: int | None = None  # bytes
    predict: PredictSettings | None = None
    median: MedianSettings | None = None
    resources: ResourceSettings | None = None

    @classmethod
    def from_wire(cls, raw: dict[str, Any] | str | None) -> StoppingSettings:
        if raw is None or raw == "":
            return cls()
        if isinstance(raw, str):
            raw = json.loads(raw)
        assert isinstance(raw, dict)
        predict = raw.get("predict")
        median = raw.get("median")
        resources = raw.get("resources")
        return cls(
            patience=raw.get("patience"),
            min_delta=float(raw.get("minDelta", 0.0)),
            max_trial_seconds=raw.get("maxTrialSeconds"),
            max_trial_memory=parse_quantity(raw["maxTrialMemory"]) if raw.get("maxTrialMemory") else None,
            predict=None if predict is None else PredictSettings(
                min_completed_trials=int(predict.get("minCompletedTrials", PredictSettings.min_completed_trials)),
                min_validations=int(predict.get("minValidations", PredictSettings.min_validations)),
                quantile=float(predict.get("quantile", PredictSettings.quantile)),
                confidence=float(predict.get("confidence", PredictSettings.confidence)),
            ),
            median=None if median is None else MedianSettings(
                min_completed_trials=int(median.get("minCompletedTrials", 3)),
                warmup_validations=int(median.get("warmupValidations", 2)),
            ),
            resources=None if resources is None else ResourceSettings(
                resource=RESOURCE_NAMES[resources.get("resource", "cpuSeconds")],
                factor=float(resources.get("factor", 3.0)),
                min_completed_trials=int(resources.get("minCompletedTrials", 3)),
                warmup_validations=int(resources.get("warmupValidations", 2)),
            ),
        )

    @property
    def compares(self) -> bool:
        """Whether a rule needs the other trials' curves."""
        return any(x is not None for x in (self.predict, self.median, self.resources))
