"""Figures written as PNG files (matplotlib's Agg backend: no display needed), shared by both sides: the trial
side draws each complete trial's confusion matrix (objective.py), the report its figures (report_*.py). A leaf:
it imports nothing of this package, so the training side never imports a report module.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_png(confusion: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix, readable at 100 classes: every row is labelled "index name", columns by
    index, and a square-root colour scale keeps small confusions visible beside the diagonal."""
    from matplotlib.colors import PowerNorm

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    side = min(max(5.0, n * 0.16 + 3), 20.0)
    fig, ax = plt.subplots(figsize=(side * 1.05, side))
    image = ax.imshow(norm, cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class (square-root scale)")
    font = 8 if n <= 30 else 6
    ax.set_yticks(range(n), [f"{i} {name}" for i, name in enumerate(class_names)], fontsize=font)
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=font)
    else:
        ticks = list(range(0, n, 5))
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=font)
    ax.set_xlabel("predicted class" + (" (index)" if n > 30 else ""))
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (rows sum to 1)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
