"""Faults that used to lose work (issue 19), each injected by the test with real processes and stores."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from disks import tmpfs
from optuna.trial import TrialState
from sweep_helpers import mlflow_runs, run_sweep, write_config
from test_workers import study_of
from waits import Launched, until

from alexnet_exp.sweep.stores.tracking import Tracker

# One process of the dataset race: open the store, make a run, then at each of ROUNDS barriers log a dataset
# input that no run has logged yet (a new digest per round), as parallel first trials do.
RACER = """
import sys, time
from pathlib import Path
from alexnet_exp.sweep.stores.tracking import Tracker
uri, folder, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
tracker = Tracker(uri, "race", system_metrics=False)
run = tracker.client.create_run(tracker.experiment_id).info.run_id
for r in range(rounds):
    (folder / f"ready-{r}-{run}").touch()
    while not (folder / f"go-{r}").exists():
        time.sleep(0.001)
    tracker.log_dataset(run, "synthetic", f"digest{r}", "synthetic", {"training": "{}", "validation": "{}"})
print("logged", run)
"""


def test_runs_logging_the_same_new_dataset_at_once_all_succeed(tmp_path):
    """--workers 3 on a fresh store failed a first trial with `UNIQUE constraint failed: datasets...`: eight
    processes released together log the same new dataset, three times; without the fix most of them fail."""
    processes, rounds = 8, 3
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "race", system_metrics=False)  # the launcher's set-up: the store and the experiment exist
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    procs = [Launched([sys.executable, str(script), uri, str(tmp_path), str(rounds)]) for _ in range(processes)]
    for r in range(rounds):
        def all_ready():
            assert all(p.poll() is None for p in procs), [p.finish() for p in procs if p.poll() is not None]
            return len(list(tmp_path.glob(f"ready-{r}-*"))) == processes
        until(all_ready, f"every process at barrier {r}", poll=0.01,
              progress=lambda: len(list(tmp_path.glob("ready-*"))))
        (tmp_path / f"go-{r}").touch()
    outs = [p.finish() for p in procs]
    failed = [out for p, out in zip(procs, outs) if p.returncode != 0]
    assert not failed, failed[0]
    tracker = Tracker(uri, "race", system_metrics=False)
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == processes
    for run in runs:  # every run holds every round's dataset, each once
        digests = sorted(i.dataset.digest for i in run.inputs.dataset_inputs)
        assert digests == sorted(f"digest{r}-{c}" for r in range(rounds) for c in ("training", "validation"))


def _interrupt_first_trial_at_epoch(monkeypatch, epoch, trial_call=1):
    """Ctrl-C in the `trial_call`-th trial's `epoch`, after the checkpoints of the epochs before it were written."""
    from alexnet_exp.sweep import objective

    real_train_run = objective.train_run
    calls = []

    def interrupted_once(config, cache, on_epoch=None, **kwargs):
        calls.append(config)

        def stop(metrics):
            if len(calls) == trial_call and metrics.epoch == epoch:
                raise KeyboardInterrupt
            on_epoch(metrics)
        return real_train_run(config, cache, on_epoch=stop, **kwargs)

    monkeypatch.setattr(objective, "train_run", interrupted_once)
    return real_train_run


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "another configuration"])
def test_a_checkpoint_that_does_not_load_is_moved_aside_and_the_trial_restarts(tmp_path, monkeypatch, capsys, damage):
    """A truncated checkpoint failed the retry in 1 s with PyTorch's "failed reading zip archive" (no file
    named), and the trial was lost for good."""
    from alexnet_exp.sweep import objective

    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 3},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    real_train_run = _interrupt_first_trial_at_epoch(monkeypatch, 3)
    assert run_sweep(tmp_path, cfg) == 130
    checkpoint = tmp_path / "sweeps" / "tiny" / "checkpoints" / "trial_00000.pt"
    good = torch.load(checkpoint, weights_only=True)
    assert good["epoch"] == 2
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    elif damage == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, checkpoint)
    else:
        torch.save({**good, "config_fingerprint": "0123456789abcdef"}, checkpoint)
    monkeypatch.setattr(objective, "train_run", real_train_run)
    capsys.readouterr()
    assert run_sweep(tmp_path, cfg) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {checkpoint}" in err and "the trial restarts from epoch 1" in err
    assert (tmp_path / "sweeps" / "tiny" / "checkpoints" / "trial_00000.pt.corrupt").is_file()
    trials = study_of(tmp_path).get_trials()
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == TrialState.COMPLETE and "resumed_from_epoch" not in retry.user_attrs
    assert str(checkpoint) in retry.user_attrs["checkpoint_discarded"]
    assert sorted(retry.intermediate_values) == [1, 2, 3]  # every epoch trained again, none taken on trust
    _, _, children = mlflow_runs(tmp_path)
    run = next(c for c in children if c.data.tags["trial"] == str(retry.number))
    assert "restarts from epoch 1" in run.data.tags["checkpoint_discarded"]
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2


