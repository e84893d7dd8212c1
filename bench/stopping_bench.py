"""Benchmark of early stopping (not a test): what each rule spends and keeps in one random search.

The performance-tuning thesis (RQ1/RQ2) asks how early stopping changes the computation of a
hyperparameter search. Here the same random search (the same trials: cdl's hyperparameter
sampler, seed and trial budget) runs once per method on three problems, side by side in one run:

- no stopping; cdl's patience/minDelta; cdl's median rule; cdl's predictive stopping
  (learning-curve model); cdl's resource comparison; ASHA (cdl's searcher, one bracket);
- the peer: Optuna's MedianPruner and SuccessiveHalvingPruner on the same trials.

Problems: the BBC use case's generated offline corpus (usecases/bbc-news/data/generate.py, its
NewsNet), the Fashion-MNIST use case's generated sample (usecases/fashion-mnist/data/generate.py,
an MLP of the use case's shape) and scikit-learn's bundled breast-cancer table (an MLP). Trials
train in this process, one at a time (torch on one thread), epoch by epoch; after each epoch the
method decides whether the trial goes on, exactly as the local engine's driver would (cdl's
rules are the same `cdl.runtime.stopping` code), so a stopped trial really trains no further.

Per method: trial-epochs spent, CPU seconds (training, validation and the method's own
decisions), the best validation accuracy kept, whether the winner of the unstopped search was
stopped; and the issue's target for predictive stopping (at most half the trial-epochs of no
stopping, best within 0.5 points, no worse than Optuna's pruners on both counts).

One seed says little about a stopping rule (which trial comes first, and how noisy the first
validations are, decide much), so the unstopped searches of more seeds (--robustness-seeds) are
trained too and, over them and the run seed's unstopped searches, cdl's predict rule (its default
confidence 0.5 and 0.6-0.9), cdl's median rule and Optuna's two pruners are replayed: exact, since
training is seeded (a stopped trial's prefix is its unstopped curve) and every method sees only
the validations. The frontier table sums them up per method (mean trial-epochs against mean loss
of the best), names the predict confidences no worse than each Optuna pruner on both counts, and
reads predict's loss off its frontier at each pruner's spending. Since a few searches where the
winner was stopped move those means, the last table gives each predict confidence minus each
pruner search by search, with a paired bootstrap interval over the searches.

Usage: .venv/bin/python bench/stopping_bench.py [--trials 16] [--epochs 15] [--seed 7]
       [--robustness-seeds 8,...,30] [--json out.json]
Needs the `bench` extra (optuna, scikit-learn).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cdl.api.experiment import ExperimentSpec
from cdl.engines.training.local import hparams as hp
from cdl.engines.training.local import searchers
from cdl.engines.training.local.state import TrialState, Validation
from cdl.runtime.stopping import Curve, Point, StoppingRules, StoppingSettings

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ---------------------------------------------------------------------- problems


@dataclass
class Problem:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    space: dict[str, Any]
    build: Callable[[dict[str, Any], int], nn.Module]
    note: str


def _split(x: np.ndarray, y: np.ndarray, seed: int, fraction: float = 0.3) -> tuple[torch.Tensor, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * (1 - fraction))
    tr, va = order[:cut], order[cut:]
    return (torch.as_tensor(x[tr], dtype=torch.float32), torch.as_tensor(y[tr], dtype=torch.long),
            torch.as_tensor(x[va], dtype=torch.float32), torch.as_tensor(y[va], dtype=torch.long))


def mlp(inputs: int, classes: int) -> Callable[[dict[str, Any], int], nn.Module]:
    def build(h: dict[str, Any], _: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(inputs, int(h["hidden_size"])), nn.ReLU(),
                             nn.Linear(int(h["hidden_size"]), classes))

    return build


def bbc(seed: int, per_class: int) -> Problem:
    gen = _load(REPO / "usecases/bbc-news/data/generate.py", "bbc_generate")
    news = _load(REPO / "usecases/bbc-news/model/news_model.py", "bbc_news_model")
    with tempfile.TemporaryDirectory(prefix="cdl-stopping-bench-") as tmp:
        gen.generate(Path(tmp), per_class, seed, invalid=False, readme=False)
        corpus = news.load_corpus(tmp)
    names = corpus.class_names
    vec = news.TextVectorizer()
    tokens = [vec.tokens(t) for t in corpus.texts]
    vec.fit(tokens, 2000)
    x = news.features(vec.counts(tokens)).numpy()
    y = np.asarray([names.index(label) for label in corpus.labels])
    space = {"learning_rate": {"type": "log", "minval": -5, "maxval": -1, "base": 10},
             "hidden_size": {"type": "int", "minval": 32, "maxval": 128},
             "dropout": {"type": "double", "minval": 0.1, "maxval": 0.5}}

    def build(h: dict[str, Any], _: int) -> nn.Module:
        return news.NewsNet(x.shape[1], int(h["hidden_size"]), len(names), float(h["dropout"]))

    return Problem("bbc-news (generated)", *_split(x, y, seed), space, build,
                   f"{len(x)} articles, {x.shape[1]} stems, NewsNet")


def fashion(seed: int, n: int) -> Problem:
    gen = _load(REPO / "usecases/fashion-mnist/data/generate.py", "fmnist_generate")
    images, labels = gen.sample(n, np.random.default_rng(seed))
    x = images.astype(np.float32) / 255.0
    space = {"learning_rate": {"type": "log", "minval": -5, "maxval": -1, "base": 10},
             "hidden_size": {"type": "int", "minval": 16, "maxval": 128}}
    return Problem("fashion-mnist (generated sample)", *_split(x, labels.astype(np.int64), seed), space,
                   mlp(28 * 28, 10), f"{n} images 28x28, MLP")


def tabular(seed: int) -> Problem:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    space = {"learning_rate": {"type": "log", "minval": -5, "maxval": -1, "base": 10},
             "hidden_size": {"type": "int", "minval": 4, "maxval": 64}}
    return Problem("breast-cancer (scikit-learn)", *_split(x.astype(np.float32), data.target, seed), space,
                   mlp(x.shape[1], 2), f"{len(x)} rows x {x.shape[1]} features, MLP")


# ---------------------------------------------------------------------- training


class Trainer:
    """One trial's model: trains epoch by epoch and keeps its state (ASHA resumes it)."""

    def __init__(self, problem: Problem, hparams: dict[str, Any], seed: int) -> None:
        torch.manual_seed(seed)
        self.p = problem
        self.model = problem.build(hparams, seed)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=float(hparams["learning_rate"]))
        self.gen = torch.Generator().manual_seed(seed)
        self.epochs = 0

    def epoch(self) -> float:
        """Train one epoch; the validation accuracy (percent) after it."""
        self.model.train()
        order = torch.randperm(len(self.p.x_train), generator=self.gen)
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            loss = nn.functional.cross_entropy(self.model(self.p.x_train[idx]), self.p.y_train[idx])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.epochs += 1
        self.model.eval()
        with torch.no_grad():
            pred = self.model(self.p.x_val).argmax(1)
        return float((pred == self.p.y_val).float().mean()) * 100.0


