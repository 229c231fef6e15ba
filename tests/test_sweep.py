import json

import optuna
import pytest
from optuna.trial import TrialState
from sweep_helpers import TINY, mlflow_runs, run_sweep, write_config

from alexnet_exp.config import config_from_dict
from alexnet_exp.redaction import redact_url as redact
from alexnet_exp.sweep.search.space import suggest


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def load_study(tmp_path, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'sweeps' / name / 'optuna.db'}")


def test_smoke_sweep_end_to_end(in_tmp, capsys):
    # TINY gives Adam its own learning rates: near 0.1 it explodes on this tiny network in its first epoch (loss
    # 19 at 4 classes) and is recorded diverged; here every trial must complete.
    cfg = write_config(in_tmp / "s.yaml")
    assert run_sweep(in_tmp, cfg) == 0
    out = capsys.readouterr().out
    assert "#/experiments/" in out and "held-out test accuracy" in out

    study = load_study(in_tmp)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    client, parents, children = mlflow_runs(in_tmp)
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["trial"]) for c in children) == [0, 1, 2]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["state"] == "COMPLETE"
        for key in ("study", "sampler", "dataset", "model", "device", "git_commit"):
            assert child.data.tags[key]
        assert child.data.params["train.epochs"] == "2" and "model.norm" in child.data.params
        # what did nothing is not logged as if used: listed apart, and said in config.yaml
        inactive = set(child.data.tags["inactive_params"].split(", "))
        assert "data.glyph_classes" in inactive and not inactive & set(child.data.params)
        assert ("train.momentum" in inactive) == (child.data.params["train.optimizer"] != "sgd")
        config_text = client.download_artifacts(child.info.run_id, "config.yaml")
        head = open(config_text).read().splitlines()[:3]
        assert head[0].startswith("# set by the study") and "train.optimizer" in head[0]
        history = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2]
        for name in ("train_loss", "val_loss", "val_macro_f1", "lr", "epoch_seconds", "images_per_second"):
            assert len(client.get_metric_history(child.info.run_id, name)) == 2
        assert len(client.get_metric_history(child.info.run_id, "train_loss_step")) >= 4
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "config.yaml" in artifacts
        evaluation = {a.path for a in client.list_artifacts(child.info.run_id, "evaluation")}
        assert evaluation == {"evaluation/confusion_matrix.csv", "evaluation/confusion_matrix.png",
                              "evaluation/per_class.csv"}
        inputs = client.get_run(child.info.run_id).inputs.dataset_inputs
        assert {i.dataset.name for i in inputs} == {"synthetic"}
        assert {i.dataset.source for i in inputs} == {"synthetic"}  # generated: its name is its source
        assert sorted(t.value for i in inputs for t in i.tags if t.key == "mlflow.data.context") == \
            ["test", "training", "validation"]
    # The best trial, and only it, was evaluated on the held-out test split.
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    tested = [c for c in children if "test_accuracy" in c.data.metrics]
    assert [c.info.run_id for c in tested] == [best_run]
    assert client.get_run(parent.info.run_id).data.metrics["test_accuracy"] == tested[0].data.metrics["test_accuracy"]
    # The parent run as MLflow's tuning guide has it: the best value per trial number (a live optimisation
    # history) and the best trial's parameters as params.
    history = sorted((m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "best_val_accuracy"))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert history[0] == (complete[0].number, complete[0].value)
    # a step at every finished trial from the first result on (no diagonal across failed trials), never worse
    assert [step for step, _ in history] == [t.number for t in trials if t.number >= complete[0].number]
    assert all(v2 >= v1 for (_, v1), (_, v2) in zip(history, history[1:]))
    assert history[-1][1] == study.best_value
    own = sorted((m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "trial_val_accuracy"))
    assert own == [(t.number, t.value) for t in complete]  # each trial's own value beside it
    best_params = client.get_run(parent.info.run_id).data.params
    # the parent's description says the outcome at a glance, linking the best trial's run
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert f"[trial {study.best_trial.number}](" in note and f"/runs/{best_run})" in note
    assert f"test accuracy {tested[0].data.metrics['test_accuracy']:.4f}" in note and "`train.lr` = " in note
    best_values = json.loads(study.best_trial.user_attrs["values"])  # dotted paths, whatever branch sampled them
    assert {k: best_params[f"best.{k}"] for k in best_values} == {k: str(v) for k, v in best_values.items()}
    assert "train.lr" in best_values and "train.optimizer" in best_values
    # MLflow 3 logs the model as a LoggedModel of the experiment, made from the best trial's run
    models = client.search_logged_models(experiment_ids=[parent.info.experiment_id])
    assert [m.source_run_id for m in models] == [best_run]


