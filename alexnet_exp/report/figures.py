"""The report's figures, each written as a PNG. Every function returns the path, or None when the study has
nothing to draw yet (the report then says why)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import optuna
import pandas as pd

from ..figures_common import confusion_png, plt
from .data import StudyData

STYLE = {"COMPLETE": dict(color="0.55", lw=1.0, ls="-", alpha=0.8),
         "PRUNED": dict(color="tab:orange", lw=0.9, ls="--", alpha=0.7),
         "FAIL": dict(color="tab:red", lw=0.9, ls=":", alpha=0.8),
         "RUNNING": dict(color="tab:blue", lw=0.9, ls="-.", alpha=0.7)}
BEST = dict(color="tab:green", lw=2.6, ls="-", alpha=1.0)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend(ax, best: Optional[int]) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], **BEST, label=f"best (trial {best})")] if best is not None else []
    handles += [Line2D([], [], **style, label=state.lower()) for state, style in STYLE.items()]
    ax.legend(handles=handles, fontsize=8, loc="best")


def _curves(data: StudyData, metrics: list[tuple[str, str]], path: Path, log_y: bool = False) -> Optional[Path]:
    if not any(t.curves for t in data.trials):
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2))
    for ax, (metric, label) in zip(np.atleast_1d(axes), metrics):
        ordered = sorted(data.trials, key=lambda t: t.number == data.best_number)  # best drawn last, on top
        for t in ordered:
            points = t.curves.get(metric)
            if not points:
                continue
            style = BEST if t.number == data.best_number else STYLE.get(t.state, STYLE["COMPLETE"])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 3 else None,
                    **style)
        ax.set_xlabel("epoch")
        if log_y:  # one diverging trial would otherwise flatten every other curve
            from matplotlib.ticker import LogFormatter

            ax.set_yscale("log")
            # Plain numbers (0.5, not 5x10^-1); minor ticks are labelled only when the axis spans ~a decade.
            ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
            ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
        ax.set_ylabel(label + (" (log scale)" if log_y else ""))
        ax.set_title(label)
        ax.grid(alpha=0.3)
    _legend(np.atleast_1d(axes)[0], data.best_number)
    return _save(fig, path)


def loss_curves(data: StudyData, path: Path) -> Optional[Path]:
    return _curves(data, [("train_loss", "training loss"), ("val_loss", "validation loss")], path, log_y=True)


def metric_curves(data: StudyData, path: Path) -> Optional[Path]:
    return _curves(data, [("val_accuracy", "validation accuracy"), ("val_macro_f1", "validation macro-F1")], path)


def history(studies: list[StudyData], path: Path) -> Optional[Path]:
    """Objective per trial (pruned ones at their last reported value) with the best so far."""
    if not any(t.value is not None for s in studies for t in s.trials):
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, data in enumerate(studies):
        color = f"C{i}"
        done = [t for t in data.trials if t.value is not None]
        ax.scatter([t.number for t in done], [t.value for t in done], color=color, s=28,
                   label=f"{data.name}: complete" if len(studies) > 1 else "complete")
        pruned = [t for t in data.trials if t.state == "PRUNED" and t.last(data.metric) is not None]
        ax.scatter([t.number for t in pruned], [t.last(data.metric) for t in pruned], facecolors="none",
                   edgecolors=color, s=28, label="pruned (last report)" if i == 0 else None)
        failed = [t for t in data.trials if t.state == "FAIL" and t.last(data.metric) is not None]
        ax.scatter([t.number for t in failed], [t.last(data.metric) for t in failed], marker="x", color="tab:red",
                   s=30, label="failed (last report)" if i == 0 else None)
        best, xs, ys = None, [], []
        better = max if data.direction == "maximize" else min
        for t in sorted(done, key=lambda t: t.number):
            best = t.value if best is None else better(best, t.value)
            xs.append(t.number)
            ys.append(best)
        if xs:  # carry the best on to the last trial
            xs.append(max(t.number for t in data.trials))
            ys.append(ys[-1])
        ax.step(xs, ys, where="post", color=color, lw=2, label="best so far" if len(studies) == 1 else None)
    ax.set_xlabel("trial")
    ax.set_ylabel(studies[0].metric)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def importance(data: StudyData, path: Path) -> tuple[Optional[Path], str]:
    complete = [t for t in data.trials if t.value is not None]
    if len(complete) < 3:
        return None, "needs at least 3 complete trials"
    try:
        # fANOVA on purpose (Optuna 5's default is PED-ANOVA): the share of the objective's variance each
        # parameter explains, with its interactions; seeded, so a report drawn twice says the same
        scores = optuna.importance.get_param_importances(
            data.views_study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as exc:
        return None, str(exc).splitlines()[0]
    if not scores:
        return None, "no sampled parameter varies across the complete trials"
    names = list(scores)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    ax.barh(names, [scores[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, seed 0: share of the objective's variance)")
    ax.set_title("hyperparameter importance")
    return _save(fig, path), ""


def by_choice(data: StudyData, table: pd.DataFrame, path: Path) -> Optional[Path]:
    """The objective of complete trials grouped by each categorical choice that varies."""
    done = table[table["state"] == "COMPLETE"]
    columns = [c for c in ("optimizer", "norm", "normalize", "augmentation", "batch_size")
               if c in done and done[c].nunique() > 1]
    if done.empty or not columns:
        return None
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 4), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    for ax, column in zip(axes[0], columns):
        groups = sorted(done[column].astype(str).unique())
        for i, group in enumerate(groups):
            ys = done.loc[done[column].astype(str) == group, data.metric].to_numpy(dtype=float)
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(ys)), ys, s=24, alpha=0.8)
            ax.hlines(np.median(ys), i - 0.3, i + 0.3, color="k", lw=1.5)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=8)
        ax.set_title(column)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(f"{data.metric} (line: median)")
    return _save(fig, path)


def learning_rate(data: StudyData, table: pd.DataFrame, path: Path) -> Optional[Path]:
    done = table[(table["state"] == "COMPLETE") & table["lr"].notna()]
    if done.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for optimizer, group in done.groupby("optimizer"):
        ax.scatter(group["lr"], group[data.metric], label=optimizer, s=30)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(data.metric)
    ax.set_title("learning rate against the objective (complete trials)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(title="optimizer", fontsize=8)
    return _save(fig, path)


def confusion(data: StudyData, path: Path) -> Optional[Path]:
    found = data.confusion()
    if found is None:
        return None
    cm, names = found
    return confusion_png(cm, names, path, title=f"trial {data.best_number}: validation confusion matrix "
                                                f"(rows sum to 1)")


def per_class_f1(per_class: Optional[pd.DataFrame], path: Path, worst: int = 10) -> Optional[Path]:
    if per_class is None or per_class.empty:
        return None
    ordered = per_class.sort_values("f1", kind="stable").reset_index(drop=True)
    n = len(ordered)
    fig, ax = plt.subplots(figsize=(min(max(6, n * 0.12 + 2), 18), 4.5))
    colors = ["tab:red" if i < worst else "tab:blue" for i in range(n)]
    ax.bar(range(n), ordered["f1"], color=colors)
    ax.set_xticks(range(n), ordered["class"], rotation=90, fontsize=6 if n > 30 else 8)
    ax.set_ylabel("F1 (validation)")
    ax.set_ylim(0, 1)
    ax.set_title(f"per-class F1, worst {min(worst, n)} in red")
    return _save(fig, path)


def first_layer_kernels(weights: Path, path: Path) -> Optional[Path]:
    """The best model's conv1 kernels as an image grid (the paper's figure 3)."""
    if not weights.is_file():
        return None
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    kernels = state.get("features.0.weight")
    if kernels is None or kernels.shape[1] != 3:
        return None
    k = kernels.float()
    lo = k.amin(dim=(1, 2, 3), keepdim=True)
    hi = k.amax(dim=(1, 2, 3), keepdim=True)
    k = (k - lo) / (hi - lo).clamp_min(1e-12)  # each kernel stretched to the full range, as in the paper
    n = k.shape[0]
    cols = int(np.ceil(np.sqrt(n * 2)))
    rows = int(np.ceil(n / cols))
    size = k.shape[-1]
    grid = np.ones((rows * (size + 1) + 1, cols * (size + 1) + 1, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        grid[1 + r * (size + 1):1 + r * (size + 1) + size, 1 + c * (size + 1):1 + c * (size + 1) + size] = \
            k[i].permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(min(12, cols * 0.6 + 1), min(10, rows * 0.6 + 1)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"first-layer kernels ({n} x {size}x{size}x3)")
    return _save(fig, path)