@dataclass
class Result:
    method: str
    trial_epochs: int = 0
    cpu_seconds: float = 0.0
    best: float | None = None
    curves: dict[int, list[float]] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)

    def keep(self, index: int, value: float) -> None:
        self.curves.setdefault(index, []).append(value)
        self.trial_epochs += 1
        self.best = value if self.best is None else max(self.best, value)


def configs(problem: Problem, trials: int, seed: int) -> list[dict[str, Any]]:
    return [hp.sample(problem.space, seed, i) for i in range(trials)]


def run_rules(problem: Problem, name: str, settings: StoppingSettings | None, trials: int, epochs: int,
              seed: int) -> Result:
    """Sequential random search; after each epoch cdl's rules decide (as the engine's driver)."""
    result = Result(name)
    rules = StoppingRules(settings or StoppingSettings(), metric="accuracy", smaller_is_better=False,
                          target=epochs)
    done: list[Curve] = []
    start = time.process_time()
    for i, h in enumerate(configs(problem, trials, seed)):
        trainer = Trainer(problem, h, seed + i)
        curve = Curve(str(i))
        t0 = time.process_time()
        for e in range(1, epochs + 1):
            value = trainer.epoch()
            result.keep(i, value)
            curve.points.append(Point(e, value, cpu_seconds=time.process_time() - t0))
            if settings is not None and rules.check(curve, done).decision is not None:
                result.stopped.add(i)
                break
        curve.completed = i not in result.stopped
        done.append(curve)
    result.cpu_seconds = time.process_time() - start
    return result


