"""The Slurm recipe for real: a single-node Slurm (Debian's slurm-wlm and munge, started by the test with two
fake GPUs) runs deploy/slurm/submit.sh against the real PostgreSQL study and MLflow tracking server fixture.
Skipped, saying why, only where those packages are not installed (.ci/run installs them)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from servers import PASSWORD
from slurm_cluster import start_slurm
from sweep_helpers import write_config
from waits import until

from alexnet_exp.sweep.search.budget import is_verdict

SUBMIT = Path(__file__).resolve().parents[1] / "deploy" / "slurm" / "submit.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    # the node claims 16 CPUs (Slurm lets the test config say so): sweep.sbatch asks 8 per task, as on a GPU node
    cluster = start_slurm(tmp_path_factory.mktemp("slurm"), gpus=2, cpus=16)
    yield cluster
    cluster.stop()


def submit(cluster, servers, config, tasks, *flags):
    storage, tracking = servers[0], servers[1]
    env = {**cluster.env, "SWEEP_STORAGE": storage.replace(f":{PASSWORD}@", "@"), "PGPASSWORD": PASSWORD,
           "MLFLOW_TRACKING_URI": tracking, "SWEEP_PYTHON": sys.executable, "SWEEP_WAIT": "900"}
    out = subprocess.run([str(SUBMIT), str(config), str(tasks), *flags], cwd=cluster.workdir, env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "set-up job" in out
    return (cluster.workdir / "slurm-logs" / "last-submission").read_text().split()


def study_runs(servers, name):
    storage, tracking = servers[0], servers[1]
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    return trials, client, parents, children


def task_logs(cluster, array_id):
    return {int(re.search(r"_(\d+)\.out$", p.name).group(1)): p.read_text()
            for p in (cluster.workdir / "slurm-logs").glob(f"alexnet-sweep-{array_id}_*.out")}


def test_a_job_array_runs_the_sweep(slurm, servers):
    cfg = write_config(slurm.workdir / "array.yaml", train={"epochs": 1},
                       study={"name": "slurm-array", "n_trials": 6, "sampler": "tpe", "pruner": "none"})
    init, array, finish = submit(slurm, servers, cfg, 3)
    states = slurm.wait_all([init, array, finish])
    assert set(states.values()) == {"COMPLETED"}, (states, task_logs(slurm, array))
    logs = task_logs(slurm, array)
    assert sorted(logs) == [0, 1, 2]  # a log per task
    assert all("Traceback" not in log for log in logs.values())

    trials, client, parents, children = study_runs(servers, "slurm-array")
    assert sum(is_verdict(t) for t in trials) == 6  # the budget, exactly
    sampled = [json.dumps(t.params, sort_keys=True) for t in trials if t.params]
    assert len(set(sampled)) == len(sampled)  # every task sampled different configurations
    assert len({t.user_attrs["worker_pid"] for t in trials if "worker_pid" in t.user_attrs}) >= 2
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tested = [c for c in children if "test_accuracy" in c.data.metrics]
    assert len(tested) == 1 and len(client.get_metric_history(tested[0].info.run_id, "test_accuracy")) == 1


def test_scancel_leaves_nothing_running_and_a_resubmission_resumes(slurm, servers):
    cfg = write_config(slurm.workdir / "cancel.yaml", data={"synthetic_train_size": 1200}, model={"width": 0.25},
                       train={"epochs": 5}, study={"name": "slurm-cancel", "n_trials": 2, "sampler": "random",
                                                   "pruner": "none"})
    init, array, finish = submit(slurm, servers, cfg, 1)
    storage = servers[0]

    def trials_now():
        try:
            return optuna.load_study(study_name="slurm-cancel", storage=storage).get_trials()
        except KeyError:  # not set up yet
            return []

    victim = until(lambda: next((t for t in trials_now() if t.state == TrialState.RUNNING
                                 and len(t.intermediate_values) >= 1), None), "a trial past its first epoch",
                   progress=lambda: ([(t.state, len(t.intermediate_values)) for t in trials_now()],
                                     [(j["JobId"], j.get("JobState")) for j in slurm.jobs()]))
    slurm.run(["scancel", array])
    states = slurm.wait_all([array, finish])
    assert states[f"{array}_0"] == "CANCELLED"
    assert states[finish] == "FAILED"  # the finish step: budget not met, test split untouched (exit code 4)
    trials, _, parents, children = study_runs(servers, "slurm-cancel")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert next(t for t in trials if t.number == victim.number).user_attrs["fail_kind"] == "interrupted"
    assert not [c for c in children if c.info.status == "RUNNING"]
    assert parents[0].info.status == "KILLED" and "test_accuracy" not in parents[0].data.metrics

    init, array, finish = submit(slurm, servers, cfg, 1)
    states = slurm.wait_all([init, array, finish])
    assert set(states.values()) == {"COMPLETED"}, (states, task_logs(slurm, array))
    trials, _, parents, _ = study_runs(servers, "slurm-cancel")
    resumed = next(t for t in trials if t.system_attrs.get("failed_trial") == victim.number)
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs["resumed_from_epoch"] >= 1
    assert sum(is_verdict(t) for t in trials) == 2 and parents[0].info.status == "FINISHED"
