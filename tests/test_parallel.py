"""Parallel sweeps that are correct: distinct trials, simultaneous starts on fresh stores, a killed launcher,
passing faults, recorded ends. Real Optuna and MLflow stores, real processes and signals."""
import json
import os
import re
import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sweep_helpers import mlflow_runs, run_sweep, write_config
from test_workers import SLOW, launch, running_trial_at_epoch, study_of, trial_states
from waits import until

from alexnet_exp.config import config_from_dict
from alexnet_exp.sweep.search.budget import is_verdict
from alexnet_exp.sweep.search.samplers import make_sampler
from alexnet_exp.sweep.search.space import suggest

SPACE = config_from_dict({"space": {
    "train.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
    "train.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "train.epochs": {"type": "int", "low": 1, "high": 4},
}}).space
GRID_SPACE = {k: v for k, v in SPACE.items() if k != "train.lr"}  # 3 x 4 = 12 grid points


def sampled_in_lockstep(name, space, processes=3, rounds=3, seed=0):
    """`processes` samplers made alike (as in processes started together) asking in turn on one storage."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.InMemoryStorage()
    studies = [optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                   sampler=make_sampler(name, {}, seed, space)) for _ in range(processes)]
    seen = []
    for _ in range(rounds):
        asked = [(s, s.ask()) for s in studies]  # all running at once, before any result
        for _, trial in asked:
            values = suggest(trial, space)
            seen.append(json.dumps(values, sort_keys=True))
        for study, trial in asked:
            study.tell(trial, float(len(seen) % 5))
    return seen


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "qmc", "gp"])
def test_processes_started_together_sample_distinct_trials(name):
    # Seeded alike, Optuna's tpe, random and cmaes samplers drew 3, 3 and 7 distinct of these 9. qmc's shared
    # point counter is read then written, a race that asks made in turn cannot show: here it must not regress.
    seen = sampled_in_lockstep(name, SPACE)
    assert len(set(seen)) == len(seen), seen


def test_grid_points_are_not_run_twice_by_parallel_processes():
    seen = sampled_in_lockstep("grid", GRID_SPACE, processes=3, rounds=3)
    assert len(set(seen)) == len(seen) == 9


@pytest.mark.parametrize("name", ["tpe", "random", "qmc"])
def test_one_process_reproduces_its_trials(name):
    assert sampled_in_lockstep(name, SPACE, processes=1, rounds=6) == \
        sampled_in_lockstep(name, SPACE, processes=1, rounds=6)
    assert sampled_in_lockstep(name, SPACE, processes=1, rounds=6) != \
        sampled_in_lockstep(name, SPACE, processes=1, rounds=6, seed=1)


def test_same_yaml_and_seed_give_the_same_trials_end_to_end(tmp_path, monkeypatch):
    params = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        monkeypatch.chdir(folder)
        cfg = write_config(folder / "s.yaml", train={"epochs": 1},
                           study={"name": "tiny", "n_trials": 3, "sampler": "tpe", "pruner": "none"})
        assert run_sweep(folder, cfg) == 0
        params.append([t.params for t in study_of(folder).get_trials()])
    assert params[0] == params[1] and len({json.dumps(p, sort_keys=True) for p in params[0]}) == 3


def assert_one_study_one_parent_one_test(tmp_path, budget, trials, children, parents):
    assert sum(is_verdict(t) for t in trials) == budget  # the budget exact
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    sampled = [json.dumps(t.params, sort_keys=True) for t in trials
               if t.params and "failed_trial" not in t.system_attrs]  # retries repeat their trial on purpose
    assert len(set(sampled)) == len(sampled), sampled  # no configuration twice
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    tested = [c for c in children if "test_accuracy" in c.data.metrics]
    assert len(tested) == 1  # one held-out test evaluation, of the best trial
    assert "test_accuracy" in parents[0].data.metrics
    return tested[0]


def test_launchers_started_together_on_fresh_stores(tmp_path):
    """Four launchers at the same instant on fresh SQLite stores (Optuna and MLflow)."""
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       baselines=[{"name": "hand-tuned", "train.optimizer": "sgd", "train.lr": 0.03}],
                       study={"name": "tiny", "n_trials": 8, "sampler": "tpe", "pruner": "none"})
    procs = [launch(tmp_path, cfg) for _ in range(4)]
    outs = [p.finish() for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out, out
    trials = study_of(tmp_path).get_trials()
    client, parents, children = mlflow_runs(tmp_path)
    best = assert_one_study_one_parent_one_test(tmp_path, 8, trials, children, parents)
    assert len(client.get_metric_history(best.info.run_id, "test_accuracy")) == 1
    assert [t.user_attrs.get("baseline") for t in trials if t.user_attrs.get("baseline")] == ["hand-tuned"]
    assert len({t.user_attrs["worker_pid"] for t in trials if "worker_pid" in t.user_attrs}) >= 2
    assert sum("1 baseline(s) enqueued" in out for out in outs) == 1
    # the stores are sound for later commands
    from alexnet_exp import report

    assert report.main(["--study", "tiny", "--storage", f"sqlite:///{tmp_path / 'sweeps' / 'tiny' / 'optuna.db'}",
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out",
                        str(tmp_path / "reports")]) == 0


def test_workers_of_one_launcher_sample_distinct_trials(tmp_path):
    """The reported case: 3 workers, 9 trials held 4 distinct configurations."""
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       study={"name": "tiny", "n_trials": 9, "sampler": "tpe", "pruner": "none"})
    proc = launch(tmp_path, cfg, "--workers", "3")
    out = proc.finish()
    assert proc.returncode == 0, out
    trials = study_of(tmp_path).get_trials()
    _, parents, children = mlflow_runs(tmp_path)
    assert_one_study_one_parent_one_test(tmp_path, 9, trials, children, parents)
    # parallel first trials log the same new dataset input at once; that race once failed one of them
    assert [t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL] == []


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has ended; nobody may reap it in a container


def test_a_killed_launcher_leaves_no_orphans(tmp_path):
    cfg = write_config(tmp_path / "s.yaml", **SLOW,
                       study={"name": "tiny", "n_trials": 4, "sampler": "random", "pruner": "none"})
    proc = launch(tmp_path, cfg, "--workers", "2")
    try:
        victim = proc.until(running_trial_at_epoch(tmp_path, 2), "a trial at epoch 2")  # 1 checkpointed
        started = re.search(r"started 2 workers \(pids (\d+), (\d+)\)", proc.output)
        workers = [int(pid) for pid in started.groups()]
        assert victim.user_attrs["worker_pid"] in workers
        os.kill(proc.pid, signal.SIGKILL)
        # The workers notice and stop as SIGTERM would; one that went on training would move its trial on.
        output = until(lambda: not any(_alive(w) for w in workers) and proc.finish(),
                       "the workers to stop without their launcher", progress=lambda: trial_states(tmp_path))
    finally:
        proc.kill()
    trials = study_of(tmp_path).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = next(t for t in trials if t.number == victim.number)
    assert interrupted.user_attrs["fail_kind"] == "interrupted"
    assert sum(is_verdict(t) for t in trials) < 4  # it did not finish the budget unsupervised
    _, parents, children = mlflow_runs(tmp_path)
    assert not [c.data.tags.get("trial") for c in children if c.info.status == "RUNNING"], output
    assert parents[0].info.status == "KILLED"

    rerun = launch(tmp_path, cfg)  # resumable: the interrupted trial goes on from its checkpoint
    out = rerun.finish()
    assert rerun.returncode == 0, out
    trials = study_of(tmp_path).get_trials()
    resumed = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    # finished (complete, or stalled: which trial was running when the launcher died varies)
    assert is_verdict(resumed) and resumed.user_attrs["resumed_from_epoch"] >= 1
    assert sum(is_verdict(t) for t in trials) == 4


def test_a_passing_fault_does_not_wedge_the_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    blocker = tmp_path / "sweeps" / "tiny" / "checkpoints"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the checkpoint folder belongs: no checkpoint can be written")
    assert run_sweep(tmp_path, cfg) == 3  # stopped because of errors: non-zero, and it says so
    assert "stopped because trials kept raising errors" in capsys.readouterr().err
    trials = study_of(tmp_path).get_trials()
    assert len(trials) == 3 and all(t.user_attrs["fail_kind"] == "error" for t in trials)

    blocker.unlink()  # the fault has passed
    assert run_sweep(tmp_path, cfg) == 0
    trials = study_of(tmp_path).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_a_failing_clean_up_still_records_the_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       study={"name": "tiny", "n_trials": 1, "sampler": "random", "pruner": "none"})
    # A folder where trial 0's checkpoint goes: writing it fails, and so does removing it in the clean-up.
    (tmp_path / "sweeps" / "tiny" / "checkpoints" / "trial_00000.pt").mkdir(parents=True)
    assert run_sweep(tmp_path, cfg) == 0
    trials = study_of(tmp_path).get_trials()
    first = trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_kind"] == "error"
    assert "IsADirectoryError" in first.user_attrs["fail_reason"]
    client, _, children = mlflow_runs(tmp_path)
    run = next(c for c in children if c.data.tags["trial"] == "0")
    assert run.info.status == "FAILED" and run.data.tags["fail_kind"] == "error"
    assert "error.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert trials[1].state == TrialState.COMPLETE  # made up by the next trial


def test_an_error_after_training_is_recorded_with_its_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       study={"name": "tiny", "n_trials": 1, "sampler": "random", "pruner": "none"})
    weights = tmp_path / "sweeps" / "tiny" / "weights"  # a file where the best weights' folder belongs
    weights.parent.mkdir(parents=True)
    weights.write_text("not a folder")
    assert run_sweep(tmp_path, cfg) == 3  # every trial failed the same way: stopped, and says so
    first = study_of(tmp_path).get_trials()[0]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_kind"] == "error"
    client, _, children = mlflow_runs(tmp_path)
    run = next(c for c in children if c.data.tags["trial"] == "0")
    assert run.info.status == "FAILED" and run.data.tags["fail_kind"] == "error"
    error = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
    assert "save_weights" in open(error).read()  # the traceback of where it failed


@pytest.mark.parametrize("raw,message", [
    ("", "the file is empty"),
    ("# nothing but a comment\n", "the file is empty"),
    ("model: {arch: alexnet}\naugment: {input_size: 16}\n", "augment.input_size: 16 px is too small for model.arch "
                                                          "alexnet"),
    ("space:\n  augment.input_size: {type: categorical, choices: [16, 32]}\n",
     "space.augment.input_size: 16 px is too small for model.arch alexnet_cifar"),
    ("space:\n  model.arch: {type: categorical, choices: [alexnet_cifar, alexnet]}\naugment: {input_size: 32}\n",
     "augment.input_size: 32 px is too small for model.arch alexnet"),
    ("baselines:\n  - {name: b, augment.input_size: 16}\n", "baselines[0]: 16 px is too small"),
])
def test_bad_input_is_refused_before_any_state(tmp_path, monkeypatch, capsys, raw, message):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(raw)
    assert run_sweep(tmp_path, cfg) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()


def test_scheduler_steps_in_any_order_and_all_at_once(tmp_path):
    """What a scheduler does: workers may start before the set-up, set-up and finish steps may run twice."""
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       study={"name": "tiny", "n_trials": 4, "sampler": "tpe", "pruner": "none"})
    early = launch(tmp_path, cfg, "--finalize", "--wait", "0")  # nothing set up yet: a clear error, no study
    out = early.finish()
    assert early.returncode == 2 and "is not set up" in out and "--init-only" in out, out

    joins = [launch(tmp_path, cfg, "--join", "--wait", "900") for _ in range(2)]  # before the set-up
    for join in joins:
        join.until(lambda: "not set up yet: waiting up to" in join.output, "the joined worker to wait for the set-up")
    inits = [launch(tmp_path, cfg, "--init-only") for _ in range(2)]
    for p in inits:
        out = p.finish()
        assert p.returncode == 0 and "set up, no trial started" in out, out
    for p in joins:
        out = p.finish()
        assert p.returncode == 0 and "Traceback" not in out, out
    _, parents, _ = mlflow_runs(tmp_path)
    assert parents[0].info.status == "RUNNING"  # until the finish step
    late = launch(tmp_path, cfg, "--join")  # a spare task of the array: nothing to do, and it says why
    out = late.finish()
    assert late.returncode == 0 and "nothing left to run, the budget is met (4/4" in out and "--finalize" in out, out
    finals = [launch(tmp_path, cfg, "--finalize") for _ in range(2)]
    for p in finals:
        out = p.finish()
        assert p.returncode == 0 and "held-out test accuracy" in out, out
    later = launch(tmp_path, cfg, "--join")
    out = later.finish()
    assert later.returncode == 0 and "nothing left to run" in out and "the study is finished" in out, out
    trials = study_of(tmp_path).get_trials()
    client, parents, children = mlflow_runs(tmp_path)
    best = assert_one_study_one_parent_one_test(tmp_path, 4, trials, children, parents)
    assert len(client.get_metric_history(best.info.run_id, "test_accuracy")) == 1
    # both joined workers trained (a trial one of them asked for as the other took the last slot is surplus:
    # failed at once, before it records a worker)
    assert len({t.user_attrs["worker_pid"] for t in trials if t.user_attrs.get("fail_kind") != "surplus"}) == 2


def test_finalize_before_the_budget_is_met_touches_no_test_split(tmp_path):
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    init = launch(tmp_path, cfg, "--init-only")
    assert init.exit_code() == 0
    final = launch(tmp_path, cfg, "--finalize")
    out = final.finish()
    assert final.returncode == 4 and "the budget is not met (0/2" in out, out
    _, parents, children = mlflow_runs(tmp_path)
    assert not children and "test_accuracy" not in parents[0].data.metrics
    assert parents[0].info.status == "KILLED"


def test_a_joined_worker_stopped_by_its_scheduler_leaves_nothing_running(tmp_path):
    """scancel or preemption: SIGTERM to a `--join` worker. Its trial is interrupted, the parent run closed; a
    later worker resumes the trial and the finish step closes the study."""
    cfg = write_config(tmp_path / "s.yaml", **SLOW,
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    assert launch(tmp_path, cfg, "--init-only").exit_code() == 0
    worker = launch(tmp_path, cfg, "--join")
    try:
        # epoch 2 reported: epoch 1's checkpoint is written (a signal between a report and its checkpoint would
        # leave the retry nothing to resume from; that is a correct outcome, not the one this test is about)
        victim = worker.until(running_trial_at_epoch(tmp_path, 2), "a trial at epoch 2")
        worker.send_signal(signal.SIGTERM)
        out = worker.finish()
    finally:
        worker.kill()
    assert worker.returncode == 130, out
    trial = next(t for t in study_of(tmp_path).get_trials() if t.number == victim.number)
    assert trial.user_attrs["fail_kind"] == "interrupted"
    _, parents, children = mlflow_runs(tmp_path)
    assert parents[0].info.status == "KILLED" and not [c for c in children if c.info.status == "RUNNING"]

    again = launch(tmp_path, cfg, "--join")  # only a worker again: it queues the interrupted trial to resume
    out = again.finish()
    assert again.returncode == 0 and "trial(s) queued to run again" in out, out
    trials = study_of(tmp_path).get_trials()
    resumed = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs["resumed_from_epoch"] >= 1
    final = launch(tmp_path, cfg, "--finalize")
    out = final.finish()
    assert final.returncode == 0, out
    _, parents, _ = mlflow_runs(tmp_path)
    assert parents[0].info.status == "FINISHED"