def run_asha(problem: Problem, trials: int, epochs: int, seed: int, divisor: int = 4) -> Result:
    """cdl's ASHA searcher (one trial at a time), promoting trials that keep training."""
    result = Result("cdl asha")
    spec = ExperimentSpec.model_validate({
        "model": {"path": ".", "entrypoint": "x:Y"}, "hyperparameters": problem.space, "seed": seed,
        "searcher": {"name": "asha", "metric": "accuracy", "smallerIsBetter": False, "maxTrials": trials,
                     "maxLength": {"epochs": epochs}, "asha": {"divisor": divisor}},
    })
    asha = searchers.AshaSearch(spec)
    states: list[TrialState] = []
    trainers: dict[int, Trainer] = {}
    start = time.process_time()
    while actions := asha.next(states, 1):
        action = actions[0]
        if isinstance(action, searchers.NewTrial):
            i = len(states)
            state = TrialState(id=str(i), index=i, hparams=action.hparams, seed=seed + i, target=action.target,
                               rung=action.rung)
            states.append(state)
            trainers[i] = Trainer(problem, action.hparams, seed + i)
        else:
            state = next(s for s in states if s.id == action.trial_id)
            asha.promote(state, action)
        trainer = trainers[state.index]
        while trainer.epochs < (state.target or epochs):
            value = trainer.epoch()
            result.keep(state.index, value)
            state.validations.append(Validation(0, trainer.epochs, value, {}, 0.0))
        state.units_done = trainer.epochs
        state.state = asha.segment_done(state)
    result.cpu_seconds = time.process_time() - start
    result.stopped = {s.index for s in states if s.units_done < epochs}
    return result


def optuna_pruner(name: str, epochs: int) -> Any:
    """Optuna's pruner by the bench's name for it: "median" and "successive-halving" are the peer
    of the issue's target (Optuna's usual settings); the others only draw Optuna's frontier."""
    import optuna

    make = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "successive-halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4),
        "median warmup 3": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
        "successive-halving factor 2": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1,
                                                                                      reduction_factor=2),
        "successive-halving min 2": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=2,
                                                                                   reduction_factor=4),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs,
                                                           reduction_factor=3),
    }
    return make[name]()


