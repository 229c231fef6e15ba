import os
import sys
from pathlib import Path

import pytest
import torch

# Tests run on 2 CPU cores in CI; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def tiny_data():
    """Synthetic 10-class data, small enough to train on in a second or two."""
    from alexnet_exp.data import load_dataset

    return load_dataset("synthetic", synthetic_classes=10, synthetic_train_size=800, synthetic_test_size=200,
                        val_fraction=0.25)


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """A real PostgreSQL server (databases optuna and mlflow) and an MLflow tracking server backed by it, on
    loopback, shared by the distributed and Slurm tests: (optuna URL, tracking URL, restart_pg, port,
    artifacts folder)."""
    from servers import PASSWORD, start_mlflow_server, start_postgres

    port, stop_pg, restart_pg = start_postgres()
    base = f"postgresql://alex:{PASSWORD}@127.0.0.1:{port}"
    artifacts = tmp_path_factory.mktemp("artifacts")
    try:
        url, mlflow_proc = start_mlflow_server(f"{base}/mlflow", artifacts)
    except Exception:
        stop_pg()
        raise
    yield f"{base}/optuna", url, restart_pg, port, artifacts
    mlflow_proc.terminate()
    mlflow_proc.finish()
    stop_pg()
