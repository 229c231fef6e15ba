"""Repeated seeds: the K best configurations trained again with S more seeds, the winner chosen by the mean of
its seeds on validation, and only then the test split, once."""
import json

import optuna
import pytest
from optuna.trial import TrialState
from sweep_helpers import mlflow_runs, run_sweep, write_config

from alexnet_exp.sweep import keys
from alexnet_exp.sweep.search.repeats import (
    chosen_configuration,
    config_groups,
    ensure_repeats,
    load_plan,
    repeat_key,
    top_configurations,
)
from alexnet_exp.sweep.search.seed_stats import seed_stats, within_noise
from alexnet_exp.sweep.stores.study_store import default_storage

REPEATS = {"name": "tiny", "n_trials": 4, "pruner": "none", "sampler": "random", "seed": 0,
           "repeats": {"top_k": 2, "seeds": 2}}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _study(name="tiny"):
    return optuna.load_study(study_name=name, storage=default_storage(name))


@pytest.mark.slow
def test_repeats_retrain_the_best_configurations_and_the_mean_chooses(in_tmp, capsys):
    config = write_config(in_tmp / "tiny.yaml", study=REPEATS)
    assert run_sweep(in_tmp, config) == 0
    out = capsys.readouterr().out
    study = _study()
    trials = study.get_trials()
    search = [t for t in trials if keys.REPEAT_OF not in t.user_attrs]
    repeats = [t for t in trials if keys.REPEAT_OF in t.user_attrs]
    assert len(search) == 4 and len(repeats) == 4  # K x S extra trials, no more
    plan = load_plan(study)
    top = top_configurations(search, 2, maximize=True)
    assert set(plan.seeds) == {t.number for t in top}
    for t in repeats:
        origin = trials[t.user_attrs[keys.REPEAT_OF]]
        values, original = json.loads(t.user_attrs[keys.VALUES]), json.loads(origin.user_attrs[keys.VALUES])
        assert values["train.seed"] in (1, 2) and original.get("train.seed", 0) == 0
        assert {k: v for k, v in values.items() if k != "train.seed"} == \
               {k: v for k, v in original.items() if k != "train.seed"}  # the same configuration, another seed
        assert t.state == TrialState.COMPLETE and not t.intermediate_values.keys() - set(range(1, 3))
    # seeds do change the result: the repeats are real trainings, not copies
    assert len({t.value for t in repeats} | {trials[n].value for n in plan.seeds}) > 2
    groups = config_groups(study, plan)
    # ranked on the fresh seeds (the repeats), the search seed that chose them left out
    assert groups[0].fresh.mean >= groups[1].fresh.mean and groups[0].stats.n == 3 and groups[0].fresh.n == 2
    # the test split: once, for the configuration with the best mean, over its three seeds' models
    assert study.user_attrs[keys.TEST_EVALUATED_TRIAL] == groups[0].trial.number
    assert study.user_attrs[keys.TEST_METRICS]["test_seeds"] == 3
    client, (parent,), children = mlflow_runs(in_tmp)
    assert len(children) == 8
    assert len(client.get_metric_history(parent.info.run_id, "test_accuracy")) == 1
    tested = [c for c in children if "test_accuracy" in c.data.metrics]
    assert sorted(int(c.data.tags["trial"]) for c in tested) == sorted(t.number for t in groups[0].members)
    assert f"best trial {groups[0].trial.number}" in out and "over 2 fresh seeds" in out
    # the report: the chosen configuration's test figures as the mean of its seeds' models, its seed statistics
    from alexnet_exp import report
    assert report.main(["--study", "tiny", "--tracking-uri", f"sqlite:///{in_tmp / 'mlflow.db'}"]) == 0
    text = (in_tmp / "reports" / "tiny" / "report.md").read_text()
    assert f"**Best trial {groups[0].trial.number}**" in text
    assert "mean ± std of its 3 seeds' models" in text and groups[0].fresh.text() in text
    # a rerun finds everything done: no trial, no second test evaluation
    assert run_sweep(in_tmp, config) == 0
    assert len(_study().get_trials()) == 8
    assert len(client.get_metric_history(parent.info.run_id, "test_accuracy")) == 1


