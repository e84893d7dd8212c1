"""Early stopping enforced inside the trial, where no engine driver watches it (Determined).

On a Determined cluster the master runs only its own searcher; cdl's rules (patience, budgets,
median, predictive, resource comparison) travel to the trial as `CDL_EARLY_STOPPING` (the
`searcher.earlyStopping` object), with `CDL_METRIC`, `CDL_SMALLER_IS_BETTER` and
`CDL_MAX_LENGTH`. `install_from_env()` wraps Determined's on-cluster contexts: each validation
report feeds the guard, and once a rule decides, the preemption watcher answers True, so the
trial checkpoints and exits cleanly at its next `should_preempt()` (every rank, through the
chief's broadcast), as it would when the master preempts it. The reason is printed to the trial
log (`cdl: early stop: ...`), set as the trial's runner state and reported as metrics of the group
`cdl_early_stopping` (`stopped: 1`, `reason: "..."`), where the Determined engine reads it back;
locally it is emitted as an `early_stop` event. The comparing rules read the other trials'
validation curves of this experiment from the master (`GetExperimentTrials`,
`GetValidationMetrics`).

Under the local engine nothing is installed: its driver applies the same rules.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from cdl.runtime.env import ENV_EARLY_STOPPING, ENV_MAX_LENGTH, ENV_METRIC, ENV_SMALLER_IS_BETTER, ENV_STOP
from cdl.runtime.stopping.curves import Curve, Point, gpu_peak_bytes, metric_lookup
from cdl.runtime.stopping.rules import Decision, StoppingRules
from cdl.runtime.stopping.settings import StoppingSettings

logger = logging.getLogger("cdl.trial")

ENV_LOCAL_STOP = ENV_STOP  # set by the local engine, whose driver applies the rules itself
METRICS_GROUP = "cdl_early_stopping"

PeerSource = Callable[[], list[Curve]]


def _own_resources() -> dict[str, float]:
    """CPU seconds, wall seconds and peak RSS of this process and its children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_seconds": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        "peak_rss_bytes": float(max(me.ru_maxrss, kids.ru_maxrss) * 1024),  # KiB on Linux
    }


class TrialGuard:
    """The rules applied to this trial's own validations."""

    def __init__(self, rules: StoppingRules, *, trial_id: str = "self", peers: PeerSource | None = None,
                 peer_refresh_seconds: float = 30.0) -> None:
        self.rules = rules
        self.trial_id = trial_id
        self.peers = peers
        self.peer_refresh_seconds = peer_refresh_seconds
        self.started = time.time()
        self.curve = Curve(trial_id)
        self.decision: Decision | None = None
        self._peer_cache: tuple[float, list[Curve]] | None = None
        self._noted: set[str] = set()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, peers: PeerSource | None = None) -> TrialGuard | None:
        env = dict(os.environ if env is None else env)
        raw = env.get(ENV_EARLY_STOPPING)
        if not raw or env.get(ENV_LOCAL_STOP):
            return None
        settings = StoppingSettings.from_wire(raw)
        unit, _, value = (env.get(ENV_MAX_LENGTH) or "").partition(":")
        rules = StoppingRules(
            settings, metric=env.get(ENV_METRIC, ""),
            smaller_is_better=env.get(ENV_SMALLER_IS_BETTER, "true").lower() in ("1", "true", "yes"),
            target=float(value) if value else None, unit=unit or "epochs",
        )
        return cls(rules, trial_id=env.get("CDL_TRIAL_ID", "self"), peers=peers)

    def _peer_curves(self) -> list[Curve]:
        if self.peers is None or not self.rules.settings.compares:
            return []
        now = time.time()
        if self._peer_cache is None or now - self._peer_cache[0] >= self.peer_refresh_seconds:
            try:
                self._peer_cache = (now, self.peers())
            except Exception as exc:  # noqa: BLE001 - no peers: the comparing rules say so and wait
                logger.warning("cdl early stopping: could not read the other trials' curves: %s", exc)
                self._peer_cache = (now, [])
        return self._peer_cache[1]

    def observe(self, metrics: dict[str, Any], steps_completed: int, units: float | None = None) -> Decision | None:
        """Take in one validation report; the decision once a rule stops the trial."""
        if self.decision is not None:
            return self.decision
        value = metric_lookup(metrics, self.rules.metric)
        if units is None:
            unit_value = metrics.get(self.rules.unit)
            units = float(unit_value) if isinstance(unit_value, int | float) else float(steps_completed)
        res = _own_resources()
        self.curve.points.append(Point(units, value, res["cpu_seconds"], time.time() - self.started,
                                       res["peak_rss_bytes"], gpu_peak_bytes()))
        outcome = self.rules.check(self.curve, self._peer_curves())
        for note in outcome.notes:
            rule = note.split(":", 1)[0]
            if rule not in self._noted:
                self._noted.add(rule)
                logger.info("cdl early stopping: %s", note)
        if outcome.decision is not None:
            self.decision = outcome.decision
            logger.info("cdl early stopping: %s", outcome.decision.reason)
            from cdl.runtime import trial_events

            trial_events.emit("early_stop", rule=outcome.decision.rule, reason=outcome.decision.reason,
                              units=outcome.decision.units, **outcome.decision.detail)
        return self.decision

    def stop_reason(self) -> str | None:
        """Why the trial should stop now (a decision, or the wall-time budget), else None."""
        if self.decision is not None:
            return self.decision.reason
        return self.rules.wall_budget(time.time() - self.started)