def run_optuna(problem: Problem, pruner_name: str, trials: int, epochs: int, seed: int) -> Result:
    """The same trials under an Optuna pruner (report every epoch, stop when it says prune)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna_pruner(pruner_name, epochs),
                                sampler=optuna.samplers.RandomSampler(seed=seed),
                                study_name=f"bench-{seed}")  # HyperbandPruner hashes it into brackets
    result = Result(f"optuna {pruner_name}")
    start = time.process_time()
    for i, h in enumerate(configs(problem, trials, seed)):
        trial = study.ask()
        trainer = Trainer(problem, h, seed + i)
        best = None
        pruned = False
        for e in range(1, epochs + 1):
            value = trainer.epoch()
            result.keep(i, value)
            best = value if best is None else max(best, value)
            trial.report(value, e)
            if trial.should_prune():
                pruned = True
                break
        if pruned:
            result.stopped.add(i)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, best)
    result.cpu_seconds = time.process_time() - start
    return result


# ---------------------------------------------------------------------- the run


def bench_problem(problem: Problem, trials: int, epochs: int, seed: int) -> tuple[list[dict[str, Any]], Result]:
    """The table's rows, and the unstopped search (its curves are replayed with the other seeds')."""
    warm = Trainer(problem, configs(problem, 1, seed)[0], seed)  # first-call costs out of the first method
    for _ in range(2):
        warm.epoch()
    methods: list[Result] = [
        run_rules(problem, "none", None, trials, epochs, seed),
        run_rules(problem, "cdl patience", StoppingSettings.from_wire({"patience": 3, "minDelta": 0.1}),
                  trials, epochs, seed),
        run_rules(problem, "cdl median", StoppingSettings.from_wire({"median": {}}), trials, epochs, seed),
        run_rules(problem, "cdl predict", StoppingSettings.from_wire({"predict": {}}), trials, epochs, seed),
        run_rules(problem, "cdl resources", StoppingSettings.from_wire({"resources": {}}), trials, epochs, seed),
        run_asha(problem, trials, epochs, seed),
        run_optuna(problem, "median", trials, epochs, seed),
        run_optuna(problem, "successive-halving", trials, epochs, seed),
    ]
    base = methods[0]
    winner = max(base.curves, key=lambda i: max(base.curves[i]))
    rows = []
    for m in methods:
        rows.append({
            "problem": problem.name, "method": m.method, "trial_epochs": m.trial_epochs,
            "epochs_vs_none": round(m.trial_epochs / base.trial_epochs, 3),
            "cpu_seconds": round(m.cpu_seconds, 2), "cpu_vs_none": round(m.cpu_seconds / base.cpu_seconds, 3),
            "best_accuracy": round(m.best or 0.0, 2), "best_delta": round((m.best or 0.0) - (base.best or 0.0), 2),
            "stopped_trials": len(m.stopped), "winner_stopped": winner in m.stopped,
        })
    return rows, base


# ---------------------------------------------------------------------- more seeds, replayed


def replay_rules(curves: dict[int, list[float]], settings: StoppingSettings, epochs: int) -> Result:
    """cdl's rules over recorded unstopped curves (training is seeded, so a stopped trial's prefix
    is its unstopped curve: the same decisions as training, without the training)."""
    result = Result("replay")
    rules = StoppingRules(settings, metric="accuracy", smaller_is_better=False, target=epochs)
    done: list[Curve] = []
    for i in sorted(curves):
        curve = Curve(str(i))
        for e, value in enumerate(curves[i][:epochs], start=1):
            result.keep(i, value)
            curve.points.append(Point(e, value))
            if rules.check(curve, done).decision is not None:
                result.stopped.add(i)
                break
        curve.completed = i not in result.stopped
        done.append(curve)
    return result


def replay_optuna(curves: dict[int, list[float]], pruner_name: str, epochs: int, seed: int) -> Result:
    """An Optuna pruner over the same recorded curves (it sees only the reported values)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna_pruner(pruner_name, epochs),
                                sampler=optuna.samplers.RandomSampler(seed=seed),
                                study_name=f"bench-{seed}")  # HyperbandPruner hashes it into brackets
    result = Result(f"optuna {pruner_name}")
    for i in sorted(curves):
        trial = study.ask()
        for e, value in enumerate(curves[i][:epochs], start=1):
            result.keep(i, value)
            trial.report(value, e)
            if trial.should_prune():
                result.stopped.add(i)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curves[i][:epochs]))
    return result


PREDICT_CONFIDENCES = (0.6, 0.7, 0.8, 0.9)  # replayed besides "cdl predict" (its default, 0.5)
PER_SEED_METHODS = ("cdl predict", "cdl median", "optuna median", "optuna successive-halving")
PRUNERS = ("optuna median", "optuna successive-halving")
# Optuna's pruners with other settings, replayed to draw Optuna's own frontier beside predict's.
OPTUNA_FRONTIER = ("median warmup 3", "successive-halving factor 2", "successive-halving min 2", "hyperband")


def replayed(seed: int, problem: str, base: Result, epochs: int) -> list[dict[str, Any]]:
    """Each method replayed over one unstopped search; a row per method."""
    winner = max(base.curves, key=lambda i: max(base.curves[i]))
    methods = {
        **{f"cdl predict {c}": replay_rules(base.curves, StoppingSettings.from_wire({"predict": {"confidence": c}}),
                                            epochs) for c in PREDICT_CONFIDENCES},
        "cdl predict": replay_rules(base.curves, StoppingSettings.from_wire({"predict": {}}), epochs),
        "cdl median": replay_rules(base.curves, StoppingSettings.from_wire({"median": {}}), epochs),
        **{f"optuna {name}": replay_optuna(base.curves, name, epochs, seed)
           for name in ("median", "successive-halving", *OPTUNA_FRONTIER)},
    }
    return [{"seed": seed, "problem": problem, "method": name, "trial_epochs": m.trial_epochs,
             "epochs_vs_none": round(m.trial_epochs / base.trial_epochs, 4),
             "best_delta": round((m.best or 0.0) - (base.best or 0.0), 4),
             "winner_stopped": winner in m.stopped} for name, m in methods.items()]