def test_a_sound_checkpoint_is_resumed(tmp_path, monkeypatch, capsys):
    """The other side of the check above: an interrupted trial's own checkpoint is trusted and resumed."""
    from alexnet_exp.sweep import objective

    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 3},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    real_train_run = _interrupt_first_trial_at_epoch(monkeypatch, 3)
    assert run_sweep(tmp_path, cfg) == 130
    monkeypatch.setattr(objective, "train_run", real_train_run)
    assert run_sweep(tmp_path, cfg) == 0
    retry = next(t for t in study_of(tmp_path).get_trials() if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] == 2
    assert "checkpoint_discarded" not in retry.user_attrs
    # and the terminal says so: not only "started (3 epochs)"
    assert f"trial {retry.number} resumes after epoch 2 of 3" in capsys.readouterr().out
    # the report counts the interrupted try apart from failures, and times the retry over both tries
    from alexnet_exp.report.data import load_study_data

    data = load_study_data("tiny", f"sqlite:///{tmp_path / 'sweeps' / 'tiny' / 'optuna.db'}",
                           f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert data.counts() == {"COMPLETE": 2, "INTERRUPTED": 1}
    rows = {r.number: r for r in data.trials}
    first = study_of(tmp_path).get_trials()[0]
    alone = (retry.datetime_complete - retry.datetime_start).total_seconds()
    assert rows[retry.number].tries == 2
    assert rows[retry.number].duration_s == pytest.approx(alone + rows[0].duration_s)
    assert rows[0].duration_s == pytest.approx((first.datetime_complete - first.datetime_start).total_seconds())


def _baseline_raises(monkeypatch, tries):
    """The baseline's training raises PermissionError (an unwritable checkpoint folder) on its first `tries`
    tries; every other trial trains."""
    from alexnet_exp.sweep import objective

    real_train_run = objective.train_run
    failed = []

    def flaky(config, cache, **kwargs):
        if config.train.lr == BASELINE["train.lr"] and len(failed) < tries:
            failed.append(config)
            raise PermissionError(13, "Permission denied", "sweeps/tiny/checkpoints/trial_00000.pt")
        return real_train_run(config, cache, **kwargs)

    monkeypatch.setattr(objective, "train_run", flaky)
    return failed


BASELINE = {"name": "hand-tuned", "train.optimizer": "sgd", "train.lr": 0.03}


def test_a_baseline_that_raises_an_error_is_tried_again_before_new_samples(tmp_path, monkeypatch):
    """An unwritable checkpoint folder failed healthy trials as `error`, and the baseline was never trained
    again: the study "finished" without it."""
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1}, baselines=[BASELINE],
                       study={"name": "tiny", "n_trials": 3, "sampler": "random", "pruner": "none"})
    failed = _baseline_raises(monkeypatch, tries=1)
    assert run_sweep(tmp_path, cfg) == 0
    assert len(failed) == 1
    trials = study_of(tmp_path).get_trials()
    first, retry = trials[0], trials[1]  # the retry runs next, before any sample
    assert first.user_attrs["baseline"] == "hand-tuned" and first.user_attrs["fail_kind"] == "error"
    assert "Permission denied" in first.user_attrs["fail_reason"]
    assert retry.system_attrs["failed_trial"] == 0 and retry.user_attrs["baseline"] == "hand-tuned"
    assert retry.state == TrialState.COMPLETE and retry.params == first.params
    assert [t.state for t in trials[2:]] == [TrialState.COMPLETE] * 2  # the budget: 3 verdicts, the baseline's one