def test_states_map_to_mlflow_status_with_reasons(in_tmp):
    baselines = [
        {"name": "good", "train.optimizer": "sgd", "train.lr": 0.03, "train.momentum": 0.9},
        # files that are not there, found only when the trial loads its data: an exception
        {"name": "crash", "data.dataset": "cifar10", "data.root": "no-such-folder", "data.download": False},
        {"name": "slow", "train.optimizer": "sgd", "train.lr": 1e-7, "train.momentum": 0.0},
        {"name": "boom", "train.optimizer": "sgd", "train.lr": 10.0, "train.momentum": 0.9, "model.norm": "none"},
        {"name": "nesterov", "train.optimizer": "sgd", "train.nesterov": True, "train.momentum": 0.0},
    ]
    cfg = write_config(in_tmp / "s.yaml", baselines=baselines,
                       train={"epochs": 3, "stall_epochs": 5},
                       study={"name": "tiny", "n_trials": 4, "sampler": "random", "pruner": "median",
                              "pruner_options": {"n_startup_trials": 1, "min_warmup_epochs": 1,
                                                 "warmup_fraction": 0.0}})
    assert run_sweep(in_tmp, cfg) == 0
    all_trials = load_study(in_tmp).get_trials()
    trials = {}
    for t in all_trials:  # each baseline's first try
        trials.setdefault(t.user_attrs["baseline"], t)
    assert set(trials) == {"good", "crash", "slow", "boom", "nesterov"}  # the crash did not count, so 5 ran
    # the crash is queued to run again (a baseline is not replaced by a sample), behind the baselines queued
    # before it; the budget of 4 verdicts is met first, so its retry waits for a larger --trials
    retry = all_trials[5]
    assert (retry.user_attrs["baseline"], retry.state, retry.system_attrs["failed_trial"]) == (
        "crash", TrialState.WAITING, trials["crash"].number)
    assert trials["good"].state == TrialState.COMPLETE
    # what the pruner judged it by, recorded before it trained: its own epochs, and a warm-up of 1 (options)
    assert (trials["good"].user_attrs["epoch_budget"], trials["good"].user_attrs["first_judged_epoch"]) == (3, 1)
    assert trials["slow"].state == TrialState.PRUNED and trials["slow"].user_attrs["pruned_at_epoch"] == 1
    assert trials["boom"].state == TrialState.FAIL and trials["boom"].user_attrs["fail_kind"] == "diverged"
    assert trials["nesterov"].user_attrs["fail_kind"] == "invalid"
    assert "nesterov" in trials["nesterov"].user_attrs["fail_reason"]
    assert trials["crash"].user_attrs["fail_kind"] == "error"
    assert "no-such-folder" in trials["crash"].user_attrs["fail_reason"]

    client, _, children = mlflow_runs(in_tmp)
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    assert len(by_trial) == 5
    expected = {"good": ("FINISHED", "COMPLETE"), "slow": ("KILLED", "PRUNED"), "boom": ("FAILED", "FAIL"),
                "nesterov": ("FAILED", "FAIL"), "crash": ("FAILED", "FAIL")}
    for name, (status, state) in expected.items():
        run = by_trial[trials[name].number]
        assert (run.info.status, run.data.tags["state"]) == (status, state), name
    assert by_trial[trials["slow"].number].data.tags["pruned_at_epoch"] == "1"
    assert by_trial[trials["boom"].number].data.tags["fail_kind"] == "diverged"
    # the diverged trial keeps the metrics of the epoch it diverged in
    boom_loss = client.get_metric_history(by_trial[trials["boom"].number].info.run_id, "train_loss")
    assert [m.step for m in boom_loss] == [trials["boom"].user_attrs.get("epochs_run", 0) + 1]
    crash_artifacts = [a.path for a in client.list_artifacts(by_trial[trials["crash"].number].info.run_id)]
    assert "error.txt" in crash_artifacts


def test_resume_respects_the_budget_and_repeats_nothing(in_tmp, capsys):
    cfg = write_config(in_tmp / "s.yaml", study={"name": "tiny", "n_trials": 2, "sampler": "random",
                                                 "pruner": "none"})
    assert run_sweep(in_tmp, cfg) == 0
    assert run_sweep(in_tmp, cfg) == 0  # budget met: trains nothing
    assert "2/2 trials finished, resuming" in capsys.readouterr().out
    assert len(load_study(in_tmp).get_trials()) == 2
    assert run_sweep(in_tmp, cfg, "--trials", "3") == 0  # one more
    trials = load_study(in_tmp).get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 3
    _, parents, children = mlflow_runs(in_tmp)
    assert len(parents) == 1 and len(children) == 3


