import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion

from alexnet_exp.metrics import accuracy, confusion_matrix, macro_f1, per_class


@pytest.mark.parametrize("seed,num_classes,missing", [(0, 10, False), (1, 100, False), (2, 10, True)])
def test_metrics_equal_scikit_learn(seed, num_classes, missing):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, 500)
    pred = np.where(rng.random(500) < 0.4, y, rng.integers(0, num_classes, 500))
    if missing:  # a class never predicted, another never present
        pred[pred == 3] = 4
        y[y == 7] = 8
        pred[pred == 7] = 8
    cm = confusion_matrix(torch.from_numpy(y), torch.from_numpy(pred), num_classes)
    assert np.array_equal(cm.numpy(), sk_confusion(y, pred, labels=range(num_classes)))
    assert accuracy(cm) == pytest.approx(accuracy_score(y, pred))
    assert macro_f1(cm) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(num_classes), zero_division=0)
    pc = per_class(cm)
    np.testing.assert_allclose(pc.precision, p)
    np.testing.assert_allclose(pc.recall, r)
    np.testing.assert_allclose(pc.f1, f)
    assert pc.support == s.tolist()


def test_empty_confusion_is_zero_not_nan():
    cm = torch.zeros(5, 5, dtype=torch.int64)
    assert accuracy(cm) == 0.0 and macro_f1(cm) == 0.0
