"""Many workers on one study, and the faults they must survive. Real processes, real signals, real stores."""
import json
import os
import signal
import sys

import optuna
from optuna.trial import TrialState
from sweep_helpers import mlflow_runs, run_sweep, write_config
from waits import Launched

from alexnet_exp.sweep.search.budget import is_verdict


def launch(tmp_path, config, *flags, env=None) -> Launched:
    return Launched([sys.executable, "-m", "alexnet_exp.sweep", str(config), "--quiet", "--tracking-uri",
                     f"sqlite:///{tmp_path / 'mlflow.db'}", *flags],
                    cwd=tmp_path, env={**os.environ, **(env or {})})


def study_of(tmp_path, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'sweeps' / name / 'optuna.db'}")


def trial_states(tmp_path, name="tiny"):
    """A snapshot of a study's trials (state and epochs reported), for waits that follow its progress."""
    try:
        return [(t.number, t.state, len(t.intermediate_values)) for t in study_of(tmp_path, name).get_trials()]
    except Exception:  # not created yet, or the database being written
        return None


def running_trial_at_epoch_in(storage, name, epoch):
    def check():
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        except Exception:  # the study is still being created
            return None
        return next((t for t in trials if t.state == TrialState.RUNNING and "worker_pid" in t.user_attrs
                     and max(t.intermediate_values, default=0) >= epoch), None)
    return check


def running_trial_at_epoch(tmp_path, epoch):
    db = tmp_path / "sweeps" / "tiny" / "optuna.db"
    check = running_trial_at_epoch_in(f"sqlite:///{db}", "tiny", epoch)
    return lambda: check() if db.exists() else None


def assert_consistent(tmp_path, budget):
    trials = study_of(tmp_path).get_trials()
    assert sum(is_verdict(t) for t in trials) == budget
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1
    assert not [c for c in children if c.info.status == "RUNNING"]
    numbers = [int(c.data.tags["trial"]) for c in children]
    assert len(numbers) == len(set(numbers))  # one run per trial, no trial run twice
    ran = {t.number for t in trials if t.user_attrs.get("fail_kind") != "surplus"}
    assert set(numbers) == ran
    return trials, children


SLOW = dict(data={"synthetic_train_size": 1200}, model={"width": 0.25}, train={"epochs": 5})


def test_four_local_workers_share_one_budget(tmp_path):
    cfg = write_config(tmp_path / "s.yaml", study={"name": "tiny", "n_trials": 8, "sampler": "random",
                                                   "pruner": "none"})
    proc = launch(tmp_path, cfg, "--workers", "4")
    out = proc.finish()
    assert proc.returncode == 0, out
    assert "database is locked" not in out
    assert "started 4 workers" in out
    trials, children = assert_consistent(tmp_path, 8)
    assert len({c.data.tags.get("device") for c in children}) == 1
    pids = {t.user_attrs["worker_pid"] for t in trials if "worker_pid" in t.user_attrs}
    assert len(pids) >= 2  # the trials really were spread over processes


def test_injected_out_of_memory_fails_one_trial_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import torch

    from alexnet_exp.sweep import objective

    monkeypatch.chdir(tmp_path)
    real_train_run, calls = objective.train_run, []

    def second_trial_runs_out_of_memory(config, cache, on_epoch=None, **kwargs):
        # The fault injected where a too-large batch raises it on a GPU: inside training, after an epoch.
        calls.append(config)
        if len(calls) == 2:
            def on_epoch(metrics):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train_run(config, cache, on_epoch=on_epoch, **kwargs)

    monkeypatch.setattr(objective, "train_run", second_trial_runs_out_of_memory)
    cfg = write_config(tmp_path / "s.yaml")
    assert run_sweep(tmp_path, cfg) == 0
    trials = study_of(tmp_path).get_trials()
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["fail_kind"] == "out_of_memory"
    assert "out of memory" in trials[1].user_attrs["fail_reason"]
    assert [t.state for t in trials if t.number != 1] == [TrialState.COMPLETE] * 2
    assert_consistent(tmp_path, 3)
    # the parent's history is a step at the failed trial too, not a line drawn from trial 0 to trial 2
    client, parents, _ = mlflow_runs(tmp_path)
    best = client.get_metric_history(parents[0].info.run_id, "best_val_accuracy")
    assert sorted(m.step for m in best) == [0, 1, 2]
    assert [m.value for m in sorted(best, key=lambda m: m.step)][1] == trials[0].value


def test_killed_worker_trial_is_retried_from_its_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "s.yaml", **SLOW,
                       study={"name": "tiny", "n_trials": 3, "sampler": "random", "pruner": "none",
                              "heartbeat_seconds": 2})
    proc = launch(tmp_path, cfg, "--workers", "2")
    try:
        victim = proc.until(running_trial_at_epoch(tmp_path, 2), "a trial at epoch 2")
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        out = proc.finish()
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    trials, children = assert_consistent(tmp_path, 3)
    killed = next(t for t in trials if t.number == victim.number)
    # its end is recorded with the reason, like every other trial's
    assert killed.state == TrialState.FAIL and killed.user_attrs["fail_kind"] == "lost"
    assert "heartbeats" in killed.user_attrs["fail_reason"]
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert "fail_kind" not in retry.user_attrs  # the retry does not inherit the end of the trial it retries
    # the dead worker was replaced while budget remained
    assert f"pid {victim.user_attrs['worker_pid']}) died (signal SIGKILL) with budget left; replaced" in out
    assert retry.params == killed.params
    assert json.loads(retry.user_attrs["values"]) == json.loads(killed.user_attrs["values"])
    assert retry.user_attrs["resumed_from_epoch"] >= 2
    assert retry.state == TrialState.COMPLETE and len(retry.intermediate_values) == 5
    runs = {int(c.data.tags["trial"]): c for c in children}
    assert runs[victim.number].info.status == "FAILED"
    assert runs[retry.number].data.tags["retry_of_trial"] == str(victim.number)
    assert runs[retry.number].data.tags["retry_of_run"] == runs[victim.number].info.run_id


