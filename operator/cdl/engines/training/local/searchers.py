"""Search methods with Determined's semantics: single, random, grid and (adaptive) ASHA.

A searcher is asked, whenever trial slots are free, what to run next: a new trial with sampled
hyperparameters, or (ASHA) the promotion of a paused trial to a longer training length. Its
position is derived from the persisted trials alone, so a resumed run makes the same decisions.

ASHA is the asynchronous successive halving of Li et al. (Determined's adaptive_asha with one
bracket): rungs r = 0..R-1 train to maxLength / divisor^(R-1-r), where R is maxRungs or fewer
when maxTrials could not fill them (R <= 1 + log_divisor(maxTrials)); a trial that
finishes rung r pauses with a checkpoint; it is promoted (resumed from that checkpoint) when it
ranks in the top 1/divisor of all trials that reached rung r. Promotions are decided as results
arrive; when none is possible a new trial starts, while fewer than maxTrials exist. Trials never
promoted end with stop_reason "asha: not promoted at rung r".
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import cdl.engines.training.local.hparams as hp
from cdl.api.experiment import ExperimentSpec
from cdl.engines.training.local.state import PAUSED, RUNNING, SUCCEEDED, TrialState


@dataclass(frozen=True)
class NewTrial:
    hparams: dict[str, Any]
    target: int | None  # absolute training length in the searcher's unit (None: the code decides)
    rung: int | None = None


@dataclass(frozen=True)
class Promote:
    trial_id: str
    target: int
    rung: int


Action = NewTrial | Promote


def sort_key(value: float | None, smaller_is_better: bool) -> tuple[int, float]:
    """Best first; missing and NaN metrics last."""
    if value is None or math.isnan(value):
        return (1, 0.0)
    return (0, value if smaller_is_better else -value)


class SearchMethod(ABC):
    name: str

    def __init__(self, spec: ExperimentSpec) -> None:
        self.spec = spec
        self.space = spec.hyperparameters
        self.seed = spec.seed
        self.smaller_is_better = spec.searcher.smaller_is_better
        self.max_length = spec.searcher.max_length.units if spec.searcher.max_length else None
        self.unit = spec.searcher.max_length.unit if spec.searcher.max_length else "epochs"

    @abstractmethod
    def planned_trials(self) -> int: ...

    def planned_units(self) -> int | None:
        """Training units the search expects to spend (the denominator of progress)."""
        return None if self.max_length is None else self.planned_trials() * self.max_length

    def describe(self) -> str:
        length = f", {self.max_length} {self.unit} each" if self.max_length else ""
        return f"{self.name}: {self.planned_trials()} trial(s){length}"

    def next(self, trials: list[TrialState], free: int) -> list[Action]:
        """What to start now, given `free` trial slots."""
        out: list[Action] = []
        created = len(trials)
        while free > 0 and created < self.planned_trials():
            out.append(NewTrial(self.hparams_for(created), self.max_length))
            created += 1
            free -= 1
        return out

    def hparams_for(self, index: int) -> dict[str, Any]:
        return hp.sample(self.space, self.seed, index)

    def segment_done(self, trial: TrialState) -> str:
        """The trial's state after it trained to its target without being stopped."""
        return SUCCEEDED

    def finish(self, trials: list[TrialState]) -> None:  # noqa: B027 - most searchers leave nothing waiting
        """Settle trials still waiting when the search is over."""


class SingleSearch(SearchMethod):
    name = "single"

    def planned_trials(self) -> int:
        return 1


class RandomSearch(SearchMethod):
    name = "random"

    def planned_trials(self) -> int:
        return self.spec.searcher.max_trials


class GridSearch(SearchMethod):
    """Every grid point, in order; maxTrials caps the grid only when it is set explicitly."""

    name = "grid"

    def __init__(self, spec: ExperimentSpec) -> None:
        super().__init__(spec)
        self.points = hp.grid(self.space)
        if "max_trials" in spec.searcher.model_fields_set:
            self.points = self.points[: spec.searcher.max_trials]

    def planned_trials(self) -> int:
        return len(self.points)

    def hparams_for(self, index: int) -> dict[str, Any]:
        return self.points[index]


