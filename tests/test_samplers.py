"""Samplers and pruners by name: what the YAML's study.sampler / study.pruner build, and their errors."""
import optuna
import pytest

from alexnet_exp.config import ConfigError, config_from_dict
from alexnet_exp.samplers import grid_points, make_pruner, make_sampler


def test_median_pruner_defaults_spare_the_first_epoch():
    pruner = make_pruner("median", {}, epochs=10)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in (0.5, 0.6, 0.7):  # the 3 startup trials
        trial = study.ask()
        for epoch in range(1, 6):
            trial.report(value, epoch)
        study.tell(trial, value)
    hopeless = study.ask()
    hopeless.report(0.01, 1)
    assert not hopeless.should_prune()  # the noisy first epoch is never judged
    hopeless.report(0.01, 2)
    assert hopeless.should_prune()


def test_a_pruner_needs_three_finished_trials_by_default():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", {}, epochs=10))
    for value in (0.5, 0.6):
        trial = study.ask()
        for epoch in range(1, 6):
            trial.report(value, epoch)
        study.tell(trial, value)
    hopeless = study.ask()
    for epoch in range(1, 6):
        hopeless.report(0.01, epoch)
    assert not hopeless.should_prune()


@pytest.mark.parametrize("name,kind", [("median", optuna.pruners.MedianPruner),
                                       ("percentile", optuna.pruners.PercentilePruner),
                                       ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
                                       ("hyperband", optuna.pruners.HyperbandPruner),
                                       ("none", optuna.pruners.NopPruner)])
def test_pruners_by_name(name, kind):
    assert isinstance(make_pruner(name, {}, epochs=10), kind)


def test_bad_pruner_and_sampler_names_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="study.pruner: 'asha'; valid: median, percentile"):
        make_pruner("asha", {}, 10)
    with pytest.raises(ConfigError, match="study.pruner_options for median"):
        make_pruner("median", {"n_warmup": 2}, 10)
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
