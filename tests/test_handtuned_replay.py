"""The replay of the CIFAR-100 notebook (seed document 003) trains what each of its runs trained.

The table is read from the document: its summary list and each run's section (its text and printed
optimiser), and its code (Resize(230) then Resize(227), no crop; its Normalize constants; plain SGD).
"""
import json
from pathlib import Path

import optuna
import pytest

from alexnet_exp.config import load_config, with_epochs_everywhere
from alexnet_exp.sweep.search.space import suggest
from alexnet_exp.sweep.stores.study_store import enqueue_baselines

YAML = Path(__file__).resolve().parent.parent / "search_spaces" / "cifar100_handtuned.yaml"

# run: batch, lr, optimizer, epochs trained, Resize(230) first, flip, normalisation, printed accuracy, macro-F1
NOTEBOOK = {
    1: (32, 0.005, "sgd", 10, None, False, "none", 0.255, 0.245),
    2: (64, 0.005, "sgd", 10, 230, False, "none", 0.1813, 0.1487),
    3: (64, 0.001, "sgd", 10, 230, False, "cifar10_constants", 0.0212, 0.0034),
    4: (128, 0.005, "sgd", 10, 230, True, "cifar10_constants", 0.0480, 0.0173),
    5: (64, 0.005, "sgd", 10, None, True, "none", 0.1594, 0.1283),
    6: (32, 0.005, "sgd", 10, 230, True, "none", 0.2878, 0.2757),
    7: (32, 0.005, "sgd", 20, 230, True, "cifar10_constants", 0.4823, 0.4727),
    8: (32, 0.005, "adam", 2, 230, True, "cifar10_constants", 0.0100, 0.0002),
}


def _replayed(config):
    """What each baseline trial trains, as the sweep resolves it."""
    study = optuna.create_study(direction="maximize")
    enqueue_baselines(study, config)
    out = {}
    for _ in config.baselines:
        trial = study.ask()
        values = suggest(trial, config.space, json.loads(trial.user_attrs.get("fixed", "{}")))
        reported = json.loads(trial.user_attrs.get("reported", "{}"))
        out[trial.user_attrs["baseline"]] = (config.with_values(values), reported)
        study.tell(trial, 0.0)
    return out


def test_each_notebook_run_is_replayed_as_it_was_trained():
    config = load_config(YAML)
    replayed = _replayed(config)
    assert sorted(replayed) == sorted([f"notebook-run-{run}" for run in NOTEBOOK] + ["notebook-run-7-no-logit-relu"])
    for run, (batch, lr, optimizer, epochs, pre_resize, flip, normalize, accuracy, f1) in NOTEBOOK.items():
        trained, reported = replayed[f"notebook-run-{run}"]
        t, a, m = trained.train, trained.augment, trained.model
        assert (t.batch_size, t.lr, t.optimizer, t.epochs) == (batch, lr, optimizer, epochs), run
        assert (a.pre_resize, a.flip, a.normalize, a.crop, a.pca_color) == \
            (pre_resize, flip, normalize, False, 0.0), run
        # plain torch.optim.SGD(params, lr=lr) / Adam(params, lr=lr): no momentum, no decay, no schedule
        assert (t.momentum, t.weight_decay, t.schedule, t.label_smoothing) == (0.0, 0.0, "none", 0.0), run
        # its network: BatchNorm after conv1 only, dropout 0.5 after the hidden FC layers, PyTorch's init, and
        # its ReLU on the logits (the bug that killed run 8)
        assert (m.arch, m.norm, m.dropout, m.dropout_at, m.init, m.width, m.logit_relu) == (
            "alexnet", "conv1_batchnorm", 0.5, "fc_outputs", "pytorch", 1.0, True), run
        assert (reported["accuracy"], reported["macro_f1"], reported["split"], reported["epoch"]) == (
            accuracy, f1, "test", epochs), run


def test_run_7_is_also_replayed_without_the_logit_relu_and_sampled_trials_never_have_it():
    config = load_config(YAML)
    replayed = _replayed(config)
    fixed, reported = replayed["notebook-run-7-no-logit-relu"]
    original, _ = replayed["notebook-run-7"]
    assert not fixed.model.logit_relu and reported == {}  # nothing reported: it was never run by the notebook
    assert fixed.model_copy(update={"model": original.model}) == original  # otherwise run 7 exactly
    assert not config.model.logit_relu and "model.logit_relu" not in config.space


def test_sampled_trials_sample_the_epochs_too():
    """No other dimension absorbs the effect of training 20 epochs instead of 10: epochs are sampled."""
    config = load_config(YAML)
    assert config.space["train.epochs"].choices == [10, 20]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    epochs = {suggest(study.ask(), config.space)["train.epochs"] for _ in range(20)}
    assert epochs == {10, 20}


def test_epochs_flag_shortens_every_trial_baselines_included():
    config = with_epochs_everywhere(load_config(YAML), 2)
    assert "train.epochs" not in config.space
    assert {trained.train.epochs for trained, _ in _replayed(config).values()} == {2}


@pytest.mark.slow
def test_progress_lines_show_each_trials_own_epochs(tmp_path, monkeypatch, capsys):
    """A baseline of 3 epochs among 2-epoch trials: its lines read epoch k/3, the others k/2; `--epochs 1`
    makes every line k/1."""
    from sweep_helpers import run_sweep, write_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_config(tmp_path / "tiny.yaml", study={"name": "tiny", "n_trials": 2, "pruner": "none",
                                                         "sampler": "random", "seed": 0},
                          space={"train.lr": {"type": "float", "low": 0.01, "high": 0.05, "log": True}},
                          baselines=[{"name": "long", "train.epochs": 3}])
    assert run_sweep(tmp_path, config) == 0
    out = capsys.readouterr().out
    assert "trial 0 started (3 epochs)" in out and "trial 0 epoch 3/3" in out
    assert "trial 1 started (2 epochs)" in out and "trial 1 epoch 2/2" in out and "epoch 3/2" not in out
    assert run_sweep(tmp_path, config, "--study-name", "short", "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert "trial 0 started (1 epoch)" in out and "trial 0 epoch 1/1" in out and "/3" not in out