def robustness(problems: list[Callable[[int], Problem]], seeds: list[int], trials: int, epochs: int,
               trained: list[tuple[int, str, Result]]) -> list[dict]:
    """The searches already trained (seed, problem, unstopped result) replayed, then per further seed
    and problem one unstopped search trained and each method replayed over it."""
    rows = []
    for seed, name, base in trained:
        rows.extend(replayed(seed, name, base, epochs))
    for seed in seeds:
        for make in problems:
            problem = make(seed)
            rows.extend(replayed(seed, problem.name, run_rules(problem, "none", None, trials, epochs, seed), epochs))
    return rows


def frontier(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Per method over all replayed searches: mean share of the trial-epochs against mean loss of the
    best; and per Optuna pruner, the predict confidences no worse on both counts."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        spent = [r["epochs_vs_none"] for r in mine]
        table.append({
            "method": method, "searches": len(mine), "epochs_vs_none_mean": round(float(np.mean(spent)), 4),
            "epochs_vs_none_min": min(spent), "epochs_vs_none_max": max(spent),
            "best_delta_mean": round(float(np.mean([r["best_delta"] for r in mine])), 4),
            "winner_stopped": sum(r["winner_stopped"] for r in mine),
            "lost_over_half_point": sum(r["best_delta"] < -0.5 for r in mine),
        })
    by = {f["method"]: f for f in table}
    predicts = [f for f in table if f["method"].startswith("cdl predict")]
    dominating = {pruner: [f["method"] for f in predicts
                           if f["epochs_vs_none_mean"] <= by[pruner]["epochs_vs_none_mean"]
                           and f["best_delta_mean"] >= by[pruner]["best_delta_mean"]]
                  for pruner in PRUNERS}
    return table, dominating


def _paired(rows: list[dict[str, Any]], method: str, peer: str) -> tuple[np.ndarray, np.ndarray]:
    """Per search (seed, problem) the method's figure minus the peer's: trial-epochs vs none (in
    points of percent) and Δ best."""
    cells = {(r["seed"], r["problem"], r["method"]): r for r in rows}
    keys = sorted({(r["seed"], r["problem"]) for r in rows})
    epochs = np.asarray([cells[(*k, method)]["epochs_vs_none"] - cells[(*k, peer)]["epochs_vs_none"] for k in keys])
    delta = np.asarray([cells[(*k, method)]["best_delta"] - cells[(*k, peer)]["best_delta"] for k in keys])
    return epochs * 100.0, delta


def differences(rows: list[dict[str, Any]], resamples: int = 4000, level: float = 0.9) -> list[dict[str, Any]]:
    """Each predict confidence against each Optuna pruner, search by search (the same searches are
    replayed by both): the mean difference in trial-epochs and in Δ best with a paired bootstrap
    interval over the searches. A difference whose interval holds 0 is not one these searches can
    tell from chance: the means rest on a few searches where the winner was stopped."""
    rng = np.random.default_rng(0)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m.startswith("cdl predict")]
    out = []
    for pruner in PRUNERS:
        for method in methods:
            epochs, delta = _paired(rows, method, pruner)
            picks = rng.integers(0, len(epochs), size=(resamples, len(epochs)))
            tail = (1 - level) / 2 * 100
            e_lo, e_hi = np.percentile(epochs[picks].mean(1), [tail, 100 - tail])
            d_lo, d_hi = np.percentile(delta[picks].mean(1), [tail, 100 - tail])
            out.append({"method": method, "peer": pruner, "searches": len(epochs), "level": level,
                        "epochs_points": round(float(epochs.mean()), 2),
                        "epochs_interval": [round(float(e_lo), 2), round(float(e_hi), 2)],
                        "best_delta": round(float(delta.mean()), 3),
                        "best_delta_interval": [round(float(d_lo), 3), round(float(d_hi), 3)]})
    return out


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto points of (mean trial-epochs, mean Δ best): none spends less and keeps more."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or y > out[-1][1]:
            out.append((x, y))
    return out


