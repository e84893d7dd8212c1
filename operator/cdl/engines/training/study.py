"""`cdl experiments study`: what each early-stopping rule would have saved or cost on a finished
search, by replaying its recorded learning curves and resource series (no new training).

The performance-tuning thesis asks how stopping on resource metrics (RQ1) and on application
metrics (RQ2) changes the computation a search needs. The replay walks the recorded trials in
creation order, as a search with one trial at a time would: at each recorded validation the rule
sees the trial's curve so far and the curves of earlier trials that completed (as replayed), and
a stop keeps the curve up to that validation. ASHA is replayed with the searcher's own promotion
logic on the same trials. Exact for a search recorded without stopping and one trial at a time;
a trial the recording itself stopped cannot be replayed past its recorded end (flagged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cdl.engines.training.curves import point, trial_completed
from cdl.runtime.stopping import Curve, StoppingRules, StoppingSettings

RULES = ("none", "patience", "budgets", "median", "predict", "resources", "asha")


@dataclass
class RecordedTrial:
    trial_id: str
    curve: Curve  # every recorded validation, with resource figures where recorded
    state: str
    stop_reason: str | None
    units_done: float
    cpu_seconds: float | None  # the trial's total, start-up included
    wall_seconds: float | None
    stopped_at: float | None = None  # where a rule decided to stop it (metadata.early_stopping.units)


@dataclass
class RecordedSearch:
    run_id: str
    spec: dict[str, Any]  # ExperimentSpec on the wire
    trials: list[RecordedTrial]

    @property
    def searcher(self) -> dict[str, Any]:
        return self.spec.get("searcher", {})

    @property
    def metric(self) -> str:
        return str(self.searcher.get("metric", ""))

    @property
    def smaller(self) -> bool:
        return bool(self.searcher.get("smallerIsBetter", False))

    @property
    def unit(self) -> str:
        length = self.searcher.get("maxLength") or {}
        return "batches" if "batches" in length else "epochs"

    @property
    def target(self) -> float | None:
        length = self.searcher.get("maxLength") or {}
        value = length.get(self.unit)
        return float(value) if value else None


# ---------------------------------------------------------------------- loading


def from_run_state(run: Any) -> RecordedSearch:
    """A local engine run (`RunState`) as a recorded search."""
    from cdl.engines.training.curves import curve_of

    trials = [
        RecordedTrial(t.id, curve_of(t), t.state, t.stop_reason, float(t.units_done), t.cpu_seconds or None,
                      t.wall_seconds or None, (t.metadata.get("early_stopping") or {}).get("units"))
        for t in run.trials
    ]
    return RecordedSearch(run.id, run.spec, trials)


def from_database(database: Any, run_id: str) -> RecordedSearch:
    """A search from the Experiment Registry: trials, validation series and resource series."""
    from cdl.errors import PermanentEngineError

    run = database.get_run(run_id)
    if run is None:
        raise PermanentEngineError(f"experiment run {run_id!r} is not recorded in the database", reason="RunNotFound")
    spec = run.spec or {}
    searcher = spec.get("searcher", {})
    metric = searcher.get("metric", "")
    unit = "batches" if "batches" in (searcher.get("maxLength") or {}) else "epochs"
    length = (searcher.get("maxLength") or {}).get(unit)
    series: dict[str, list[Any]] = {}
    for m in database.trial_metrics(run_id, kind="validation"):
        series.setdefault(m.trial_id, []).append(m)
    trials = []
    for t in database.trials(run_id):
        meta = t.metadata or {}
        by_batches = {r.get("batches"): r for r in meta.get("resources_at_validations") or []}
        points = []
        for m in series.get(t.trial_id, []):
            res = by_batches.get(m.batches)
            units = res.get("units") if res else (m.epoch if unit == "epochs" and m.epoch is not None else m.batches)
            value = _metric(m.metrics, metric)
            points.append(point(units, value, res))
        points.sort(key=lambda p: p.units)
        units_done = float(meta.get("units_done") or (points[-1].units if points else 0))
        curve = Curve(t.trial_id, points, trial_completed(t.state, t.stop_reason, units_done, length))
        trials.append(RecordedTrial(t.trial_id, curve, t.state, t.stop_reason, units_done, t.cpu_seconds,
                                    t.wall_seconds, (meta.get("early_stopping") or {}).get("units")))
    return RecordedSearch(run_id, spec, trials)


def _metric(metrics: dict[str, Any], name: str) -> float | None:
    from cdl.engines.training.local.runner import metric_lookup

    return metric_lookup(metrics, name)


# ---------------------------------------------------------------------- replay


@dataclass
class Kept:
    """One trial under a rule: how far it trains and what it keeps."""

    trial_id: str
    units: float
    cpu_seconds: float | None
    best: float | None
    stopped: str | None = None  # the reason, when the rule stopped it
    stopped_at: float | None = None


@dataclass
class RuleFigures:
    rule: str
    settings: str
    trial_units: float
    cpu_seconds: float | None
    best: float | None
    winner_stopped: bool
    stopped: int
    trials: list[Kept] = field(default_factory=list)

    def row(self, base: RuleFigures | None, unit: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "settings": self.settings,
            f"trial_{unit}": round(self.trial_units, 3),
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 2),
            "best": self.best,
            "stopped_trials": self.stopped,
            "winner_stopped": self.winner_stopped,
        }
        if base is not None:
            out[f"{unit}_vs_none"] = round(self.trial_units / base.trial_units, 4) if base.trial_units else None
            out["cpu_vs_none"] = (round(self.cpu_seconds / base.cpu_seconds, 4)
                                  if self.cpu_seconds is not None and base.cpu_seconds else None)
            out["best_delta"] = (None if self.best is None or base.best is None else self.best - base.best)
        return out


def _cpu_at(trial: RecordedTrial, units: float) -> float | None:
    """CPU seconds the trial had used when it reached `units` (its resource series, else pro rata)."""
    pts = [p for p in trial.curve.points if p.units <= units + 1e-9 and p.cpu_seconds is not None]
    if units >= trial.units_done - 1e-9 and trial.cpu_seconds is not None:
        return trial.cpu_seconds
    if pts:
        return pts[-1].cpu_seconds
    if trial.cpu_seconds is not None and trial.units_done:
        return trial.cpu_seconds * units / trial.units_done
    return None


def _best(curve: Curve, smaller: bool) -> float | None:
    return curve.best(smaller)


def _winner(search: RecordedSearch) -> str | None:
    scored = [(t.curve.best(search.smaller), t.trial_id) for t in search.trials if t.curve.scored()]
    if not scored:
        return None
    return (min if search.smaller else max)(scored, key=lambda x: x[0])[1]  # type: ignore[arg-type,return-value]


def _figures(search: RecordedSearch, rule: str, settings: str, kept: list[Kept]) -> RuleFigures:
    cpus = [k.cpu_seconds for k in kept]
    bests = [k.best for k in kept if k.best is not None and not math.isnan(k.best)]
    winner = _winner(search)
    winner_kept = next((k for k in kept if k.trial_id == winner), None)
    return RuleFigures(
        rule, settings, float(sum(k.units for k in kept)),
        None if any(c is None for c in cpus) else float(sum(cpus)),  # type: ignore[arg-type]
        ((min if search.smaller else max)(bests) if bests else None),
        bool(winner_kept and winner_kept.stopped), sum(1 for k in kept if k.stopped), kept,
    )


def replay_rule(search: RecordedSearch, settings: StoppingSettings) -> list[Kept]:
    """Each trial under the rules in `settings`, trials in creation order."""
    rules = StoppingRules(settings, metric=search.metric, smaller_is_better=search.smaller,
                          target=search.target, unit=search.unit)
    done: list[Curve] = []
    kept: list[Kept] = []
    for trial in search.trials:
        stop = None
        prefix = Curve(trial.trial_id, [], False)
        for p in trial.curve.points:
            prefix = Curve(trial.trial_id, [*prefix.points, p], False)
            outcome = rules.check(prefix, done)
            if outcome.decision is not None:
                stop = outcome.decision
                break
        if stop is None:
            curve = trial.curve
            kept.append(Kept(trial.trial_id, trial.units_done, _cpu_at(trial, trial.units_done),
                             _best(curve, search.smaller)))
        else:
            curve = replace(prefix, completed=False)
            killed = bool(stop.detail.get("killed"))
            kept.append(Kept(trial.trial_id, stop.units, _cpu_at(trial, stop.units),
                             None if killed else _best(curve, search.smaller), stop.reason, stop.units))
        done.append(curve)
    return kept


def replay_asha(search: RecordedSearch, divisor: int = 4, max_rungs: int = 5) -> tuple[list[Kept], str]:
    """ASHA (one trial at a time) on the recorded trials: trial i of the search is ASHA's trial i."""
    from cdl.api.experiment import ExperimentSpec
    from cdl.engines.training.local import searchers
    from cdl.engines.training.local.state import TrialState, Validation

    target = search.target
    if target is None:
        raise ValueError("ASHA needs searcher.maxLength")
    spec = ExperimentSpec.model_validate({  # only the searcher matters: trials come from the recording
        "model": {"path": ".", "entrypoint": "replay:Trial"},
        "searcher": {"name": "asha", "metric": search.metric, "smallerIsBetter": search.smaller,
                     "maxTrials": len(search.trials), "maxLength": {search.unit: int(target)},
                     "asha": {"divisor": divisor, "maxRungs": max_rungs}},
    })
    asha = searchers.AshaSearch(spec)
    recorded = {i: t for i, t in enumerate(search.trials)}
    states: list[TrialState] = []

    def train(state: TrialState) -> None:
        trial = recorded[state.index]
        state.validations = [Validation(0, int(p.units), p.value, {}, 0.0) for p in trial.curve.points
                             if p.units <= (state.target or 0) + 1e-9]
        state.units_done = min(state.target or 0, trial.units_done)
        state.state = asha.segment_done(state)

    while True:
        actions = asha.next(states, 1)
        if not actions:
            break
        action = actions[0]
        if isinstance(action, searchers.NewTrial):
            if len(states) >= len(recorded):
                break
            state = TrialState(id=recorded[len(states)].trial_id, index=len(states), hparams={}, seed=0,
                               target=action.target, rung=action.rung)
            states.append(state)
        else:
            state = next(s for s in states if s.id == action.trial_id)
            asha.promote(state, action)
        train(state)
    asha.finish(states)
    kept = []
    for state in states:
        trial = recorded[state.index]
        curve = Curve(state.id, [p for p in trial.curve.points if p.units <= state.units_done + 1e-9])
        full = state.units_done >= trial.units_done - 1e-9
        kept.append(Kept(state.id, float(state.units_done), _cpu_at(trial, state.units_done),
                         _best(curve, search.smaller), None if full else state.stop_reason,
                         None if full else float(state.units_done)))
    return kept, f"divisor {divisor}, rungs at {', '.join(str(n) for n in asha.lengths)} {search.unit}"