def test_sigterm_on_the_launcher_fails_running_trials_and_a_rerun_resumes(tmp_path):
    cfg = write_config(tmp_path / "s.yaml", **SLOW,
                       study={"name": "tiny", "n_trials": 3, "sampler": "random", "pruner": "none"})
    proc = launch(tmp_path, cfg, "--workers", "2")
    try:
        # epoch 2 reported: epoch 1's checkpoint is on disk (it is saved after epoch 1's report, so a trial
        # only at epoch 1 may have none yet, and then restarts from scratch: seen once in a full run)
        proc.until(running_trial_at_epoch(tmp_path, 2), "a trial at epoch 2")
        proc.send_signal(signal.SIGTERM)
        out = proc.finish()
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    trials = study_of(tmp_path).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.user_attrs.get("fail_kind") == "interrupted"]
    assert interrupted
    client, parents, children = mlflow_runs(tmp_path)
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert parents[0].info.status == "KILLED"

    rerun = launch(tmp_path, cfg)
    out = rerun.finish()
    assert rerun.returncode == 0, out
    assert "trial(s) queued to run again" in out
    trials, _ = assert_consistent(tmp_path, 3)
    resumed = [t for t in trials if t.system_attrs.get("failed_trial") in {i.number for i in interrupted}]
    assert resumed and all(t.params == next(i for i in interrupted if i.number == t.system_attrs["failed_trial"])
                           .params for t in resumed)
    assert any(t.user_attrs.get("resumed_from_epoch", 0) >= 1 for t in resumed)


def test_unreachable_storage_or_tracking_server_is_a_clear_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml")
    code = run_sweep(tmp_path, cfg, "--storage", "postgresql://alice:s3cret@127.0.0.1:9/optuna")
    err = capsys.readouterr().err
    assert code == 2 and "cannot open storage" in err and "s3cret" not in err and "alice:***@" in err
    from alexnet_exp.sweep import cli as sweep

    code = sweep.main([str(cfg), "--quiet", "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the MLflow tracking server at http://127.0.0.1:9" in err
    assert not (tmp_path / "mlflow.db").exists()


def test_a_worker_waiting_on_the_last_trials_of_others_says_why_once(monkeypatch, capsys):
    """A worker idle while other workers run the budget's last trials printed nothing: a scheduler's log
    showed a task doing nothing for an hour, with no reason."""
    from alexnet_exp.sweep import workers

    monkeypatch.setattr(workers, "POLL_SECONDS", 0.01)
    study = optuna.create_study()
    counts = iter([(1, 1)] * 5 + [(2, 0)])  # one finished, the last one running elsewhere; then it finishes
    why = workers.run_trials(study, lambda trial: 0.0, 2, None, after_trial=lambda s, t: None, max_errors=3,
                             count=lambda s: next(counts))
    assert why == "budget" and study.trials == []  # it sampled nothing over the budget
    out = capsys.readouterr().out
    assert out.count("waiting: the last 1 trial(s) of the budget run in other workers") == 1, out


class _Terminal:
    """A stand-in stderr that says it is a terminal, so that the progress bar is drawn (into it)."""

    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_the_progress_bar_counts_the_budgets_epochs(monkeypatch):
    """Counted in trials, the ETA sat still for five minutes, then jumped: it moves with every epoch now."""
    from alexnet_exp.sweep.progress import SweepProgress

    monkeypatch.setattr(sys, "stderr", _Terminal())
    progress = SweepProgress(total=4, done=1, epochs=5, metric="val_accuracy")
    bar = progress.bar
    assert bar is not None and (bar.total, bar.n) == (20, 5)  # one trial of four already done
    progress.trial_started(1, {})
    progress.epoch(1, 1, 0.5)
    progress.epoch(1, 2, 0.6)
    assert bar.n == 7
    assert bar.postfix.endswith("best=-")
    progress.trial_finished(1, "PRUNED", None, "pruned at epoch 2", 0.6, counts=True)
    assert bar.n == 10  # a verdict spends the trial's budget (a pruned trial's epochs left are not owed)
    assert bar.postfix == "best=0.6000"  # it showed the best before this trial until the next trial's epoch
    progress.trial_started(2, {})
    for epoch in (1, 2, 3):
        progress.epoch(2, epoch, 0.5)
    progress.trial_finished(2, "FAIL", None, "interrupted", 0.6, counts=False)
    assert bar.n == 10  # no verdict: its retry counts its epochs again
    progress.trial_started(3, {})
    progress.trial_resumed(3, 3, "from its checkpoint")
    assert bar.n == 13
    progress.trial_started(4, {"train.epochs": 8})  # a baseline with its own epochs
    assert bar.total == 23
    progress.close()
    assert "trial 3 resumes after epoch 3 of 5 (from its checkpoint)" in sys.stderr.buffer.getvalue()


def test_progress_written_to_a_file_is_plain_lines(capsys):
    from alexnet_exp.sweep.progress import SweepProgress

    progress = SweepProgress(total=2, done=0, epochs=2, metric="val_accuracy")  # not --quiet: stderr is a file
    assert progress.bar is None
    progress.trial_started(0, {})
    progress.epoch(0, 1, 0.5)
    progress.trial_finished(0, "COMPLETE", 0.5, "", 0.5, counts=True)
    progress.close()
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "trial 0 epoch 1/2 val_accuracy=0.5000" in out