class AshaSearch(SearchMethod):
    name = "asha"

    def __init__(self, spec: ExperimentSpec) -> None:
        super().__init__(spec)
        assert self.max_length is not None  # the spec validator requires maxLength for asha
        asha = spec.searcher.asha
        self.divisor = asha.divisor if asha else 4
        max_rungs = asha.max_rungs if asha else 5
        self.max_trials = spec.searcher.max_trials
        # As Determined's adaptive ASHA: no more rungs than maxTrials can fill, so that at least
        # one trial can be promoted all the way to maxLength.
        fillable = 1 + int(math.floor(math.log(max(1, self.max_trials)) / math.log(self.divisor) + 1e-9))
        max_rungs = max(1, min(max_rungs, fillable))
        lengths = [max(1, round(self.max_length / self.divisor ** (max_rungs - 1 - r))) for r in range(max_rungs)]
        self.lengths = sorted(set(lengths))  # short maxLengths collapse the lowest rungs into one

    @property
    def top_rung(self) -> int:
        return len(self.lengths) - 1

    def planned_trials(self) -> int:
        return self.max_trials

    def planned_units(self) -> int | None:
        total, previous = 0, 0
        for r, length in enumerate(self.lengths):
            survivors = max(1, self.max_trials // self.divisor**r)
            total += survivors * (length - previous)
            previous = length
        return total

    def describe(self) -> str:
        rungs = ", ".join(str(n) for n in self.lengths)
        return f"asha: up to {self.max_trials} trial(s), divisor {self.divisor}, rungs at {rungs} {self.unit}"

    def _promotion(self, trials: list[TrialState], taken: set[str]) -> Promote | None:
        for r in range(self.top_rung - 1, -1, -1):
            reached = [t for t in trials if str(r) in t.rung_values]
            quota = len(reached) // self.divisor
            if quota == 0:
                continue
            ranked = sorted(reached, key=lambda t: sort_key(t.rung_values[str(r)], self.smaller_is_better))
            for t in ranked[:quota]:
                value = t.rung_values[str(r)]
                if value is None or math.isnan(value):
                    continue
                if t.state == PAUSED and t.rung == r and t.id not in taken:
                    return Promote(t.id, self.lengths[r + 1], r + 1)
        return None

    def next(self, trials: list[TrialState], free: int) -> list[Action]:
        out: list[Action] = []
        taken: set[str] = set()
        created = len(trials)
        while free > 0:
            promotion = self._promotion(trials, taken)
            if promotion is not None:
                taken.add(promotion.trial_id)
                out.append(promotion)
            elif created < self.max_trials:
                out.append(NewTrial(self.hparams_for(created), self.lengths[0], 0))
                created += 1
            else:
                break
            free -= 1
        return out

    def segment_done(self, trial: TrialState) -> str:
        rung = trial.rung or 0
        value = trial.validations[-1].value if trial.validations else None
        trial.rung_values[str(rung)] = value
        if rung >= self.top_rung:
            trial.stop_reason = None
            return SUCCEEDED
        trial.stop_reason = f"asha: not promoted at rung {rung}"
        return PAUSED

    def promote(self, trial: TrialState, action: Promote) -> None:
        trial.rung = action.rung
        trial.target = action.target
        trial.stop_reason = None
        trial.state = RUNNING

    def finish(self, trials: list[TrialState]) -> None:
        for t in trials:
            if t.state == PAUSED:
                t.state = SUCCEEDED
                t.stop_reason = f"asha: not promoted at rung {t.rung or 0}"


def make(spec: ExperimentSpec) -> SearchMethod:
    """The search method a spec names (raises hparams.GridError for an unenumerable grid)."""
    return {"single": SingleSearch, "random": RandomSearch, "grid": GridSearch, "asha": AshaSearch}[
        spec.searcher.name
    ](spec)
