"""MLflow and optuna-dashboard as their users know them: system metrics on trial runs, the best model with a
signature, an input example and a registry version, the README's search strings, and optuna-dashboard serving
a finished study. Real stores in a temp dir, one real tiny sweep shared by the module's tests."""
import importlib.util
import json
import shutil
import socket
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from sweep_helpers import TINY, mlflow_runs, run_sweep, write_config
from waits import Launched

from alexnet_exp.config import config_from_dict
from alexnet_exp.run_parts import DataCache, input_size, make_augmenter
from alexnet_exp.sweep.stores.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "tiny-best"


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished tiny sweep (3 trials, sqlite Optuna and MLflow stores) run with --register-model."""
    tmp = tmp_path_factory.mktemp("ecosystem")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        cfg = write_config(tmp / "s.yaml")
        assert run_sweep(tmp, cfg, "--register-model", MODEL_NAME) == 0
        yield tmp, cfg, mp


# ---- system metrics ----------------------------------------------------------------------------------------

def test_tracker_attaches_system_metrics_to_trial_runs_and_stops_them(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sysmetrics")
    parent = tracker.start_parent("s", {})
    run_id = tracker.start_trial(parent, "trial-0", {"train.lr": 0.01}, {"trial": 0})
    assert len(monitor_threads()) == 1  # one monitor per open trial run
    tracker.finish(run_id, "FINISHED")
    # Finishing the run stops its monitor: no sampling thread outlives the trial into the next one.
    assert monitor_threads() == []
    metrics = tracker.client.get_run(run_id).data.metrics
    for name in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                 "system/system_memory_usage_percentage"):
        assert name in metrics, sorted(metrics)
    assert metrics["system/system_memory_usage_megabytes"] > 0
    # The parent run is no trial: it is not monitored.
    assert not [k for k in tracker.client.get_run(parent).data.metrics if k.startswith("system/")]

    # Switched off: no monitor, no system metric.
    quiet = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "sysmetrics", system_metrics=False)
    other = quiet.start_trial(parent, "trial-1", {}, {"trial": 1})
    assert monitor_threads() == []
    quiet.finish(other, "FINISHED")
    assert not [k for k in quiet.client.get_run(other).data.metrics if k.startswith("system/")]


def test_every_trial_run_of_a_sweep_has_system_metrics(swept):
    tmp, _, _ = swept
    client, _, children = mlflow_runs(tmp)
    assert len(children) == 3
    for child in children:
        history = client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")
        assert history, f"trial {child.data.tags['trial']} has no system metrics"
        assert sorted(m.step for m in history) == list(range(len(history)))  # steps 0, 1, ... one per point
        assert child.data.metrics["system/system_memory_usage_megabytes"] > 0
    assert monitor_threads() == []


# ---- the best model: signature, input example, registry -----------------------------------------------------

def test_best_model_is_registered_with_signature_and_input_example(swept):
    tmp, _, _ = swept
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client, parents, children = mlflow_runs(tmp)
    best_run = parents[0].data.tags["best_run_id"]
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", best_run)]

    mlflow.set_tracking_uri(uri)
    model_uri = f"models:/{MODEL_NAME}/1"
    local = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp / "downloaded"))
    meta = Model.load(local)
    inputs, outputs = meta.signature.inputs.inputs[0], meta.signature.outputs.inputs[0]
    size = input_size(config_from_dict(TINY).model, config_from_dict(TINY).augment)
    assert (inputs.type, inputs.shape) == (np.dtype("float32"), (-1, 3, size, size))
    classes = TINY["data"]["synthetic_classes"]
    assert (outputs.type, outputs.shape) == (np.dtype("float32"), (-1, classes))

    # The example is what the model receives: the first test images after the eval transform (resized and
    # normalised), not the raw uint8 images.
    example = meta.load_input_example(local)
    data, stats = DataCache(torch.device("cpu")).get(config_from_dict(TINY).data)
    expected = make_augmenter(config_from_dict(TINY).augment, stats, size).eval(data.test_x[:2])
    assert example.shape == (2, 3, size, size) and example.dtype == np.float32
    np.testing.assert_allclose(example, expected.numpy(), rtol=1e-5, atol=1e-6)

    # The registry says where the version came from and what it scores; the logged model carries the test
    # metrics (once, on the run too), not the CPU's; the run's duration is its training's, not the finish step's.
    chosen = client.get_model_version_by_alias(MODEL_NAME, "best")
    assert str(chosen.version) == "1" and chosen.tags["study"] == "tiny" and "test_accuracy" in chosen.tags
    best_child = client.get_run(best_run)
    assert chosen.tags["trial"] == best_child.data.tags["trial"]
    (logged,) = client.search_logged_models(experiment_ids=[best_child.info.experiment_id])
    # the UI opens the experiment in its model-training layout, not the GenAI one it guessed
    assert client.get_experiment(best_child.info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    linked = {m.key for m in logged.metrics or []}
    assert {"test_accuracy", "test_macro_f1"} <= linked and not [k for k in linked if k.startswith("system/")]
    # and the validation figures it was chosen by: the run's last point of each, linked, not logged twice
    for key in ("val_accuracy", "val_macro_f1", "val_loss"):
        history = client.get_metric_history(best_run, key)
        assert len(history) == len({m.step for m in history})  # one point per epoch still
        last = max(history, key=lambda m: m.step)
        (on_model,) = [m for m in logged.metrics if m.key == key]
        assert (on_model.value, on_model.step) == (last.value, last.step)
    # saved with torch.export (pt2), not pickle: loading it runs no pickled code
    assert [f.name for f in (Path(local) / "data").iterdir()] == ["model.pt2"]
    assert logged.name == "tiny-best"
    (test_point,) = client.get_metric_history(best_run, "test_accuracy")
    assert best_child.info.status == "FINISHED" and best_child.info.end_time <= test_point.timestamp

    model = mlflow.pytorch.load_model(model_uri)
    with torch.no_grad():
        logits = model(torch.from_numpy(example))
    assert logits.shape == (2, classes) and torch.isfinite(logits).all()
    # The pyfunc flavour enforces the signature on the same example and gives the same logits.
    predicted = mlflow.pyfunc.load_model(model_uri).predict(example)
    np.testing.assert_allclose(np.asarray(predicted), logits.numpy(), rtol=1e-4, atol=1e-5)


def test_register_model_on_a_finished_study_registers_the_logged_model_once(swept, capsys):
    tmp, cfg, _ = swept
    client, _, _ = mlflow_runs(tmp)
    source = client.search_model_versions(f"name = '{MODEL_NAME}'")[0].source  # models:/<logged model id>
    # The study's budget is met: these runs train nothing, they only finish (and register).
    assert run_sweep(tmp, cfg, "--register-model", MODEL_NAME) == 0
    assert run_sweep(tmp, cfg, "--register-model", "tiny-best-again") == 0
    assert "warning" not in capsys.readouterr().err
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL_NAME}'")] == ["1"]  # not twice
    again = client.search_model_versions("name = 'tiny-best-again'")
    assert [(str(v.version), v.source) for v in again] == [("1", source)]
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp}/sweeps/tiny/optuna.db").trials) == 3


def test_unusable_registry_is_a_clear_error_before_any_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # A file registry is refused by MLflow 3.17 unless MLFLOW_ALLOW_FILE_STORE=true: tracking works, the
    # registry does not, which the sweep would learn only after training.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", (tmp_path / "registry").as_uri())
    cfg = write_config(tmp_path / "s.yaml")
    assert run_sweep(tmp_path, cfg, "--register-model", MODEL_NAME) == 2
    err = capsys.readouterr().err
    assert "--register-model 'tiny-best'" in err and "MLFLOW_REGISTRY_URI" in err and "sqlite:///" in err
    _, _, children = mlflow_runs(tmp_path)
    assert children == []  # nothing trained

    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    assert run_sweep(tmp_path, cfg, "--register-model", "a/b") == 2
    assert "no '/' or ':'" in capsys.readouterr().err
    _, _, children = mlflow_runs(tmp_path)
    assert children == []


# ---- the README's searches ----------------------------------------------------------------------------------

def readme_searches() -> list[str]:
    """The filter strings of the README's search block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```\ntags.role = 'trial'")
    block = text[start + 4:text.index("```", start + 4)]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_searches_find_what_they_say(swept):
    tmp, _, _ = swept
    client, parents, children = mlflow_runs(tmp)
    parent = parents[0].info.run_id
    exp = parents[0].info.experiment_id
    by_id = {c.info.run_id: c for c in children}

    def ids(filter_string):
        return {r.info.run_id for r in client.search_runs([exp], filter_string.replace("<PARENT_RUN_ID>", parent))}

    expected = {
        "tags.role = 'trial'": set(by_id),
        "tags.role = 'trial' and tags.mlflow.parentRunId = '<PARENT_RUN_ID>'": set(by_id),
        "tags.state = 'COMPLETE' and metrics.val_accuracy > 0.5":
            {i for i, c in by_id.items()
             if c.data.tags["state"] == "COMPLETE" and c.data.metrics["val_accuracy"] > 0.5},
        "params.\"train.optimizer\" = 'sgd'":
            {i for i, c in by_id.items() if c.data.params["train.optimizer"] == "sgd"},
        "params.`model.norm` != 'lrn' and tags.role = 'trial'":
            {i for i, c in by_id.items() if c.data.params["model.norm"] != "lrn"},
        "metrics.`system/cpu_utilization_percentage` > 50":
            {i for i, c in by_id.items() if c.data.metrics["system/cpu_utilization_percentage"] > 50},
    }
    assert readme_searches() == list(expected)  # the README shows exactly the strings checked here
    for filter_string, want in expected.items():
        assert ids(filter_string) == want, filter_string
    # The parent (role 'study') is never among the trials; the sweep's runs make the filters discriminate.
    assert parent not in ids("tags.role = 'trial'") and ids("tags.role = 'study'") == {parent}
    assert {c.data.params["train.optimizer"] for c in children} >= {"sgd"}

    # What the README says cannot be done: parameters are text, compared with =, !=, LIKE, ILIKE only.
    with pytest.raises(MlflowException, match="Invalid comparator"):
        client.search_runs([exp], "params.\"train.lr\" < '0.01'")
    # ... and its pandas way for a numeric range.
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.role = 'trial'")
    low = set(runs[runs["params.train.lr"].astype(float) < 0.03]["run_id"])
    assert low == {i for i, c in by_id.items() if float(c.data.params["train.lr"]) < 0.03}


