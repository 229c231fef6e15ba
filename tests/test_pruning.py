"""Fair pruning on real Optuna studies: warm-up per trial, ranking within one epoch budget, Hyperband per budget."""
import pickle

import optuna
import pytest

from alexnet_exp.config import ConfigError
from alexnet_exp.sweep import keys
from alexnet_exp.sweep.search.pruning import (
    BudgetHyperband,
    FairPruner,
    SameBudgetStudy,
    WarmupRule,
    make_pruner,
    record_budget,
    warmup_rule,
)

HIGH = [0.5, 0.6, 0.7]  # three finished trials: the median pruner's startup


def new_study(tmp_path, pruner, name="fair"):
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                               direction="maximize", pruner=pruner)


def finish(study, value, budget, schedule="none", steps=None):
    """A complete trial that reported `value` every epoch and asked the pruner each time, as the objective
    does (SuccessiveHalving and Hyperband record their rungs in that call)."""
    trial = study.ask()
    record_budget(trial, budget, schedule, {})
    for epoch in range(1, (steps or budget) + 1):
        trial.report(value, epoch)
        trial.should_prune()
    study.tell(trial, value)


def first_pruned_epoch(study, value, budget, schedule="none", options=None, attrs=None, lr_warmup=0):
    """The epoch at which a trial reporting `value` every epoch is pruned; None when it never is."""
    trial = study.ask()
    record_budget(trial, budget, schedule, options or {}, lr_warmup)
    for key, v in (attrs or {}).items():
        trial.set_user_attr(key, v)
    for epoch in range(1, budget + 1):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, value)
    return None


def test_warmup_is_a_fair_share_of_the_trials_own_schedule():
    rule = WarmupRule()
    assert rule.epochs(10, "none") == 3  # ceil(0.25 x 10)
    assert rule.epochs(4, "none") == 2  # the minimum: the first epochs are noise
    assert rule.epochs(10, "onecycle") == 3  # OneCycleLR peaks after 30% of its steps: epoch 3 of 10 ...
    assert rule.epochs(20, "onecycle") == 6  # ... epoch 6 of 20 (not 7: 0.3 x 20 in floating point)
    assert rule.epochs(7, "onecycle") == 3
    assert rule.epochs(20, "cosine") == 5
    assert rule.epochs(1, "none") == 1  # never beyond the trial's own epochs
    assert warmup_rule({"warmup_fraction": 0.5, "min_warmup_epochs": 1}).epochs(10, "none") == 5
    assert warmup_rule({"warmup_fraction": 0, "min_warmup_epochs": 1}).epochs(10, "none") == 1


def test_a_onecycle_trial_is_not_pruned_while_it_warms_up(tmp_path):
    study = new_study(tmp_path, make_pruner("median", {}, epochs=20))
    for value in HIGH:
        finish(study, value, budget=20)
    # Same hopeless values: a constant-rate trial is judged after a quarter of its 20 epochs, a onecycle one
    # only once its learning rate has peaked (epoch 6); Optuna's defaults judged both at epoch 2.
    assert first_pruned_epoch(study, 0.01, budget=20, schedule="none") == 5
    assert first_pruned_epoch(study, 0.01, budget=20, schedule="onecycle") == 6


def test_trials_of_another_epoch_budget_are_not_ranked_against(tmp_path):
    study = new_study(tmp_path, make_pruner("median", {}, epochs=10))
    for value in HIGH:
        finish(study, value, budget=20)
    assert first_pruned_epoch(study, 0.01, budget=10) is None  # no 10-epoch trial has finished yet
    for value in HIGH:
        finish(study, value, budget=10)
    assert first_pruned_epoch(study, 0.01, budget=10) == 3  # now it has 10-epoch company


def test_percentile_and_successive_halving_rank_within_the_budget(tmp_path):
    for name in ("percentile", "successive_halving"):
        study = new_study(tmp_path, make_pruner(name, {}, epochs=10), name=name)
        for value in HIGH:
            finish(study, value, budget=20)
        assert first_pruned_epoch(study, 0.01, budget=10) is None, name
        for value in HIGH:
            finish(study, value, budget=10)
        assert first_pruned_epoch(study, 0.01, budget=10) is not None, name


def test_hyperband_runs_per_budget_with_the_trials_own_epochs_as_resource(tmp_path):
    pruner = make_pruner("hyperband", {}, epochs=10)
    study = new_study(tmp_path, pruner)
    for _ in range(12):
        finish(study, 0.9, budget=10)
    assert first_pruned_epoch(study, 0.01, budget=10) is not None  # it prunes within a budget
    # A 4-epoch trial meets no 4-epoch rival: the 10-epoch trials' rungs are not its competition.
    assert first_pruned_epoch(study, 0.01, budget=4) is None
    assert pruner.for_budget(4)._max_resource == 4 and pruner.for_budget(10)._max_resource == 10
    # Each bracket sees only its own trials of its own budget (Optuna's bracket study reads the whole storage).
    inner = pruner.for_budget(10)
    assert isinstance(inner, BudgetHyperband)
    view = SameBudgetStudy(study, 10, 10)
    seen = []
    for bracket in range(inner._n_brackets):
        trials = inner._create_bracket_study(view, bracket).get_trials(deepcopy=False)
        assert all(t.user_attrs[keys.EPOCH_BUDGET] == 10 for t in trials)
        assert all(inner._get_bracket_id(view, t) == bracket for t in trials)
        seen += [t.number for t in trials]
    ten = [t.number for t in study.get_trials() if t.user_attrs[keys.EPOCH_BUDGET] == 10]
    assert sorted(seen) == sorted(ten)


