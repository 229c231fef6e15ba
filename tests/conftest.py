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