def read_off(frontier_points: list[tuple[float, float]], spent: float) -> float | None:
    """Δ best on a frontier at `spent` (linear between its two points around it); None outside it."""
    for (x0, y0), (x1, y1) in zip(frontier_points, frontier_points[1:], strict=False):
        if x0 <= spent <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (spent - x0) / (x1 - x0)
    if frontier_points and frontier_points[-1][0] == spent:
        return frontier_points[-1][1]
    return None


def matched(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every predict and Optuna point against the other family's frontier at the same mean
    trial-epochs: the Δ best the other family keeps when it spends as much (None outside its range)."""
    family = {f["method"]: ("predict" if f["method"].startswith("cdl predict") else "optuna")
              for f in table if f["method"].startswith(("cdl predict", "optuna"))}
    fronts = {fam: envelope([(f["epochs_vs_none_mean"], f["best_delta_mean"]) for f in table
                             if family.get(f["method"]) == fam]) for fam in ("predict", "optuna")}
    out = []
    for f in table:
        if f["method"] not in family:
            continue
        other = "optuna" if family[f["method"]] == "predict" else "predict"
        at = read_off(fronts[other], f["epochs_vs_none_mean"])
        out.append({"method": f["method"], "epochs_vs_none": f["epochs_vs_none_mean"],
                    "best_delta": f["best_delta_mean"], "other": other,
                    "other_best_delta": None if at is None else round(at, 4),
                    "other_range": [fronts[other][0][0], fronts[other][-1][0]]})
    return out


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["method"]: r for r in rows}
    p = by["cdl predict"]
    peers = [by["optuna median"], by["optuna successive-halving"]]
    return {
        "problem": p["problem"],
        "half_the_epochs": p["epochs_vs_none"] <= 0.5,
        "best_within_0.5": p["best_delta"] >= -0.5,
        "no_worse_than_optuna": all(p["trial_epochs"] <= q["trial_epochs"] and p["best_accuracy"] >= q["best_accuracy"]
                                    for q in peers),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bbc-per-class", type=int, default=60)
    parser.add_argument("--fashion-images", type=int, default=3000)
    parser.add_argument("--robustness-seeds", default=",".join(map(str, range(8, 31))),
                        help="more seeds whose unstopped searches are replayed (with the run seed's) under cdl's "
                             "predict and median rules and Optuna's pruners ('' for none)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.time()
    problems = [bbc(args.seed, args.bbc_per_class), fashion(args.seed, args.fashion_images), tabular(args.seed)]
    print(f"# stopping bench {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; "
          f"{args.trials} trials x {args.epochs} epochs, seed {args.seed}")
    all_rows, verdicts, trained = [], [], []
    for problem in problems:
        print(f"\n## {problem.name}: {problem.note}")
        rows, base = bench_problem(problem, args.trials, args.epochs, args.seed)
        trained.append((args.seed, problem.name, base))
        all_rows.extend(rows)
        verdicts.append(verdict(rows))
        print("| method | trial-epochs | vs none | CPU s | vs none | best acc % | Δ best | stopped | winner stopped |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['method']} | {r['trial_epochs']} | {r['epochs_vs_none']:.0%} | {r['cpu_seconds']:.1f} | "
                  f"{r['cpu_vs_none']:.0%} | {r['best_accuracy']:.2f} | {r['best_delta']:+.2f} | "
                  f"{r['stopped_trials']} | {'yes' if r['winner_stopped'] else 'no'} |")
    print("\n## target for predictive stopping (<= 50% trial-epochs, best within 0.5 points, no worse than Optuna)")
    for v in verdicts:
        print(f"- {v['problem']}: half the epochs {v['half_the_epochs']}, best within 0.5 {v['best_within_0.5']}, "
              f"no worse than Optuna's pruners {v['no_worse_than_optuna']}")
    seeds = [int(s) for s in args.robustness_seeds.split(",") if s.strip()]
    makers = [lambda s: bbc(s, args.bbc_per_class), lambda s: fashion(s, args.fashion_images), tabular]
    extra = robustness(makers, seeds, args.trials, args.epochs, trained)
    all_seeds = list(dict.fromkeys(r["seed"] for r in extra))
    print(f"\n## all seeds ({', '.join(map(str, all_seeds))}): each unstopped search trained once (seed "
          f"{args.seed}'s above), the methods replayed over it; trial-epochs vs none, Δ best, * = the winner stopped")
    print("| seed | problem | " + " | ".join(PER_SEED_METHODS) + " |")
    print("|---|---|" + "---:|" * len(PER_SEED_METHODS))
    for seed in all_seeds:
        for problem in dict.fromkeys(r["problem"] for r in extra if r["seed"] == seed):
            cells = {r["method"]: r for r in extra if r["seed"] == seed and r["problem"] == problem}
            print(f"| {seed} | {problem} | " + " | ".join(
                f"{r['epochs_vs_none']:.0%} {r['best_delta']:+.2f}{'*' if r['winner_stopped'] else ''}"
                for r in (cells[m] for m in PER_SEED_METHODS)) + " |")
    table, dominating = frontier(extra)
    print(f"\n## frontier over the {table[0]['searches']} searches: mean trial-epochs vs none against mean Δ best "
          "(cdl predict without a number: its default confidence, 0.5)")
    print("| method | searches | trial-epochs vs none (mean) | min-max | Δ best (mean) | winner stopped | "
          "lost > 0.5 points |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for f in table:
        print(f"| {f['method']} | {f['searches']} | {f['epochs_vs_none_mean']:.1%} | {f['epochs_vs_none_min']:.0%}-"
              f"{f['epochs_vs_none_max']:.0%} | {f['best_delta_mean']:+.3f} | {f['winner_stopped']} | "
              f"{f['lost_over_half_point']} |")
    for pruner, names in dominating.items():
        print(f"- no worse than {pruner} on both counts (mean trial-epochs <=, mean Δ best >=): "
              f"{', '.join(names) or 'none'}")
    at_equal = matched(table)
    print("\n## each point against the other family's frontier at the same mean trial-epochs (the frontier: "
          "its Pareto points, linear between them; > 0: this point keeps more)")
    print("| method | trial-epochs vs none (mean) | Δ best (mean) | the other family's Δ best there | difference |")
    print("|---|---:|---:|---:|---:|")
    for m in at_equal:
        there = m["other_best_delta"]
        print(f"| {m['method']} | {m['epochs_vs_none']:.1%} | {m['best_delta']:+.3f} | "
              + (f"{m['other']} {there:+.3f} | {m['best_delta'] - there:+.3f} |" if there is not None else
                 f"outside {m['other']}'s {m['other_range'][0]:.1%}-{m['other_range'][1]:.1%} | |"))
    paired = differences(extra)
    print(f"\n## predict minus each pruner, search by search ({paired[0]['searches']} searches; mean and "
          f"{paired[0]['level']:.0%} paired bootstrap interval; trial-epochs in points of percent, < 0: predict "
          "spends less; Δ best in points of accuracy, > 0: predict keeps more)")
    print("| predict | against | trial-epochs | interval | Δ best | interval |")
    print("|---|---|---:|---:|---:|---:|")
    for d in paired:
        print(f"| {d['method']} | {d['peer']} | {d['epochs_points']:+.1f} | [{d['epochs_interval'][0]:+.1f}, "
              f"{d['epochs_interval'][1]:+.1f}] | {d['best_delta']:+.3f} | [{d['best_delta_interval'][0]:+.3f}, "
              f"{d['best_delta_interval'][1]:+.3f}] |")
    print(f"\n(total {time.time() - started:.0f} s wall, load {os.getloadavg()[0]:.1f})")
    if args.json:
        args.json.write_text(json.dumps({"rows": all_rows, "verdicts": verdicts, "other_seeds": extra,
                                         "frontier": table, "no_worse_than": dominating,
                                         "at_equal_epochs": at_equal, "paired": paired}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
