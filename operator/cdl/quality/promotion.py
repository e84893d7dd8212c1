"""Review and promotion: which stage changes moving one model version to a new stage implies.

Pure rules over the versions of one registered model; the reconciler and the CLI apply the
returned changes to the ModelVersion resources, the registry engine and PostgreSQL.

- Stages: candidate -> staging -> production, and archived. Any version may go back to
  candidate or be archived; an archived version may be promoted again (rollback).
- production needs a passed evaluation gate: the version was evaluated, had at least one gate,
  and all its gates passed. A version whose gates failed cannot go to staging either.
- Only one version of a model is in production: promoting one archives the one there before.
- A refused promotion raises `PromotionRefused` (an `InvalidSpec` on `spec.stage`: nothing is
  retried until the spec changes) with a message saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cdl.api.modelversion import STAGES
from cdl.errors import InvalidSpec


class PromotionRefused(InvalidSpec):
    """The requested stage change breaks a promotion rule."""

    reason = "PromotionRefused"


@dataclass(frozen=True)
class VersionState:
    """What promotion needs to know about one version of a model."""

    version: int
    stage: str = "candidate"
    gates_passed: bool | None = None  # None: not evaluated (yet)
    gates: int = 0  # how many gates its evaluation applied
    failures: tuple[str, ...] = ()  # the rules of the gates that failed, for messages
    resource: str = ""  # the ModelVersion resource ("namespace/name"), when there is one


@dataclass(frozen=True)
class StageChange:
    """Move `version` (resource `resource`) from `previous` to `stage`, because `reason`."""

    version: int
    stage: str
    previous: str
    resource: str = ""
    reason: str = ""


def _refuse(model: str, state: VersionState | None, version: int, text: str) -> PromotionRefused:
    resource = (state.resource if state and state.resource else "") or f"model {model} version {version}"
    return PromotionRefused(resource, [("spec.stage", text)])


def production_blocker(state: VersionState) -> str | None:
    """Why this version cannot be in production, or None when it may."""
    if state.gates_passed is None:
        return "production needs a passed evaluation gate, and this version has not been evaluated"
    if state.gates_passed is False:
        failed = "; ".join(state.failures) or "see status.evaluation.gates"
        return f"production needs a passed evaluation gate, and its gates failed ({failed})"
    if state.gates < 1:
        return ("production needs a passed evaluation gate, and its evaluation had no gates: "
                "add one to spec.evaluation.gates")
    return None


def plan_promotion(model: str, versions: Sequence[VersionState], version: int, target: str) -> list[StageChange]:
    """The stage changes that put `version` of `model` in `target`: the version's own change
    first, then the previous production version archived. Empty when it is there already."""
    by_version = {v.version: v for v in versions}
    state = by_version.get(version)
    if target not in STAGES:
        raise _refuse(model, state, version, f"unknown stage {target!r}; allowed: {', '.join(STAGES)}")
    if state is None:
        raise _refuse(model, None, version, f"model {model} has no version {version}")
    if state.stage == target:
        return []
    if target == "production":
        blocker = production_blocker(state)
        if blocker:
            raise _refuse(model, state, version, f"cannot promote {model} version {version} to production: {blocker}")
    if target == "staging" and state.gates_passed is False:
        failed = "; ".join(state.failures) or "see status.evaluation.gates"
        raise _refuse(model, state, version,
                      f"cannot move {model} version {version} to staging: it was rejected by its gates ({failed})")
    changes = [StageChange(version, target, state.stage, state.resource, f"requested {target}")]
    if target == "production":
        for other in sorted(versions, key=lambda v: v.version):
            if other.version != version and other.stage == "production":
                changes.append(StageChange(other.version, "archived", "production", other.resource,
                                           f"replaced in production by version {version}"))
    return changes