def _ask(study):
    return study.ask({"train.lr": optuna.distributions.FloatDistribution(0.0, 1.0)})


def test_plan_and_errored_repeats_are_queued_again():
    """The plan is made once per search budget; a repeat that raised an error is queued again, a finished one
    or one Optuna is about to retry (lost) is not."""
    study = optuna.create_study(direction="maximize")
    # trial 4 has trial 1's configuration: the two count once, by the better of them
    for lr, value in ((0.01, 0.5), (0.02, 0.9), (0.03, 0.7), (0.04, 0.9), (0.02, 0.95)):
        study.enqueue_trial({"train.lr": lr}, user_attrs={keys.VALUES: json.dumps({"train.lr": lr})})
        study.tell(_ask(study), value)
    plan = ensure_repeats(study, n_trials=5, top_k=2, seeds=2, default_seed=7)
    assert plan.seeds == {4: [8, 9], 3: [8, 9]} and plan.after_trial == 4
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(repeat_key(t) for t in waiting) == [(3, 8), (3, 9), (4, 8), (4, 9)]
    assert sorted(t.system_attrs["fixed_params"]["train.lr"] for t in waiting) == [0.02, 0.02, 0.04, 0.04]
    # run them: one completes, one raises an error, one is lost (its retry is on its way), one is still queued
    for kind, value in (("done", 0.91), ("error", None), ("lost", None)):
        trial = _ask(study)
        if value is not None:
            study.tell(trial, value)
        else:
            trial.set_user_attr(keys.FAIL_KIND, kind)
            study.tell(trial, state=TrialState.FAIL)
    assert ensure_repeats(study, n_trials=5, top_k=2, seeds=2, default_seed=7) == plan  # made once
    queued = sorted(repeat_key(t) for t in study.get_trials(states=(TrialState.WAITING,)))
    assert queued == [(3, 9), (4, 9)]  # the errored (3, 9) again, the untouched (4, 9) once, not the lost (4, 8)


def test_a_larger_budget_searches_on_and_plans_again(in_tmp):
    """Resumed with more trials after its repeats: the search goes on (no trial refused as surplus), and the
    repeats are planned again among all search trials, keeping those already trained."""
    config = write_config(in_tmp / "tiny.yaml", study={**REPEATS, "n_trials": 2, "repeats": {"top_k": 1, "seeds": 1}})
    assert run_sweep(in_tmp, config) == 0
    first = load_plan(_study())
    assert first.n_trials == 2 and first.planned == 1 and len(_study().trials) == 3
    assert run_sweep(in_tmp, config, "--trials", "4") == 0
    study = _study()
    search = [t for t in study.trials if keys.REPEAT_OF not in t.user_attrs]
    assert len(search) == 4 and all(t.user_attrs.get(keys.FAIL_KIND) != keys.SURPLUS for t in search)
    plan = load_plan(study)
    assert plan.n_trials == 4 and plan.after_trial >= 4
    repeats = [t for t in study.trials if keys.REPEAT_OF in t.user_attrs]
    # the first plan's repeat is kept; a new one only if another configuration is now the best
    assert len(repeats) == (1 if plan.seeds == first.seeds else 2)
    assert study.user_attrs[keys.TEST_EVALUATED_TRIAL] == config_groups(study, plan)[0].trial.number


def test_ties_are_called_ties():
    a, b = seed_stats([0.80, 0.82, 0.81]), seed_stats([0.79, 0.83, 0.80])
    assert within_noise(a, b)
    assert not within_noise(seed_stats([0.90, 0.91, 0.905]), seed_stats([0.80, 0.81, 0.805]))
    # one seed each: equal values are a tie; with the validation split's size, so is a gap inside its noise
    assert within_noise(seed_stats([1.0]), seed_stats([1.0]))
    assert not within_noise(seed_stats([0.48]), seed_stats([0.47]))
    assert within_noise(seed_stats([0.48]), seed_stats([0.47]), split_size=5000)
    assert not within_noise(seed_stats([0.48]), seed_stats([0.40]), split_size=5000)
    s = seed_stats([0.80, 0.82, 0.81])
    assert s.mean == pytest.approx(0.81) and s.std == pytest.approx(0.01)
    assert s.low == pytest.approx(0.81 - 4.302653 * 0.01 / 3 ** 0.5, rel=1e-5)