def test_baselines_run_first_with_exact_values(in_tmp):
    baselines = [{"name": "doc-run-7", "train.optimizer": "sgd", "train.lr": 0.05, "train.momentum": 0.0,
                  "train.epochs": 1},
                 {"name": "adam", "train.optimizer": "adam", "train.lr": 0.005}]
    cfg = write_config(in_tmp / "s.yaml", baselines=baselines)
    assert run_sweep(in_tmp, cfg) == 0
    trials = load_study(in_tmp).get_trials()
    assert [t.user_attrs.get("baseline") for t in trials[:2]] == ["doc-run-7", "adam"]
    # momentum 0.0 is outside the space's [0.5, 0.9]: it is fixed, not sampled, and not clipped
    # each learning rate is shown to the sampler under its optimiser's branch (sweep_helpers.TINY)
    assert trials[0].params == {"train.optimizer": "sgd", "train.lr[train.optimizer=sgd]": 0.05}
    assert json.loads(trials[0].user_attrs["values"])["train.momentum"] == 0.0
    assert trials[1].params == {"train.optimizer": "adam", "train.lr[train.optimizer=adam]": 0.005}
    _, _, children = mlflow_runs(in_tmp)
    run0 = next(c for c in children if c.data.tags["trial"] == "0")
    assert run0.data.params["train.momentum"] == "0.0" and run0.data.params["train.epochs"] == "1"
    assert run0.data.tags["baseline"] == "doc-run-7"


