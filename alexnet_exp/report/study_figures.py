"""Study-level figures: parallel coordinates and slice plots of every sampled parameter (Optuna's matplotlib
visualisations), and the trials of each worker on a time axis. Each returns the written path(s), or None / []
with the reason when there is nothing to draw (figures.py has the per-trial ones)."""
from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
import optuna
from optuna.trial import TrialState

from ..figures_common import plt
from .data import StudyData, short_names
from .figures import STYLE, _save

SLICES_PER_FIGURE = 4  # Optuna draws one row of panels; 14 of them in one row would be unreadable


def sampled_params(data: StudyData) -> list[str]:
    """The sampled parameters of complete trials, in the space's order (then any the space no longer has)."""
    found = {p for t in data.views_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) for p in t.params}
    order = list(data.config.space) if data.config else []
    return [p for p in order if p in found] + sorted(found - set(order))


def _complete(data: StudyData) -> int:
    return sum(1 for t in data.trials if t.value is not None)


def _optuna_plot(draw, *args, **kwargs):
    # The matplotlib backend is marked experimental, and a parameter with one value so far makes matplotlib
    # widen a zero-width axis with a UserWarning: both are expected here, the figure is fine.
    # Optuna's plot_slice calls plt.style.use("ggplot"), which would restyle every later figure: rc_context
    # puts the style back when it ends.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        return draw(*args, **kwargs)


def _save_optuna(fig, path: Path) -> Path:
    """Optuna's figures hold a colour bar axes tight_layout cannot place: crop to the drawing instead."""
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                _readable_log_ticks(axis)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _readable_log_ticks(axis) -> None:
    """Within less than a decade matplotlib labels every minor tick of a log axis in long scientific notation,
    overlapping (a learning rate sampled in 1e-4..5e-4): then three plain labels across the range instead."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0 or sum(lo <= t <= hi for t in axis.get_majorticklocs()) >= 2:
        return
    ticks = list(np.geomspace(lo, hi, 3))
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FixedFormatter([f"{t:.2g}" for t in ticks]))
    axis.set_minor_formatter(NullFormatter())


def parallel_coordinates(data: StudyData, path: Path) -> tuple[Optional[Path], str]:
    params = sampled_params(data)
    if _complete(data) < 2 or not params:
        return None, "needs 2 complete trials with sampled parameters"
    ax = _optuna_plot(optuna.visualization.matplotlib.plot_parallel_coordinate, data.views_study, params=params,
                      target_name=data.metric)
    # Optuna cuts names at 17 characters (`train.label_smoot...`) and puts its axes so close that the value
    # labels of one (`batchnorm`) ran into the next: short names, a smaller font and more room per axis.
    ax.figure.set_size_inches(max(8.0, 1.45 * len(params) + 3), 5.5)
    ax.set_xticks(ax.get_xticks(), [data.metric] + short_names(sorted(params)), rotation=30, ha="right")
    for text in ax.texts + [t for a in ax.figure.axes for t in a.get_yticklabels()]:
        text.set_fontsize(8)
    return _save_optuna(ax.figure, path), ""


def slices(data: StudyData, out_dir: Path) -> tuple[list[Path], str]:
    """slices_1.png, slices_2.png ...: the objective against each sampled parameter, a few per figure."""
    params = sampled_params(data)
    if _complete(data) < 1 or not params:
        return [], "needs a complete trial with sampled parameters"
    paths = []
    for i in range(0, len(params), SLICES_PER_FIGURE):
        chunk = params[i:i + SLICES_PER_FIGURE]
        axes = _optuna_plot(optuna.visualization.matplotlib.plot_slice, data.views_study, params=chunk,
                            target_name=data.metric)
        figure = (axes if not hasattr(axes, "flat") else axes.flat[0]).figure
        figure.set_size_inches(3.6 * len(chunk) + 1.5, 4.0)
        paths.append(_save_optuna(figure, out_dir / f"slices_{i // SLICES_PER_FIGURE + 1}.png"))
    return paths, ""


def timeline(data: StudyData, path: Path) -> tuple[Optional[Path], str]:
    """One row per worker (host:pid), a bar per trial from its start to its end. Optuna's plot_timeline draws a
    row per trial and knows nothing of workers, so this one is drawn here, in its colours per state."""
    trials = [t for t in data.trials if t.worker and t.started is not None]
    if not trials:
        return None, "no trial recorded its worker and start time"
    workers = sorted({t.worker for t in trials}, key=lambda w: min(t.started for t in trials if t.worker == w))
    now = dt.datetime.now()
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(workers) + 1.8))
    for t in trials:
        row = workers.index(t.worker)
        end = t.completed or now
        style = STYLE.get(t.state, STYLE["COMPLETE"])
        ax.barh(row, end - t.started, left=t.started, height=0.6, color=style["color"], alpha=0.85,
                edgecolor="white")
        ax.text(t.started + (end - t.started) / 2, row, str(t.number), ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(workers)), workers, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time")
    ax.set_title("trials per worker (label: trial number; colour: state)")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=s["color"], label=state.lower()) for state, s in STYLE.items()], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.autofmt_xdate()
    return _save(fig, path), ""