def determined_peers(session: Any, experiment_id: int, own_trial_id: int, unit: str) -> PeerSource:
    """The completed trials of this experiment and their validation curves, from the master."""

    def read() -> list[Curve]:
        from determined.common.api import bindings, read_paginated

        pages = read_paginated(lambda offset: bindings.get_GetExperimentTrials(
            session, experimentId=experiment_id, offset=offset))
        done = [t.id for page in pages for t in page.trials
                if t.id != own_trial_id and t.state == bindings.trialv1State.COMPLETED]
        if not done:
            return []
        metric = os.environ.get(ENV_METRIC, "")
        curves: dict[int, list[Point]] = {t: [] for t in done}
        for resp in bindings.get_GetValidationMetrics(session, trialIds=done):
            for m in resp.metrics:
                # the master keeps a validation's metrics under validation_metrics
                metrics = (m.metrics or {}).get("validation_metrics") or {}
                units = metrics.get(unit, m.totalBatches)
                curves[m.trialId].append(Point(float(units), metric_lookup(metrics, metric)))
        return [Curve(str(t), sorted(points, key=lambda p: p.units), True) for t, points in curves.items()]

    return read


_GUARD: TrialGuard | None = None
_TRAIN: Any = None  # the trial's TrainContext, seen at its first report
_LAST_STEPS = 0
_RECORDED = False


def install_from_env() -> TrialGuard | None:
    """Wrap Determined's on-cluster train and preemption contexts with the guard (idempotent;
    nothing happens without `CDL_EARLY_STOPPING` or under the local engine).

    Validation reports feed the guard; `should_preempt()` also answers True once a rule fired
    (the chief decides; with WorkersAskChief every rank gets the chief's answer, as Determined does
    for its own preemption)."""
    global _GUARD
    if _GUARD is not None:
        return _GUARD
    guard = TrialGuard.from_env()
    if guard is None:
        return None
    _GUARD = guard
    from cdl.runtime import determined_private as private

    train_cls = private.train_context()
    original_report = train_cls._report_trial_metrics

    def report_trial_metrics(self: Any, group: str, steps_completed: int, metrics: dict[str, Any],
                             batch_metrics: Any = None) -> None:
        global _LAST_STEPS, _TRAIN
        original_report(self, group, steps_completed, metrics, batch_metrics)
        _TRAIN = self
        if group == "validation" and _GUARD is not None:
            _LAST_STEPS = max(_LAST_STEPS, int(steps_completed))
            if _GUARD.peers is None and _GUARD.rules.settings.compares:
                _GUARD.peers = _cluster_peers(self, _GUARD.rules.unit)
            _GUARD.observe(metrics, steps_completed)

    train_cls._report_trial_metrics = report_trial_metrics  # type: ignore[method-assign]
    preempt_cls = private.preempt_context()
    original_preempt = preempt_cls.should_preempt
    mode_enum = private.preempt_mode()

    def should_preempt(self: Any, auto_ack: bool = True) -> bool:
        if original_preempt(self, auto_ack):
            return True
        dist, mode = self._dist, self._preempt_mode
        chief = dist.rank == 0
        fired = chief and _GUARD is not None and _GUARD.stop_reason() is not None
        if mode == mode_enum.WorkersAskChief and dist.size > 1:
            fired = bool(dist.broadcast(fired if chief else None))
        if fired and chief:
            _record()
        return fired

    preempt_cls.should_preempt = should_preempt  # type: ignore[method-assign]
    return guard


def _record() -> None:
    """Say once why the trial stops: the log, the trial's runner state, a metrics group."""
    global _RECORDED
    if _RECORDED or _GUARD is None:
        return
    reason = _GUARD.stop_reason()
    if reason is None:
        return
    _RECORDED = True
    print(f"cdl: early stop: {reason}", file=sys.stderr, flush=True)
    if _TRAIN is None:
        return
    try:
        _TRAIN.set_status(reason)
        _TRAIN._report_trial_metrics(METRICS_GROUP, _LAST_STEPS, {"stopped": 1, "reason": reason})
    except Exception as exc:  # noqa: BLE001 - the stop itself must not fail on a reporting error
        print(f"cdl: could not report the early stop to the master: {exc}", file=sys.stderr, flush=True)


def _cluster_peers(train_context: Any, unit: str) -> PeerSource | None:
    try:
        import determined as det

        info = det.get_cluster_info()
        if info is None or info.trial is None:
            return None
        return determined_peers(train_context._session, info.trial.experiment_id, info.trial.trial_id, unit)
    except Exception as exc:  # noqa: BLE001 - comparing rules then wait, and say so
        logger.warning("cdl early stopping: no access to the other trials: %s", exc)
        return None
