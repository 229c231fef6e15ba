"""Per-choice distributions: a space entry may be a list of branches, exactly one active for any assignment."""
import json

import optuna
import pytest

from alexnet_exp.config import ConfigError, config_from_dict
from alexnet_exp.sweep.search.space import baseline_trial, suggest
from alexnet_exp.sweep.stores.study_store import enqueue_baselines

OPTIMIZER = {"type": "categorical", "choices": ["sgd", "adam", "adamw"]}
SGD_LR = {"when": {"train.optimizer": "sgd"}, "type": "float", "low": 1.0e-3, "high": 0.1, "log": True}
ADAM_LR = {"when": {"train.optimizer": ["adam", "adamw"]}, "type": "float", "low": 1.0e-5, "high": 3.0e-3, "log": True}


def space(*lr_branches, **extra):
    return {"space": {"train.optimizer": OPTIMIZER, "train.lr": list(lr_branches), **extra}}


def errors_of(raw):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return info.value.errors


def test_each_choice_samples_its_own_range():
    config = config_from_dict(space(SGD_LR, ADAM_LR))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"sgd": [], "adam": [], "adamw": []}
    for _ in range(60):
        trial = study.ask()
        values = suggest(trial, config.space)
        seen[values["train.optimizer"]].append(values["train.lr"])
        # the sampler sees each branch under its own name, so TPE never mixes Adam's rates into SGD's model
        assert [p for p in trial.params if p.startswith("train.lr")] == [
            "train.lr[train.optimizer=sgd]" if values["train.optimizer"] == "sgd"
            else "train.lr[train.optimizer=adam|adamw]"]
        study.tell(trial, 0.0)
    assert all(seen.values())
    assert all(1.0e-3 <= lr <= 0.1 for lr in seen["sgd"])
    assert all(1.0e-5 <= lr <= 3.0e-3 for lr in seen["adam"] + seen["adamw"])
    assert max(seen["sgd"]) > 3.0e-3  # SGD really draws above Adam's ceiling


def test_overlapping_branches_are_refused_with_the_assignment():
    errors = errors_of(space(SGD_LR, {**ADAM_LR, "when": {"train.optimizer": ["sgd", "adam", "adamw"]}}))
    assert errors == ["space.train.lr: branches [0], [1] overlap for train.optimizer=sgd; exactly one branch must "
                      "be active for any assignment"]


def test_an_assignment_without_branch_is_refused():
    errors = errors_of(space(SGD_LR, {**ADAM_LR, "when": {"train.optimizer": "adam"}}))
    assert errors == ["space.train.lr: no branch is active for train.optimizer=adamw; add a branch for it or "
                      "widen a `when`"]


def test_branch_errors_name_the_branch():
    errors = errors_of(space(SGD_LR, {**ADAM_LR, "lowe": 1.0}))
    assert errors[0].startswith("space.train.lr[1].lowe: unknown key (did you mean 'low'?)")
    assert errors_of(space({**SGD_LR, "low": 0.5, "high": 0.1}, ADAM_LR)) == [
        "space.train.lr[0]: low (0.5) > high (0.1): swap them"]
    assert errors_of(space(SGD_LR, {**ADAM_LR, "high": 20.0})) == [
        "space.train.lr[1]: Input should be less than or equal to 10 (got 20.0)"]
    assert errors_of(space(SGD_LR)) == [
        "space.train.lr: a list of branches needs two or more; write a single distribution as a mapping"]
    assert "branches can only depend on categorical parameters" in errors_of(
        {"space": {"train.momentum": {"type": "float", "low": 0.5, "high": 0.9},
                   "train.lr": [{**SGD_LR, "when": {"train.momentum": 0.5}},
                                {**ADAM_LR, "when": {"train.momentum": 0.9}}]}})[0]


def test_baseline_is_enqueued_under_its_branch_name_and_keeps_reported_figures():
    config = config_from_dict({**space(SGD_LR, ADAM_LR), "baselines": [
        {"name": "adam-in-range", "train.optimizer": "adam", "train.lr": 1.0e-4,
         "reported": {"accuracy": 0.3, "macro_f1": 0.25, "split": "test"}},
        {"name": "adam-outside", "train.optimizer": "adam", "train.lr": 5.0e-3}]})
    params, fixed = baseline_trial(config.baselines[0], config)
    assert params == {"train.optimizer": "adam", "train.lr[train.optimizer=adam|adamw]": 1.0e-4}
    assert "reported" not in fixed and "train.lr" not in fixed
    params, fixed = baseline_trial(config.baselines[1], config)
    assert params == {"train.optimizer": "adam"} and fixed["train.lr"] == 5.0e-3  # outside its branch: fixed
    study = optuna.create_study()
    enqueue_baselines(study, config)
    for expected_lr in (1.0e-4, 5.0e-3):
        trial = study.ask()
        values = suggest(trial, config.space, json.loads(trial.user_attrs.get("fixed", "{}")))
        assert values["train.optimizer"] == "adam" and values["train.lr"] == expected_lr
        study.tell(trial, 0.0)
    first = study.trials[0]
    assert json.loads(first.user_attrs["reported"]) == {"accuracy": 0.3, "macro_f1": 0.25, "split": "test",
                                                         "epoch": None, "source": "", "note": ""}
    assert "reported" not in study.trials[1].user_attrs


def test_reported_figures_are_validated():
    errors = errors_of({"baselines": [{"name": "x", "reported": {"accuracy": 48.2, "f1": 0.4}}]})
    assert "baselines[0].reported.accuracy: Input should be less than or equal to 1" in errors
    assert "baselines[0].reported.f1: Extra inputs are not permitted" in errors


def test_grid_sampler_refuses_branches():
    from alexnet_exp.sweep.search.samplers import make_sampler

    config = config_from_dict(space({**SGD_LR, "step": 0.01, "log": False}, {**ADAM_LR, "log": False, "step": 1.0e-4,
                                                                             "high": 1.0e-3}))
    with pytest.raises(ConfigError) as info:
        make_sampler("grid", {}, 0, config.space)
    assert info.value.errors == ["space.train.lr: the grid sampler cannot take a list of branches; give each choice "
                                 "its own categorical values, or use another sampler"]
