"""Promotion rules: production needs a passed gate, one production version per model."""

from __future__ import annotations

import pytest

from cdl.errors import InvalidSpec
from cdl.quality.promotion import PromotionRefused, StageChange, VersionState, plan_promotion


def versions(*states: VersionState) -> list[VersionState]:
    return list(states)


PASSED = dict(gates_passed=True, gates=1)


def test_promoting_to_production_archives_the_previous_production_version() -> None:
    states = versions(
        VersionState(1, "archived", **PASSED, resource="ml/news-1"),
        VersionState(2, "production", **PASSED, resource="ml/news-2"),
        VersionState(3, "staging", **PASSED, resource="ml/news-3"),
    )
    changes = plan_promotion("news", states, 3, "production")
    assert [(c.version, c.stage, c.previous) for c in changes] == [(3, "production", "staging"), (2, "archived", "production")]
    assert changes[1].resource == "ml/news-2" and "replaced in production by version 3" in changes[1].reason


def test_first_production_version_archives_nothing() -> None:
    changes = plan_promotion("news", versions(VersionState(1, "candidate", **PASSED)), 1, "production")
    assert changes == [StageChange(1, "production", "candidate", "", "requested production")]


@pytest.mark.parametrize(
    ("state", "why"),
    [
        (VersionState(4, "candidate", gates_passed=None), "has not been evaluated"),
        (VersionState(4, "candidate", gates_passed=False, gates=1, failures=("accuracy >= 0.7",)),
         "its gates failed (accuracy >= 0.7)"),
        (VersionState(4, "candidate", gates_passed=True, gates=0), "add one to spec.evaluation.gates"),
    ],
)
def test_production_without_a_passed_gate_is_refused_with_the_reason(state: VersionState, why: str) -> None:
    with pytest.raises(PromotionRefused) as err:
        plan_promotion("news", versions(VersionState(2, "production", **PASSED), state), 4, "production")
    assert why in str(err.value)
    assert "spec.stage" in str(err.value) and "news version 4" in str(err.value)
    assert isinstance(err.value, InvalidSpec) and err.value.reason == "PromotionRefused"


def test_the_message_names_the_resource_when_known() -> None:
    with pytest.raises(PromotionRefused) as err:
        plan_promotion("news", [VersionState(5, resource="ml/news-5")], 5, "production")
    assert str(err.value).startswith("ml/news-5: spec.stage: cannot promote news version 5 to production")


def test_a_rejected_version_cannot_go_to_staging_but_may_be_archived() -> None:
    rejected = VersionState(2, "candidate", gates_passed=False, gates=1, failures=("accuracy >= 0.9",))
    with pytest.raises(PromotionRefused, match="rejected by its gates"):
        plan_promotion("news", [rejected], 2, "staging")
    assert plan_promotion("news", [rejected], 2, "archived")[0].stage == "archived"


def test_rollback_promotes_an_archived_version_again() -> None:
    states = versions(VersionState(1, "archived", **PASSED), VersionState(2, "production", **PASSED))
    changes = plan_promotion("news", states, 1, "production")
    assert [(c.version, c.stage) for c in changes] == [(1, "production"), (2, "archived")]


def test_same_stage_is_a_no_op_and_unknown_inputs_are_refused() -> None:
    states = versions(VersionState(1, "staging", **PASSED))
    assert plan_promotion("news", states, 1, "staging") == []
    with pytest.raises(PromotionRefused, match="unknown stage 'live'; allowed: candidate, staging, production, archived"):
        plan_promotion("news", states, 1, "live")
    with pytest.raises(PromotionRefused, match="model news has no version 9"):
        plan_promotion("news", states, 9, "staging")


def test_demoting_production_does_not_touch_other_versions() -> None:
    states = versions(VersionState(1, "production", **PASSED), VersionState(2, "staging", **PASSED))
    assert [(c.version, c.stage) for c in plan_promotion("news", states, 1, "candidate")] == [(1, "candidate")]