def test_a_baseline_out_of_tries_is_reported_and_tried_again_by_a_rerun(tmp_path, monkeypatch):
    from alexnet_exp import report
    from alexnet_exp.sweep import objective

    real_train_run = objective.train_run
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1}, baselines=[BASELINE],
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    failed = _baseline_raises(monkeypatch, tries=99)
    assert run_sweep(tmp_path, cfg) == 3  # three tries, three errors: the worker stops for them
    assert len(failed) == 3
    trials = study_of(tmp_path).get_trials()
    assert [t.user_attrs.get("baseline") for t in trials] == ["hand-tuned"] * 3
    assert all(t.user_attrs["fail_kind"] == "error" for t in trials)
    assert report.main(["--study", "tiny", "--storage", f"sqlite:///{tmp_path / 'sweeps' / 'tiny' / 'optuna.db'}",
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out",
                        str(tmp_path / "reports")]) == 0
    text = (tmp_path / "reports" / "tiny" / "report.md").read_text()
    assert "Baseline `hand-tuned` has no result" in text
    assert all(f"trial {t.number}: error: PermissionError" in text for t in trials)

    monkeypatch.setattr(objective, "train_run", real_train_run)  # the fault has passed
    assert run_sweep(tmp_path, cfg) == 0
    trials = study_of(tmp_path).get_trials()
    tried = [t for t in trials if t.user_attrs.get("baseline") == "hand-tuned"]
    assert len(tried) == 4 and tried[-1].state == TrialState.COMPLETE
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2


@pytest.mark.parametrize("content,message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a binary file, not YAML text"),
    ("study: {name: café}\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 17)"),
    (b"#" * 1_000_001, "the file is 1,000,001 bytes, over the 1,000,000-byte limit"),
    (("space:\n  train.batch_size: {type: categorical, choices: [%s]}\n"
      % ", ".join(str(i) for i in range(1, 1502))).encode(), "List should have at most 1000 items"),
])
def test_a_file_that_is_no_config_is_refused_naming_it(tmp_path, monkeypatch, capsys, content, message):
    """A binary YAML ended in a UnicodeDecodeError traceback; nothing bounded what was read into memory."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(content)
    assert run_sweep(tmp_path, cfg, "--epochs", "-3") == 2
    err = capsys.readouterr().err
    assert f"{cfg}:" in err and message in err and "Traceback" not in err
    assert len(err) < 2000  # one line per problem, not the file echoed back
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_resume_with_another_sampler_or_pruner_is_recorded(tmp_path, monkeypatch, capsys):
    from alexnet_exp import report

    monkeypatch.chdir(tmp_path)
    study = {"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"}
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1}, study=study)
    assert run_sweep(tmp_path, cfg) == 0
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1}, study={**study, "n_trials": 3, "sampler": "tpe"})
    capsys.readouterr()
    assert run_sweep(tmp_path, cfg) == 0
    assert "study tiny: sampler changed from random to tpe, from trial 2 on" in capsys.readouterr().out
    attrs = study_of(tmp_path).user_attrs
    assert json.loads(attrs["search_history"]) == [{"from_trial": 0, "sampler": "random", "pruner": "none"},
                                                   {"from_trial": 2, "sampler": "tpe", "pruner": "none"}]
    _, parents, _ = mlflow_runs(tmp_path)
    assert parents[0].data.tags["sampler"] == "tpe"
    assert report.main(["--study", "tiny", "--storage", f"sqlite:///{tmp_path / 'sweeps' / 'tiny' / 'optuna.db'}",
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out",
                        str(tmp_path / "reports")]) == 0
    assert "sampler **random, then tpe from trial 2**" in (tmp_path / "reports" / "tiny" / "report.md").read_text()


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs for sweeps/ (the issue's own setup)."""
    with tmpfs(tmp_path / "disk", "8m") as disk:
        (tmp_path / "sweeps").symlink_to(disk)
        yield disk