def test_an_interrupted_repeat_resumes_and_no_trial_is_sampled_meanwhile(tmp_path):
    """A repeat stopped by SIGTERM (a preempted --join task) is queued to resume once, by the workers still in
    the repeats' phase; while nothing is queued they wait instead of sampling trials that would be surplus."""
    from alexnet_exp.sweep.stores.study_store import requeue_unfinished
    from alexnet_exp.sweep.workers import run_trials

    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'o.db'}")
    study.enqueue_trial({"train.lr": 0.01}, user_attrs={keys.VALUES: json.dumps({"train.lr": 0.01})})
    study.tell(_ask(study), 0.5)
    plan = ensure_repeats(study, n_trials=1, top_k=1, seeds=1, default_seed=0)
    trial = _ask(study)
    trial.set_user_attr(keys.FAIL_KIND, keys.INTERRUPTED)
    study.tell(trial, state=TrialState.FAIL)
    for _ in range(2):  # two workers topping up, one after the other
        requeue_unfinished(study)
        ensure_repeats(study, n_trials=1, top_k=1, seeds=1, default_seed=0)
    (resume,) = study.get_trials(states=(TrialState.WAITING,))
    assert repeat_key(resume) == (0, 1) and resume.system_attrs["failed_trial"] == trial.number
    study.tell(_ask(study), 0.6)  # another worker takes it

    calls = []
    why = run_trials(study, lambda t: calls.append(t) or 0.0, plan.planned, timeout=1.5, after_trial=lambda s, t: None,
                     max_errors=3, count=lambda s: (0, 0), only_queued=True)  # as if the repeat were still missing
    assert why == "timeout" and calls == [] and len(study.trials) == 3


def test_repeated_configurations_are_ranked_on_their_fresh_seeds():
    """Chosen on one seed among many, a configuration's search seed is biased upward: trial 0 (0.95 on its
    search seed, 0.70 and 0.72 on fresh ones) must not beat trial 1 (0.76; 0.73, 0.74), though the mean of all
    its seeds (0.79 against 0.743) says it does."""
    study = optuna.create_study(direction="maximize")
    for lr, value in ((0.01, 0.95), (0.02, 0.76)):
        study.enqueue_trial({"train.lr": lr}, user_attrs={keys.VALUES: json.dumps({"train.lr": lr})})
        study.tell(_ask(study), value)
    plan = ensure_repeats(study, n_trials=2, top_k=2, seeds=2, default_seed=0)
    fresh = {(0, 1): 0.70, (0, 2): 0.72, (1, 1): 0.73, (1, 2): 0.74}
    for _ in range(4):
        trial = _ask(study)
        study.tell(trial, fresh[repeat_key(study._storage.get_trial(trial._trial_id))])
    groups = config_groups(study, plan)
    assert [g.trial.number for g in groups] == [1, 0]
    best = groups[0]
    assert best.fresh.n == 2 and best.fresh.mean == pytest.approx(0.735)
    assert best.stats.n == 3 and best.stats.mean == pytest.approx((0.76 + 0.73 + 0.74) / 3)
    assert groups[1].stats.mean > best.stats.mean  # what the old ranking went by
    # The one reading of the choice (test evaluation, parent run, report): the group's search trial, or, for a
    # study resumed with `repeats` taken out of its config, its best single search trial as the config says.
    trial, members, group = chosen_configuration(study, repeats=True)
    assert trial.number == 1 and group.fresh == best.fresh
    assert [m.number for m in members] == [m.number for m in best.members] and len(members) == 3
    trial, members, group = chosen_configuration(study, repeats=False)
    assert trial.number == 0 and [m.number for m in members] == [0] and group is None