def test_conditional_parameters_only_when_active():
    config = config_from_dict({"space": TINY["space"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        values = suggest(trial, config.space)
        assert ("train.momentum" in values) == (values["train.optimizer"] == "sgd")
        assert ("train.momentum" in trial.params) == (values["train.optimizer"] == "sgd")
        seen.add(values["train.optimizer"])
        study.tell(trial, 0.0)
    assert seen == {"sgd", "adam"}


@pytest.mark.parametrize("change,message", [
    ({"study": {"name": "tiny", "n_trials": 1, "metric": "val_macro_f1", "sampler": "random", "pruner": "none"}},
     "metric: stored val_accuracy, YAML val_macro_f1"),
    ({"space": {"train.lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True}}}, "space: differs in"),
    ({"train": {"epochs": 3}}, "train.epochs stored 2, now 3"),
])
def test_changed_study_is_refused(in_tmp, capsys, change, message):
    cfg = write_config(in_tmp / "a.yaml", study={"name": "tiny", "n_trials": 1, "sampler": "random",
                                                 "pruner": "none"})
    assert run_sweep(in_tmp, cfg) == 0
    changed = write_config(in_tmp / "b.yaml", **{"study": {"name": "tiny", "n_trials": 1, "sampler": "random",
                                                          "pruner": "none"}, **change})
    assert run_sweep(in_tmp, changed) == 2
    err = capsys.readouterr().err
    assert message in err and "--study-name" in err
    assert len(load_study(in_tmp).get_trials()) == 1


def test_bad_yaml_is_rejected_before_any_trial(in_tmp, capsys):
    cfg = write_config(in_tmp / "s.yaml", space={"train.lr": {"type": "float", "low": 0.1, "high": 0.01}},
                       study={"name": "tiny", "sampler": "annealing"})
    assert run_sweep(in_tmp, cfg) == 2
    err = capsys.readouterr().err
    assert "space.train.lr: low (0.1) > high (0.01)" in err and "study.sampler" in err
    assert not (in_tmp / "sweeps").exists() and not (in_tmp / "mlflow.db").exists()


def test_dry_run_trains_nothing(in_tmp, capsys):
    cfg = write_config(in_tmp / "s.yaml", baselines=[{"name": "b0", "train.lr": 0.02, "train.optimizer": "adam"}])
    assert run_sweep(in_tmp, cfg, "--dry-run", "--dry-run-trials", "3") == 0
    out = capsys.readouterr().out
    assert "train.momentum" in out and "trial 0 (b0)" in out and "trial 2 (sampled)" in out
    assert not (in_tmp / "sweeps").exists() and not (in_tmp / "mlflow.db").exists()


def test_storage_password_is_redacted():
    assert redact("postgresql://alice:s3cret@db.example:5432/optuna") == "postgresql://alice:***@db.example:5432/optuna"
    assert "s3cret" not in redact("postgresql+psycopg2://alice:s3cret@host/db")
    assert redact("http://bob:s3cret@tracking:5000") == "http://bob:***@tracking:5000"
    assert redact("postgresql://host/db?user=a&password=s3cret&sslmode=require") == \
        "postgresql://host/db?user=a&password=***&sslmode=require"
    assert redact("sqlite:///sweeps/a/optuna.db") == "sqlite:///sweeps/a/optuna.db"
    assert redact("postgresql://u:pw/9+x@h:5432/db") == "postgresql://u:***@h:5432/db"  # base64 has '/'
    assert redact("error at postgresql://u:s3cret@h/db: refused") == "error at postgresql://u:***@h/db: refused"


def test_dumped_config_holds_no_password():
    from alexnet_exp.config import dump_config

    config = config_from_dict({"study": {"storage": "postgresql://alice:s3cret@db:5432/optuna",
                                         "tracking_uri": "https://bob:t0ken@mlflow.example"}})
    text = dump_config(config)
    assert "s3cret" not in text and "t0ken" not in text
    assert "postgresql://alice:***@db:5432/optuna" in text and "https://bob:***@mlflow.example" in text


def test_missing_dataset_is_one_clear_error_before_any_state(in_tmp, capsys):
    cfg = write_config(in_tmp / "s.yaml", data={"dataset": "cifar100", "root": str(in_tmp / "data"),
                                               "download": False})
    assert run_sweep(in_tmp, cfg) == 2
    err = capsys.readouterr().err
    assert "cifar-100-python" in err and str(in_tmp / "data") in err
    assert not (in_tmp / "sweeps").exists() and not (in_tmp / "mlflow.db").exists()


def test_a_study_from_before_a_new_option_resumes_at_its_default(in_tmp, capsys):
    """Options added later (model.dropout_at, augment.pre_resize) are missing from older studies' stored
    signature: at their defaults the study resumes, set otherwise it is refused."""
    import json as _json

    cfg = write_config(in_tmp / "a.yaml", study={"name": "tiny", "n_trials": 1, "sampler": "random", "pruner": "none"})
    assert run_sweep(in_tmp, cfg) == 0
    study = load_study(in_tmp)
    stored = _json.loads(study.user_attrs["fixed"])
    for key in ("model.dropout_at", "augment.pre_resize"):  # as a study made before these options existed
        del stored[key]
    study.set_user_attr("fixed", _json.dumps(stored, sort_keys=True))
    more = write_config(in_tmp / "b.yaml", study={"name": "tiny", "n_trials": 2, "sampler": "random", "pruner": "none"})
    assert run_sweep(in_tmp, more) == 0
    assert len(load_study(in_tmp).get_trials()) == 2
    other = write_config(in_tmp / "c.yaml", model={"dropout_at": "fc_outputs"},
                         study={"name": "tiny", "n_trials": 3, "sampler": "random", "pruner": "none"})
    assert run_sweep(in_tmp, other) == 2
    assert "model.dropout_at stored None, now 'fc_outputs'" in capsys.readouterr().err


def test_a_launcher_lets_its_copy_of_the_data_go_while_its_workers_train(in_tmp, monkeypatch):
    """The launcher loads the data once to check it before any state is written; with worker processes, each
    loads its own, so the launcher's copy must not stay beside theirs on the device for the whole sweep."""
    from alexnet_exp.run_parts import DataCache
    from alexnet_exp.sweep import cli

    caches, held_while_supervising = [], []

    class Recorded(DataCache):
        def __init__(self, device):
            super().__init__(device)
            caches.append(self)

    def workers_interrupted(command, n_workers, gpus, budget_left):  # started nothing: Ctrl-C at once
        held_while_supervising.append(len(caches[0]))
        return None

    monkeypatch.setattr(cli, "DataCache", Recorded)
    monkeypatch.setattr(cli, "supervise", workers_interrupted)
    assert run_sweep(in_tmp, write_config(in_tmp / "s.yaml"), "--workers", "2") == 130
    assert held_while_supervising == [0]
    # one worker runs in the launcher's own process and keeps it (its trials use it)
    assert run_sweep(in_tmp, write_config(in_tmp / "s.yaml", study={"n_trials": 1}), "--workers", "1") == 0
    assert len(caches[1]) == 1
