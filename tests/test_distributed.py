"""The multi-machine setup on one machine: a real PostgreSQL study storage and a real MLflow tracking server
(backed by PostgreSQL) on loopback, with several worker processes."""
import json
import os
import subprocess
import sys

import optuna
from mlflow import MlflowClient
from servers import PASSWORD, _pg_bin
from sweep_helpers import write_config
from waits import Launched

from alexnet_exp.sweep.search.budget import is_verdict


def test_launchers_started_together_on_postgres_and_a_tracking_server(servers, tmp_path):
    """Two machines' launchers (two folders) of two workers each, started at the same instant on a fresh
    PostgreSQL study and a fresh MLflow experiment on the tracking server."""
    storage, tracking, _, port, artifacts = servers
    cfg = write_config(tmp_path / "s.yaml", train={"epochs": 1},
                       baselines=[{"name": "hand-tuned", "train.optimizer": "sgd", "train.lr": 0.03}],
                       study={"name": "tiny", "n_trials": 6, "sampler": "tpe", "pruner": "median"})
    machines = [tmp_path / "machine-a", tmp_path / "machine-b"]
    procs = []
    for folder in machines:
        folder.mkdir()
        procs.append(Launched([sys.executable, "-m", "alexnet_exp.sweep", str(cfg), "--quiet", "--workers", "2",
                               "--storage", storage], cwd=folder, env={**os.environ, "MLFLOW_TRACKING_URI": tracking}))
    outputs = [p.finish() for p in procs]
    for p, output in zip(procs, outputs):
        assert p.returncode == 0 and "Traceback" not in output, output[-4000:]
        assert PASSWORD not in output
        # the printed link opens the runs on the tracking server, not on a local `mlflow ui`
        assert f"MLflow runs: {tracking.rstrip('/')}/#/experiments/" in output and "127.0.0.1:5000/#" not in output

    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert sum(is_verdict(t) for t in trials) == 6
    assert len({t.user_attrs["worker_pid"] for t in trials if "worker_pid" in t.user_attrs}) >= 2
    sampled = [json.dumps(t.params, sort_keys=True) for t in trials if t.params]
    assert len(set(sampled)) == len(sampled)  # no configuration twice
    assert [t.user_attrs["baseline"] for t in trials if t.user_attrs.get("baseline")] == ["hand-tuned"]

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    numbers = sorted(int(c.data.tags["trial"]) for c in children)
    assert numbers == sorted(t.number for t in trials if t.user_attrs.get("fail_kind") != "surplus")
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert all(c.info.status != "RUNNING" for c in children)
    for run in [parents[0], *children]:  # the storage password is nowhere in what MLflow holds
        assert PASSWORD not in repr(run.data.params) + repr(run.data.tags)
    assert "alex:***@" in parents[0].data.tags["storage"]
    # artifacts went through the server to its artifact store
    done = [c for c in children if c.data.tags["state"] == "COMPLETE"]
    assert done and any(a.path == "config.yaml" for a in client.list_artifacts(done[0].info.run_id))
    tested = [c for c in children if "test_accuracy" in c.data.metrics]
    assert len(tested) == 1 and len(client.get_metric_history(tested[0].info.run_id, "test_accuracy")) == 1

    # The password is nowhere in what was written: artifacts, both databases (attributes, params, tags), the
    # local folders.
    written = [p for root in (artifacts, *machines) for p in root.rglob("*") if p.is_file()]
    assert written and not [p for p in written if PASSWORD.encode() in p.read_bytes()]
    for db in ("optuna", "mlflow"):
        dump = subprocess.run([_pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(port), "-U", "alex", db], check=True,
                              capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PASSWORD}).stdout
        assert "CREATE TABLE" in dump and PASSWORD not in dump, db


def test_a_storage_outage_mid_sweep_loses_nothing(servers, tmp_path):
    from test_workers import running_trial_at_epoch_in

    storage, _, restart_pg, _, _ = servers
    cfg = write_config(tmp_path / "s.yaml", data={"synthetic_train_size": 1200}, model={"width": 0.25},
                       train={"epochs": 4}, study={"name": "outage", "n_trials": 2, "sampler": "random",
                                                   "pruner": "none", "heartbeat_seconds": 2})
    proc = Launched([sys.executable, "-m", "alexnet_exp.sweep", str(cfg), "--quiet", "--storage", storage,
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], cwd=tmp_path)
    try:
        proc.until(running_trial_at_epoch_in(storage, "outage", 1), "a trial at epoch 1")
        restart_pg(down_seconds=3)
        out = proc.finish()
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert "storage unreachable" in out  # the outage really hit the running sweep
    assert "Traceback" not in out  # and no thread (heartbeat) died of it
    trials = optuna.load_study(study_name="outage", storage=storage).get_trials()
    assert sum(is_verdict(t) for t in trials) == 2
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]


def test_a_trial_lost_on_one_machine_resumes_on_another_through_the_tracking_server(servers, tmp_path):
    """Machine A (its own folder) dies mid-trial; machine B (another folder, no local checkpoint) retries the
    trial from A's last epoch, read from the tracking server's artifact store; machine C (a third folder, no
    local weights) runs the finish step."""
    from test_workers import running_trial_at_epoch_in

    storage, tracking, _, _, _ = servers
    cfg = write_config(tmp_path / "s.yaml", data={"synthetic_train_size": 1200}, model={"width": 0.25},
                       train={"epochs": 5}, study={"name": "machines", "n_trials": 1, "sampler": "random",
                                                   "pruner": "none", "heartbeat_seconds": 2})
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    machines = {name: tmp_path / f"machine-{name}" for name in "abc"}
    for folder in machines.values():
        folder.mkdir()

    def sweep(machine, *flags, **kw):
        return Launched([sys.executable, "-m", "alexnet_exp.sweep", str(cfg), "--quiet", "--storage", storage,
                         *flags], cwd=machines[machine], env=env, **kw)

    a = sweep("a")
    try:
        victim = a.until(running_trial_at_epoch_in(storage, "machines", 2), "a trial at epoch 2")
        a.kill()  # the machine is gone: no clean-up of any kind
        a.finish()
    finally:
        a.kill()
    assert list((machines["a"] / "sweeps" / "machines" / "checkpoints").glob("trial_*.pt"))

    b = sweep("b", "--join", "--wait", "300")
    out = b.finish()
    assert b.returncode == 0, out[-4000:]
    trials = optuna.load_study(study_name="machines", storage=storage).get_trials()
    lost = next(t for t in trials if t.number == victim.number)
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert lost.user_attrs["fail_kind"] == "lost"
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 2
    assert len(retry.intermediate_values) == 5
    assert not (machines["b"] / "sweeps" / "machines" / "checkpoints" / f"trial_{victim.number:05d}.pt").exists()
    client = MlflowClient(tracking)
    for run_id in (lost.user_attrs["mlflow_run_id"], retry.user_attrs["mlflow_run_id"]):  # cleaned up when done
        assert not client.list_artifacts(run_id, "checkpoint")

    c = sweep("c", "--finalize")
    out = c.finish()
    assert c.returncode == 0 and "held-out test accuracy" in out, out[-4000:]
    assert "test_accuracy" in client.get_run(retry.user_attrs["mlflow_run_id"]).data.metrics
