"""Samplers by name: what the YAML's study.sampler builds, and its errors (pruners: test_pruning.py)."""
import pytest

from alexnet_exp.config import ConfigError, config_from_dict
from alexnet_exp.sweep.search.samplers import grid_points, make_sampler


def test_bad_sampler_names_and_options_are_config_errors():
    space = config_from_dict({"space": {"train.lr": {"type": "float", "low": 0.01, "high": 0.1}}}).space
    with pytest.raises(ConfigError, match="study.sampler: 'annealing'; valid: tpe, random, gp, cmaes, qmc, grid"):
        make_sampler("annealing", {}, 0, space)
    with pytest.raises(ConfigError, match="study.sampler_options for tpe"):
        make_sampler("tpe", {"n_startup": 3}, 0, space)
    with pytest.raises(ConfigError, match="space.train.lr: the grid sampler needs categorical choices"):
        make_sampler("grid", {}, 0, space)


def test_grid_points_of_each_kind_of_entry():
    space = config_from_dict({"space": {
        "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
        "train.epochs": {"type": "int", "low": 2, "high": 8, "step": 3},
        "model.width": {"type": "float", "low": 0.5, "high": 1.0, "step": 0.25}}}).space
    assert grid_points(space) == {"train.optimizer": ["sgd", "adam"], "train.epochs": [2, 5, 8],
                                  "model.width": [0.5, 0.75, 1.0]}
