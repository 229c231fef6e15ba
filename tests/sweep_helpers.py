"""Small sweep configs written to a temp dir, run in-process against real Optuna and MLflow sqlite stores."""
import yaml
from mlflow import MlflowClient

from alexnet_exp.sweep import cli as sweep

TINY = {
    "data": {"dataset": "synthetic", "synthetic_classes": 4, "synthetic_train_size": 600,
             "synthetic_test_size": 80, "val_fraction": 0.25},
    "model": {"arch": "alexnet_cifar", "width": 0.125, "norm": "batchnorm", "dropout": 0.0},
    "augment": {"crop": False, "flip": True},
    "train": {"optimizer": "sgd", "lr": 0.03, "batch_size": 32, "epochs": 2, "device": "cpu",
              "loss_every_steps": 1},
    "study": {"name": "tiny", "n_trials": 3, "pruner": "none", "sampler": "random", "seed": 0},
    # Adam's own range: at SGD's rates (0.01-0.1) it explodes on this tiny network, and is then `diverged`
    "space": {"train.lr": [{"when": {"train.optimizer": "sgd"}, "type": "float", "low": 0.01, "high": 0.1, "log": True},
                           {"when": {"train.optimizer": "adam"}, "type": "float", "low": 1.0e-3, "high": 1.0e-2,
                            "log": True}],
              "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
              "train.momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"train.optimizer": "sgd"}}},
}


def write_config(path, **sections):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and key in raw and key != "space":
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def run_sweep(tmp_path, config_path, *flags):
    return sweep.main([str(config_path), "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                       *flags])


def mlflow_runs(tmp_path, experiment="tiny"):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    return client, parents, children
