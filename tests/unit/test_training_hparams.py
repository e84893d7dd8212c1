"""Hyperparameter sampling and grids in Determined's syntax."""

from __future__ import annotations

import math

import pytest

from cdl.api.hyperparameters import hyperparameter_problems
from cdl.engines.training.local import hparams as hp

SPACE = {
    "lr": {"type": "log", "minval": -4, "maxval": -1, "base": 10},
    "hidden": {"type": "int", "minval": 8, "maxval": 64},
    "dropout": {"type": "double", "minval": 0.0, "maxval": 0.5},
    "optimizer": {"type": "categorical", "vals": ["sgd", "adam"]},
    "epochs_const": {"type": "const", "val": 3},
    "plain": 0.25,
    "listed": [1, 2],
    "arch": {"layers": {"type": "int", "minval": 1, "maxval": 3}, "act": "relu"},
}


def test_samples_respect_every_type_and_nesting() -> None:
    for index in range(50):
        s = hp.sample(SPACE, seed=42, index=index)
        assert 1e-4 <= s["lr"] <= 1e-1
        assert isinstance(s["hidden"], int) and 8 <= s["hidden"] <= 64
        assert 0.0 <= s["dropout"] <= 0.5
        assert s["optimizer"] in ("sgd", "adam")
        assert s["epochs_const"] == 3 and s["plain"] == 0.25 and s["listed"] == [1, 2]
        assert s["arch"]["act"] == "relu" and 1 <= s["arch"]["layers"] <= 3


def test_samples_are_a_function_of_seed_and_index() -> None:
    assert hp.sample(SPACE, 42, 3) == hp.sample(SPACE, 42, 3)
    assert hp.sample(SPACE, 42, 3) != hp.sample(SPACE, 42, 4)
    assert hp.sample(SPACE, 42, 3) != hp.sample(SPACE, 43, 3)


def test_log_samples_cover_the_exponent_range_uniformly() -> None:
    exps = [math.log10(hp.sample({"lr": SPACE["lr"]}, 1, i)["lr"]) for i in range(400)]
    assert min(exps) < -3.7 and max(exps) > -1.3
    assert sum(1 for e in exps if e < -2.5) == pytest.approx(200, abs=40)


def test_grid_is_the_cartesian_product_in_spec_order() -> None:
    space = {
        "lr": {"type": "log", "minval": -3, "maxval": -1, "count": 3},
        "opt": {"type": "categorical", "vals": ["sgd", "adam"]},
        "units": {"type": "int", "minval": 1, "maxval": 3, "count": 10},
        "fixed": 5,
    }
    points = hp.grid(space)
    assert len(points) == 3 * 2 * 3 == hp.grid_size(space)
    assert [p["lr"] for p in points[::6]] == pytest.approx([1e-3, 1e-2, 1e-1])
    assert {p["units"] for p in points} == {1, 2, 3}  # count beyond the integers: each integer once
    assert all(p["fixed"] == 5 for p in points)
    assert points[0] == {"lr": pytest.approx(1e-3), "opt": "sgd", "units": 1, "fixed": 5}


def test_grid_needs_count_for_ranges_and_names_the_field() -> None:
    with pytest.raises(hp.GridError) as err:
        hp.grid({"opt": {"layers": {"type": "double", "minval": 0, "maxval": 1}}})
    assert err.value.field == "spec.hyperparameters.opt.layers.count"
    assert "grid search needs count" in str(err.value)


def test_flatten_uses_dotted_names() -> None:
    assert hp.flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}}) == {"a": 1, "b.c": 2, "b.d.e": 3}


def test_problems_reports_bad_definitions_with_paths() -> None:
    found = dict(hyperparameter_problems({"lr": {"type": "log", "minval": 1, "maxval": 0}, "x": {"type": "nope"}}))
    assert "spec.hyperparameters.lr.maxval" in found
    assert "spec.hyperparameters.x.type" in found