def test_repeats_and_replays_are_never_pruned(tmp_path):
    study = new_study(tmp_path, make_pruner("median", {}, epochs=10))
    for value in HIGH:
        finish(study, value, budget=10)
    assert first_pruned_epoch(study, 0.01, budget=10, attrs={keys.REPEAT_OF: 1}) is None
    assert first_pruned_epoch(study, 0.01, budget=10, attrs={keys.REPORTED: '{"accuracy": 0.2}'}) is None
    assert first_pruned_epoch(study, 0.01, budget=10) == 3


def test_trials_recorded_without_a_budget_count_as_the_configs_epochs():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", {}, epochs=10))
    for value in HIGH:
        trial = study.ask()
        for epoch in range(1, 6):
            trial.report(value, epoch)
        study.tell(trial, value)
    hopeless = study.ask()
    for epoch in (1, 2):
        hopeless.report(0.01, epoch)
        assert not hopeless.should_prune()  # warm-up: 3 epochs of 10
    hopeless.report(0.01, 3)
    assert hopeless.should_prune()


def test_the_pruner_is_the_same_in_every_process(tmp_path):
    """Workers build it from the config, and it pickles: copies decide alike."""
    options = {"n_startup_trials": 2, "warmup_fraction": 0.1, "min_warmup_epochs": 1}
    study = new_study(tmp_path, make_pruner("median", options, epochs=10))
    for value in HIGH:
        finish(study, value, budget=10)
    trial = study.ask()
    record_budget(trial, 10, "none", options)
    trial.report(0.01, 1)
    frozen = study.get_trials(deepcopy=False)[-1]
    copies = [make_pruner("median", options, 10), pickle.loads(pickle.dumps(make_pruner("median", options, 10)))]
    assert [p.prune(study, frozen) for p in copies] == [True, True]
    assert frozen.user_attrs[keys.FIRST_JUDGED_EPOCH] == 1


def test_bad_pruner_names_and_options_are_config_errors():
    with pytest.raises(ConfigError, match="study.pruner: 'asha'; valid: median, percentile"):
        make_pruner("asha", {}, 10)
    with pytest.raises(ConfigError, match="study.pruner_options for median"):
        make_pruner("median", {"n_warmup": 2}, 10)
    with pytest.raises(ConfigError, match="warmup_fraction: 1.5; a share of each trial's epochs, from 0 to 1"):
        make_pruner("median", {"warmup_fraction": 1.5}, 10)
    with pytest.raises(ConfigError, match="min_warmup_epochs: 0; a whole number of epochs, 1 or more"):
        make_pruner("percentile", {"min_warmup_epochs": 0}, 10)
    with pytest.raises(ConfigError, match="max_resource: Hyperband's resource is each trial's own train.epochs"):
        make_pruner("hyperband", {"max_resource": 20}, 10)


@pytest.mark.parametrize("name,kind", [("median", optuna.pruners.MedianPruner),
                                       ("percentile", optuna.pruners.PercentilePruner),
                                       ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
                                       ("hyperband", optuna.pruners.HyperbandPruner)])
def test_pruners_by_name(name, kind):
    pruner = make_pruner(name, {}, epochs=10)
    assert isinstance(pruner, FairPruner) and isinstance(pruner.for_budget(10), kind)
    assert isinstance(make_pruner("none", {}, epochs=10), optuna.pruners.NopPruner)


@pytest.mark.parametrize("name", ["median", "percentile", "successive_halving", "hyperband"])
def test_no_trial_is_pruned_at_its_last_epoch(tmp_path, name):
    """Pruning at the last epoch throws away a result whose budget is spent: 1- and 2-epoch trials (`--epochs 1`)
    were judged only there, and a trial overtaken at its final epoch was lost."""
    study = new_study(tmp_path, make_pruner(name, {}, epochs=2), name=name)
    for value in HIGH * 3:
        finish(study, value, budget=2)
        finish(study, value, budget=1)
    assert first_pruned_epoch(study, 0.01, budget=2) is None
    assert first_pruned_epoch(study, 0.01, budget=1) is None
    if name == "median":  # the last epoch only: a hopeless 4-epoch trial is still pruned before it
        for value in HIGH:
            finish(study, value, budget=4)
        assert first_pruned_epoch(study, 0.01, budget=4) == 2


def test_a_trial_is_not_judged_while_its_learning_rate_warms_up(tmp_path):
    assert WarmupRule().epochs(20, "cosine", lr_warmup_epochs=6) == 7
    study = new_study(tmp_path, make_pruner("median", {}, epochs=20))
    for value in HIGH:
        finish(study, value, budget=20)
    assert first_pruned_epoch(study, 0.01, budget=20, schedule="cosine", lr_warmup=6) == 7