def _describe(rule: str, s: StoppingSettings) -> str:
    if rule == "patience":
        return f"patience {s.patience}, minDelta {s.min_delta:g}"
    if rule == "budgets":
        parts = []
        if s.max_trial_seconds is not None:
            parts.append(f"maxTrialSeconds {s.max_trial_seconds:g}")
        if s.max_trial_memory is not None:
            parts.append(f"maxTrialMemory {s.max_trial_memory / 2**20:.0f}Mi")
        return ", ".join(parts) or "none set"
    if rule == "median" and s.median:
        return f"minCompletedTrials {s.median.min_completed_trials}, warmup {s.median.warmup_validations}"
    if rule == "predict" and s.predict:
        p = s.predict
        return (f"minCompletedTrials {p.min_completed_trials}, minValidations {p.min_validations}, "
                f"quantile {p.quantile:g}, confidence {p.confidence:g}")
    if rule == "resources" and s.resources:
        r = s.resources
        return f"{r.wire_name} per gain > {r.factor:g}x median, minCompletedTrials {r.min_completed_trials}"
    return ""


def rule_settings(search: RecordedSearch) -> dict[str, StoppingSettings]:
    """Each rule's settings: the search's own `earlyStopping` where it set them, else defaults
    (patience 3; a wall-time budget of the median completed trial's wall time)."""
    raw = dict(search.searcher.get("earlyStopping") or {})
    walls = [t.wall_seconds for t in search.trials if t.curve.completed and t.wall_seconds]
    budgets = {k: raw[k] for k in ("maxTrialSeconds", "maxTrialMemory") if raw.get(k)}
    if not budgets and walls:
        budgets["maxTrialSeconds"] = max(1, round(float(np.median(walls))))
    return {
        "none": StoppingSettings(),
        "patience": StoppingSettings.from_wire({"patience": raw.get("patience", 3), "minDelta": raw.get("minDelta", 0.0)}),
        "budgets": StoppingSettings.from_wire(budgets),
        "median": StoppingSettings.from_wire({"median": raw.get("median", {})}),
        "predict": StoppingSettings.from_wire({"predict": raw.get("predict", {})}),
        "resources": StoppingSettings.from_wire({"resources": raw.get("resources", {})}),
    }


