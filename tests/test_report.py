import base64
import os
import re

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from alexnet_exp import report
from sweep_helpers import mlflow_runs, run_sweep, write_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One small real sweep with complete, pruned and failed trials, shared by the tests here."""
    root = tmp_path_factory.mktemp("report")
    old = os.getcwd()
    os.chdir(root)
    try:
        baselines = [
            {"name": "good", "train.optimizer": "sgd", "train.lr": 0.03, "train.momentum": 0.9},
            {"name": "slow", "train.optimizer": "sgd", "train.lr": 1e-7, "train.momentum": 0.0},
            {"name": "boom", "train.optimizer": "sgd", "train.lr": 10.0, "train.momentum": 0.9, "model.norm": "none"},
        ]
        cfg = write_config(root / "s.yaml", baselines=baselines, train={"epochs": 3, "stall_epochs": 5},
                           study={"name": "tiny", "n_trials": 5, "sampler": "random", "pruner": "median",
                                  "pruner_options": {"n_startup_trials": 1, "n_warmup_steps": 0}})
        assert run_sweep(root, cfg) == 0
        yield root
    finally:
        os.chdir(old)


@pytest.fixture
def in_swept(swept, monkeypatch):
    monkeypatch.chdir(swept)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{swept / 'mlflow.db'}")
    return swept


def test_report_from_a_real_sweep(in_swept, capsys):
    assert report.main(["--study", "tiny"]) == 0
    out_dir = in_swept / "reports" / "tiny"
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}")
    trials = study.get_trials()

    table = pd.read_csv(out_dir / "trials.csv")
    assert sorted(table["trial"]) == [t.number for t in trials]
    by_number = table.set_index("trial")
    for t in trials:
        assert by_number.loc[t.number, "state"] == t.state.name
    named = {t.user_attrs.get("baseline"): t.number for t in trials}
    assert by_number.loc[named["slow"], "note"] == "pruned at epoch 1"
    assert by_number.loc[named["boom"], "note"].startswith("diverged")
    complete = table[table["state"] == "COMPLETE"]["val_accuracy"].tolist()
    assert complete == sorted(complete, reverse=True) and table.iloc[0]["state"] == "COMPLETE"
    assert table.iloc[0]["trial"] == study.best_trial.number

    page = (out_dir / "report.html").read_text()
    pngs = sorted(out_dir.glob("*.png"))
    assert {p.name for p in pngs} >= {"loss_curves.png", "metric_curves.png", "history.png", "learning_rate.png",
                                      "confusion_matrix.png", "per_class_f1.png", "first_layer_kernels.png"}
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
        assert base64.b64encode(data).decode() in page  # embedded: the HTML stands alone
        assert f'alt="{png.name}"' in page
    markdown = (out_dir / "report.md").read_text()
    assert all(f"]({png.name})" in markdown for png in pngs)
    assert f"Best trial {study.best_trial.number}" in markdown and "Held-out test split" in markdown
    assert "Command: `python -m alexnet_exp.sweep" in markdown
    assert "Ten worst classes" in markdown

    # and the report went to the study's parent run
    client, parents, _ = mlflow_runs(in_swept)
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/report.html" in logged and "report/trials.csv" in logged


def test_report_without_arguments_covers_every_study(in_swept, capsys):
    assert report.main(["--no-mlflow"]) == 0
    assert "tiny: reports/tiny/report.html" in capsys.readouterr().out


def test_running_study_gives_a_snapshot(in_swept):
    storage = f"sqlite:///{in_swept / 'sweeps/tiny/optuna.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    running = study.ask()  # a trial some worker is in the middle of
    try:
        assert report.main(["--study", "tiny", "--no-mlflow"]) == 0
        markdown = (in_swept / "reports/tiny/report.md").read_text()
        assert "still running: this report is a snapshot" in markdown
        table = pd.read_csv(in_swept / "reports/tiny/trials.csv")
        assert table.set_index("trial").loc[running.number, "state"] == "RUNNING"
    finally:
        study.tell(running, state=optuna.trial.TrialState.FAIL)


def test_study_with_no_finished_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path / "s.yaml", baselines=[{"name": "bad", "train.nesterov": True,
                                                         "train.momentum": 0.0, "train.optimizer": "sgd"}],
                       study={"name": "tiny", "n_trials": 1, "sampler": "random", "pruner": "none"})
    assert run_sweep(tmp_path, cfg) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert report.main(["--study", "tiny"]) == 0
    markdown = (tmp_path / "reports/tiny/report.md").read_text()
    assert "No trial has completed yet" in markdown
    assert "invalid: train: nesterov" in markdown
    assert len(pd.read_csv(tmp_path / "reports/tiny/trials.csv")) == 1


def test_two_studies_side_by_side(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("alpha", "beta"):
        cfg = write_config(tmp_path / f"{name}.yaml", study={"name": name, "n_trials": 1, "sampler": "random",
                                                             "pruner": "none", "experiment": "tiny"},
                           train={"epochs": 1})
        assert run_sweep(tmp_path, cfg) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert report.main(["--study", "alpha", "--study", "beta", "--no-mlflow"]) == 0
    folder = tmp_path / "reports" / "compare-alpha-beta"
    table = pd.read_csv(folder / "trials.csv")
    assert sorted(table["study"]) == ["alpha", "beta"]
    page = (folder / "report.html").read_text()
    assert re.search(r"<td>alpha</td>", page) and re.search(r"<td>beta</td>", page)
    assert (folder / "history.png").read_bytes().startswith(PNG_MAGIC)


def test_missing_study_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report.main([]) == 2
    assert "no study under sweeps/" in capsys.readouterr().err
    assert report.main(["--study", "nope"]) == 2
    assert "run the sweep first" in capsys.readouterr().err