def _fill(disk):
    """Take every free byte of `disk`; returns the file to delete to give the space back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass
    return filler


def test_a_full_disk_stops_the_sweep_with_one_line_and_a_rerun_resumes(tmp_path, monkeypatch, capsys, small_disk):
    """sweeps/ on a full 8 MB disk ended in a 100-line traceback (`AssertionError: Should not reach`), exit 1,
    the trial, its MLflow run and the parent run left RUNNING."""
    from alexnet_exp.sweep import objective

    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 2},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none",
                              "heartbeat_seconds": 1})
    real_train_run = objective.train_run
    filled = []

    def disk_fills_in_epoch_1(config, cache, on_epoch=None, **kwargs):
        def fill_then_report(metrics):
            if not filled:
                filled.append(_fill(small_disk))  # the study's database and the checkpoints are on it
            on_epoch(metrics)
        return real_train_run(config, cache, on_epoch=fill_then_report, **kwargs)

    monkeypatch.setattr(objective, "train_run", disk_fills_in_epoch_1)
    assert run_sweep(tmp_path, cfg) == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Should not reach" not in captured.err
    assert "No space left on device" in captured.err or "database or disk is full" in captured.err
    assert "free space" in captured.err and "retrying in 2 s" not in captured.err, captured.err
    client, parents, children = mlflow_runs(tmp_path)
    assert [r.info.status for r in parents + children if r.info.status == "RUNNING"] == [], captured.err

    filled[0].unlink()  # space is back: the same command goes on where it stopped
    monkeypatch.setattr(objective, "train_run", real_train_run)
    assert run_sweep(tmp_path, cfg) == 0
    trials = study_of(tmp_path).get_trials()
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    _, parents, children = mlflow_runs(tmp_path)
    assert parents[0].info.status == "FINISHED"
    assert not [c for c in children if c.info.status == "RUNNING"]


def locks_held_by(pid, paths):
    """The paths among `paths` on which process `pid` holds a POSIX (fcntl) lock, as SQLite takes, per
    /proc/locks (fields: id, class, mode, access, pid, major:minor:inode, start, end)."""
    inodes = {f"{os.stat(p).st_ino}": p for p in paths if os.path.exists(p)}
    held = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter on another lock, listed under it
            fields.remove("->")
        if len(fields) >= 6 and fields[4] == str(pid) and fields[5].rsplit(":", 1)[-1] in inodes:
            held.add(inodes[fields[5].rsplit(":", 1)[-1]])
    return held


def pause_outside_sqlite_locks(pid, *stores):
    """SIGSTOP `pid` at a moment it holds no lock on any of `stores`: stopped, then woken again at once and
    stopped anew while it does (each try lets it run on to the end of its transaction)."""
    import signal

    def paused_free():
        os.kill(pid, signal.SIGSTOP)
        if not locks_held_by(pid, stores):
            return True
        os.kill(pid, signal.SIGCONT)
        return False
    until(paused_free, f"process {pid} outside a SQLite transaction", poll=0.01)


def test_a_worker_paused_past_its_heartbeats_wakes_harmless(tmp_path):
    """A worker stopped (SIGSTOP, as a VM freeze or a swap storm does) past its heartbeats and then woken died
    with `Cannot tell a FAIL trial` / `Should not reach`; the launcher exited 1 and closed the parent FAILED."""
    import os
    import signal

    from test_workers import SLOW, launch, running_trial_at_epoch

    cfg = write_config(tmp_path / "s.yaml", **SLOW,
                       study={"name": "tiny", "n_trials": 3, "sampler": "random", "pruner": "none",
                              "heartbeat_seconds": 1})
    proc = launch(tmp_path, cfg, "--workers", "2")
    try:
        victim = proc.until(running_trial_at_epoch(tmp_path, 1), "a trial at epoch 1")
        pid = victim.user_attrs["worker_pid"]
        # Paused inside a write to a SQLite store, it would hold that store's lock until woken, and nobody could
        # retry its trial (on one machine a freeze stops every worker alike; that case is not this test's).
        pause_outside_sqlite_locks(pid, tmp_path / "sweeps" / "tiny" / "optuna.db", tmp_path / "mlflow.db")
        try:
            def retried_and_running():
                try:
                    trials = study_of(tmp_path).get_trials()
                except Exception:  # locked by a write under way
                    return None
                return any(t.system_attrs.get("failed_trial") == victim.number and t.state == TrialState.RUNNING
                           for t in trials)
            proc.until(retried_and_running, "the paused worker's trial retried by the other")
        finally:
            os.kill(pid, signal.SIGCONT)
        out = proc.finish()
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "Should not reach" not in out, out
    assert "its result is dropped" in out
    trials = study_of(tmp_path).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    paused = next(t for t in trials if t.number == victim.number)
    assert paused.state == TrialState.FAIL and paused.user_attrs["fail_kind"] == "lost"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and len(retry.intermediate_values) == 5
    _, parents, children = mlflow_runs(tmp_path)
    assert parents[0].info.status == "FINISHED"
    runs = {int(c.data.tags["trial"]): c for c in children}
    assert runs[retry.number].info.status == "FINISHED"  # the woken worker left the retry's run alone
    assert runs[victim.number].info.status == "FAILED"
    assert not [c for c in children if c.info.status == "RUNNING"]


def test_a_finished_study_leaves_no_checkpoint(tmp_path, monkeypatch):
    """A trial interrupted after another filled the budget left its checkpoint in sweeps/ for good."""
    from alexnet_exp.sweep import objective

    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 3},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    real_train_run = _interrupt_first_trial_at_epoch(monkeypatch, 3, trial_call=2)
    assert run_sweep(tmp_path, cfg) == 130
    checkpoints = tmp_path / "sweeps" / "tiny" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["trial_00001.pt"]
    monkeypatch.setattr(objective, "train_run", real_train_run)
    assert run_sweep(tmp_path, cfg, "--trials", "1") == 0  # the budget is met: the study finishes at once
    assert list(checkpoints.iterdir()) == []


def test_a_process_holding_mlflows_sqlite_lock_makes_others_wait_not_fail(tmp_path):
    """A worker paused while it held MLflow's SQLite write lock made another worker's trial fail with
    `database is locked` (MLflow's sessions give up after 20 s). Here another process holds it for 25 s."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "locked", system_metrics=False)
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(tmp_path / 'mlflow.db')!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"  # the write lock, as a writer frozen mid-transaction holds it
        "print('locked', flush=True)\n"
        "time.sleep(25)\n"
        "c.execute('ROLLBACK')\n"
        "print(time.time(), flush=True)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        tracker.log_metrics(run_id, {"val_accuracy": 0.5}, step=1)  # waits for the lock instead of failing
        written = time.time()
        released = float(holder.stdout.readline())
        assert written >= released  # it could only write once the holder let go
    finally:
        holder.kill()
    assert [m.value for m in tracker.client.get_metric_history(run_id, "val_accuracy")] == [0.5]


def test_a_failed_upload_to_the_artifact_store_is_a_warning_not_a_failed_trial(tmp_path, monkeypatch, capsys):
    """A shared artifact store that refuses files (full, unwritable, away) failed every healthy trial at its
    first checkpoint upload, and the sweep stopped for errors. The files are safe on this machine: train on."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    real_log_artifact = LocalArtifactRepository.log_artifact
    refused = []

    def store_full_for_state(self, local_file, artifact_path=None):
        if artifact_path in ("checkpoint", "weights"):  # the fault the test injects: the store's disk is full
            refused.append(artifact_path)
            raise OSError(28, "No space left on device", str(local_file))
        return real_log_artifact(self, local_file, artifact_path)

    monkeypatch.setattr(LocalArtifactRepository, "log_artifact", store_full_for_state)
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 3},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none",
                              "state_store": "mlflow"})
    assert run_sweep(tmp_path, cfg) == 0
    err = capsys.readouterr().err
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {"checkpoint", "weights"} <= set(refused)  # the fault really hit both kinds of upload
    warnings = [line for line in err.splitlines() if "could not upload" in line]
    assert warnings and all("No space left on device" in line for line in warnings), err
    # one warning per file, not one per epoch: each trial's checkpoint once, each best trial's weights once
    files = [w.split("could not upload ")[1].split(" to the artifacts")[0] for w in warnings]
    assert len(files) == len(set(files)) and len([f for f in files if "checkpoints" in f]) == 2, warnings
    _, parents, _ = mlflow_runs(tmp_path)
    assert "test_accuracy" in parents[0].data.metrics  # the finish step found the weights on this machine


def test_folders_that_vanish_mid_trial_are_made_again(tmp_path, monkeypatch, capsys):
    """A cleaner (or a person) removing sweeps/<study>/checkpoints and weights/ while a trial trains: the next
    checkpoint and the weights are written into new folders, no trial fails."""
    import shutil

    from alexnet_exp.sweep import keys, objective

    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 3},
                       study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    real_train_run = objective.train_run
    study_dir = tmp_path / "sweeps" / "tiny"
    removed = []

    def vanishing(config, cache, on_epoch=None, **kwargs):
        first = not removed

        def remove_then_go_on(metrics):
            on_epoch(metrics)
            if metrics.epoch == 2 and first:  # (in the second trial it would remove the first's weights)
                for folder in (study_dir / "checkpoints", study_dir / "weights"):
                    if folder.exists():
                        shutil.rmtree(folder)
                        removed.append(folder.name)
        return real_train_run(config, cache, on_epoch=remove_then_go_on, **kwargs)

    monkeypatch.setattr(objective, "train_run", vanishing)
    assert run_sweep(tmp_path, cfg) == 0
    assert removed == ["checkpoints"]  # the first trial's epoch-1 checkpoint; weights/ was not made yet
    err = capsys.readouterr().err
    assert "Traceback" not in err and "warning" not in err, err
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    best = max(trials, key=lambda t: t.value)
    assert keys.weights_path(keys.weights_dir("tiny"), best.number).is_file()


def test_a_signal_during_a_store_write_takes_effect_when_the_write_ends(tmp_path):
    """SIGTERM raised inside a write to MLflow's SQLite store could leave this process's connection holding the
    write lock: a worker whose launcher was SIGKILLed then waited on its own lock, three minutes per call,
    before it could record its trial as interrupted (seen in the killed-launcher test)."""
    import signal

    import sqlalchemy
    from mlflow import MlflowClient

    from alexnet_exp.sweep import cli as sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "signals", system_metrics=False)
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    engine = tracker.client._client._tracking_client.store.engine
    sent = []

    def signal_mid_write(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO PARAMS") and not sent:
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, between this and the INSERT

    previous = signal.signal(signal.SIGTERM, sweep._raise_interrupt)
    sqlalchemy.event.listen(engine, "before_cursor_execute", signal_mid_write)
    try:
        with pytest.raises(KeyboardInterrupt):
            tracker.client.log_param(run, "lr", "0.1")
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", signal_mid_write)
        signal.signal(signal.SIGTERM, previous)
        sweep._stopping = False
    assert sent  # the signal did come in the middle of the write
    other = MlflowClient(uri)
    other.log_param(run, "momentum", "0.9")  # another connection writes at once: no lock was left behind
    assert other.get_run(run).data.params == {"lr": "0.1", "momentum": "0.9"}  # and the write was whole


def test_a_signal_during_an_optuna_storage_write_takes_effect_when_it_ends(tmp_path):
    """The same for the study's SQLite storage: each call of Optuna's storage interface is whole."""
    import signal

    import optuna
    import sqlalchemy

    from alexnet_exp.sweep import cli as sweep
    from alexnet_exp.sweep.stores.study_store import open_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="signals")
    trial = study.ask()
    sent = []

    def signal_mid_write(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO TRIAL_USER_ATTRIBUTES") and not sent:
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, sweep._raise_interrupt)
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", signal_mid_write)
    try:
        with pytest.raises(KeyboardInterrupt):
            trial.set_user_attr("fail_kind", "interrupted")
    finally:
        sqlalchemy.event.remove(storage.engine, "before_cursor_execute", signal_mid_write)
        signal.signal(signal.SIGTERM, previous)
        sweep._stopping = False
    assert sent
    again = optuna.load_study(study_name="signals", storage=url)  # another connection: no lock left behind
    again.tell(trial.number, 1.0)
    (done,) = again.trials
    assert done.user_attrs == {"fail_kind": "interrupted"} and done.state == TrialState.COMPLETE


def test_a_model_that_cannot_be_logged_leaves_its_run_as_it_was(tmp_path):
    """log_model reopens the finished best run; a model torch.export cannot trace ended that run FAILED with a
    new end time (MLflow's start_run closes it so on an error), and the caller only warned."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "export", system_metrics=False)
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.client.set_terminated(run, status="FINISHED")
    before = tracker.client.get_run(run).info

    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.export refuses it
        def forward(self, x):
            return x.flatten(1)[:, :3] if float(x.sum()) > 0 else -x.flatten(1)[:, :3]

    with pytest.raises(Exception, match="(?i)data.dependent|guard|symbolic"):  # torch.export's refusal
        tracker.log_model(run, Branchy(), torch.ones(2, 3, 4, 4))
    after = tracker.client.get_run(run).info
    assert (after.status, after.end_time) == ("FINISHED", before.end_time)