def study(search: RecordedSearch, rules: Sequence[str] = RULES,
          overrides: dict[str, StoppingSettings] | None = None) -> list[RuleFigures]:
    """Figures per rule; `none` first (what the recorded search spent)."""
    settings = {**rule_settings(search), **(overrides or {})}
    out = []
    for rule in rules:
        if rule == "asha":
            if search.target is None:
                continue
            kept, described = replay_asha(search)
            out.append(_figures(search, rule, described, kept))
            continue
        s = settings[rule]
        kept = replay_rule(search, s)
        out.append(_figures(search, rule, _describe(rule, s), kept))
    return out


def rows(search: RecordedSearch, figures: list[RuleFigures]) -> list[dict[str, Any]]:
    base = next((f for f in figures if f.rule == "none"), None)
    return [f.row(base, search.unit) for f in figures]


def plot(search: RecordedSearch, figures: list[RuleFigures], path: str) -> str:
    """A PNG: the recorded curves with where each comparing rule stopped them, and per rule the
    compute spent (share of no stopping) against the best metric kept."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("the plot needs matplotlib: pip install 'cdl[study]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curves, ax_bars) = plt.subplots(1, 2, figsize=(13, 5))
    for t in search.trials:
        pts = t.curve.scored()
        ax_curves.plot([p.units for p in pts], [p.value for p in pts], color="0.75", lw=1)
    markers = {"patience": "s", "median": "v", "predict": "X", "resources": "D", "budgets": "o"}
    for f in figures:
        if f.rule not in markers:
            continue
        xs, ys = [], []
        for k in f.trials:
            if k.stopped_at is None:
                continue
            trial = next(t for t in search.trials if t.trial_id == k.trial_id)
            at = [p for p in trial.curve.scored() if p.units <= k.stopped_at + 1e-9]
            if at:
                xs.append(at[-1].units)
                ys.append(at[-1].value)
        if xs:
            ax_curves.scatter(xs, ys, marker=markers[f.rule], label=f"{f.rule} stops", zorder=3)
    ax_curves.set_xlabel(search.unit)
    ax_curves.set_ylabel(search.metric)
    ax_curves.set_title(f"run {search.run_id}: recorded curves and where rules stop")
    if any(f.rule in markers for f in figures):
        ax_curves.legend(fontsize=8)
    base = next((f for f in figures if f.rule == "none"), figures[0])
    names = [f.rule for f in figures]
    share = [f.trial_units / base.trial_units if base.trial_units else 0 for f in figures]
    bars = ax_bars.bar(names, share, color=["tab:red" if f.winner_stopped else "tab:blue" for f in figures])
    for bar, f in zip(bars, figures, strict=True):
        label = "-" if f.best is None else f"{f.best:.4g}"
        ax_bars.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                         fontsize=8)
    ax_bars.set_ylabel(f"trial-{search.unit} spent (share of no stopping)")
    ax_bars.set_title(f"compute per rule; label: best {search.metric} kept; red: winner stopped")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