# ---- optuna-dashboard ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


@pytest.mark.skipif(importlib.util.find_spec("optuna_dashboard") is None,
                    reason="optuna-dashboard is not installed (pip install -e '.[dashboard]')")
def test_optuna_dashboard_serves_a_finished_study(swept):
    tmp, _, _ = swept
    executable = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or \
        shutil.which("optuna-dashboard")
    assert executable, "optuna_dashboard is importable but its optuna-dashboard command is not on the PATH"
    port = free_port()
    proc = Launched([executable, f"sqlite:///{tmp}/sweeps/tiny/optuna.db", "--port", str(port),
                     "--host", "127.0.0.1", "--server", "wsgiref", "--quiet"])
    base = f"http://127.0.0.1:{port}"
    try:
        def answer():  # a readiness check, not a timing assertion; a dashboard that exits says why
            try:
                return get(f"{base}/api/studies")
            except (urllib.error.URLError, ConnectionError):
                return None
        status, body = proc.until(answer, "optuna-dashboard to answer")
        assert status == 200
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
        study_id = studies[0]["study_id"]
        status, page = get(f"{base}/dashboard/studies/{study_id}")
        assert status == 200 and "<html" in page.lower()
        status, body = get(f"{base}/api/studies/{study_id}")
        detail = json.loads(body)
        assert status == 200 and detail["name"] == "tiny"
        stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp}/sweeps/tiny/optuna.db")
        assert detail.get("objective_names") == [stored.user_attrs["metric"]], detail  # not "Objective 0"
        shown = {a["key"]: a["value"] for a in detail["user_attrs"]}  # the study links to its MLflow runs
        assert shown["mlflow_parent_run"].endswith(f"/runs/{stored.user_attrs['mlflow_parent_run_id']}")
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp}/sweeps/tiny/optuna.db")
        assert len(study.trials) == 3
        assert [t["state"] for t in detail["trials"]] == [t.state.name.capitalize() for t in study.trials]
        # Dotted parameter names reach the dashboard as they are (a branch's with its condition).
        assert [p["name"] for p in detail["trials"][0]["params"]] == list(study.trials[0].params)
        assert {"train.optimizer", "train.lr[train.optimizer=sgd]"} & set(study.trials[0].params)
    finally:
        proc.terminate()
        proc.finish()
