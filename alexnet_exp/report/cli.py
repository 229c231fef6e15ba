"""The report's command line and page layout: which blocks, tables and figures a study's report holds.

Reads the Optuna study and its MLflow runs (never trains, needs no GPU) and writes `reports/<study>/`:
report.md, a self-contained report.html, trials.csv and the figures as PNG; the report also goes to the study's
MLflow parent run as artifacts. Works on running studies (a snapshot) and on studies with no finished trial.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

import pandas as pd

from ..redaction import redact_url
from ..sweep import keys
from . import figures, study_figures
from .data import StudyData, discover_studies, load_study_data, param_columns, trials_frame
from .one_label import EVERY_STATE, one_label_study
from .page_table import page_table
from .references import reference_blocks, reported_blocks
from .render import Block, Figure, Table, render_html, render_markdown
from .render import fmt as _fmt
from .ties import configurations, labels_by_trial, noise_blocks

# Below this many complete trials, fANOVA's importances are mostly noise (issue 12).
IMPORTANCE_MIN_TRIALS = 10


def _test_sentence(test: dict) -> str:
    if not test:
        return " Not yet evaluated on the held-out test split (the sweep does it when it ends)."
    if test.get("test_seeds", 1) > 1:  # repeats: each of the chosen configuration's seeds' models, once
        return (f" Held-out test split (evaluated once, for this configuration only; mean ± std of its "
                f"{int(test['test_seeds'])} seeds' models): accuracy {test['test_accuracy']:.4f} ± "
                f"{test['test_accuracy_std']:.4f}, macro-F1 {test['test_macro_f1']:.4f} ± "
                f"{test['test_macro_f1_std']:.4f}.")
    return (f" Held-out test split (evaluated once, for this trial only): accuracy {test['test_accuracy']:.4f}, "
            f"macro-F1 {test['test_macro_f1']:.4f}.")


def _header(data: StudyData) -> list[Block]:
    counts = data.counts()
    total = sum(t.duration_s or 0 for t in data.trials)
    state_text = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "no trials yet"
    lines = [f"# Study {data.name}",
             f"Dataset **{data.dataset}**, model **{data.model}**, sampler **{data.sampler}**, pruner "
             f"**{data.pruner}**, objective **{data.direction} {data.metric}** (validation split).",
             f"Trials: {state_text}; {total / 60:.1f} minutes of trial time in all."]
    if any(t.state == "RUNNING" for t in data.trials):
        lines.append("The study is still running: this report is a snapshot.")
    for name, tries in data.baselines_without_verdict().items():
        lines.append(f"**Baseline `{name}` has no result**: every try failed without judging its values "
                     f"({'; '.join(tries)}). Fix the cause and run the sweep again (with a larger `--trials` "
                     f"once the budget is met): it tries such a baseline again, it does not replace it by a "
                     f"sample.")
    best = data.best()
    if best is None:
        lines.append("No trial has completed yet: there is no best trial, and the tables and figures below "
                     "show what has been reported so far.")
    else:
        test = _test_sentence(data.test_metrics)
        what = ", ".join(([best.baseline] if best.baseline else [])
                         + ([f"a repeat of trial {best.repeat_of}"] if best.repeat_of is not None else []))
        curves = "".join(f", validation {label} {best.last(metric):.4f}" for metric, label in
                         (("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1")) if best.last(metric) is not None)
        lines.append(f"**Best trial {best.number}**{f' ({what})' if what else ''}: "
                     f"{data.metric} {best.value:.4f}{curves}.{test}{_run_named(data, best.run_id)}")
        lines.append("Parameters: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in best.values.items()))
        if best.config is not None:  # a space may sample the crops: the best trial's own evaluation
            lines.append(f"Validation and test figures of this trial: {best.config.augment.evaluation}.")
    env = data.environment
    if env:
        lines.append(f"Command: `{env.get('command', '?')}`\nGit commit {env.get('git_commit', '?')}, device "
                     f"{env.get('device', '?')}, Python {env.get('python', '?')}, torch {env.get('torch', '?')}, "
                     f"Optuna {env.get('optuna', '?')}, MLflow {env.get('mlflow', '?')}.")
    return lines


def _run_named(data: StudyData, run_id: Optional[str]) -> str:
    if not run_id:
        return ""
    link = data.run_link(run_id)
    return f" [Its MLflow run]({link})." if link else f" Its MLflow run id: `{run_id}`."


def _runs_sentence(data: StudyData) -> str:
    experiment = (data.config.study.experiment if data.config else None) or data.name
    if data.run_link(data.parent_run_id or next((t.run_id for t in data.trials if t.run_id), None)):
        return "Each trial number links to its run on the MLflow tracking server."
    return (f"Each trial's MLflow run is `trial-<number>` in experiment `{experiment}` of "
            f"`{redact_url(data.tracking_uri)}` (`mlflow ui` started in the store's folder shows them).")


def study_report(data: StudyData, out_dir: Path, weights_root: Path = keys.SWEEPS_DIR) -> list[Path]:
    """Write one study's report; return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):  # a figure that cannot be drawn any more must not linger
        old.unlink()
    configs = configurations(data)
    table = trials_frame(data, labels_by_trial(configs))
    table.to_csv(out_dir / "trials.csv", index=False)
    blocks: list[Block] = _header(data) + reference_blocks(data) + reported_blocks(data, configs)
    blocks += noise_blocks(data, configs)
    blocks += ["## Trials", f"One row per trial with every parameter it set (blank: inactive under its conditions), "
                            f"complete trials first by {data.metric}; `vs_best` marks the configurations that "
                            f"cannot be told apart from the best. {_runs_sentence(data)} The same table is in "
                            f"trials.csv, with each trial's MLflow run id."]
    if table.empty:
        blocks.append("No trials yet.")
    else:
        shown, shared = page_table(data, table, param_columns(data))
        blocks += [shared, shown] if shared else [shown]
    blocks.append("## Figures")
    missing = []

    def add(path: Optional[Path], caption: str, why: str = "nothing to draw yet") -> None:
        if path is not None:
            blocks.append(Figure(path, caption))
        else:
            missing.append(f"{caption.split(':')[0].split(' (')[0]}: {why}")

    add(figures.loss_curves(data, out_dir / "loss_curves.png"),
        "Loss curves: training and validation loss per epoch; best trial thick green, pruned dashed, failed dotted")
    add(figures.metric_curves(data, out_dir / "metric_curves.png"),
        "Validation accuracy and macro-F1 per epoch")
    add(figures.history([data], out_dir / "history.png"),
        "Optimisation history: the objective of each trial and the best so far")
    path, why = figures.importance(data, out_dir / "importance.png")
    add(path, "Hyperparameter importance (fANOVA, Optuna's FanovaImportanceEvaluator with seed 0, chosen over "
              "Optuna 5's default PED-ANOVA for its variance shares; a parameter with branches counted once)",
        why or "nothing to draw yet")
    complete = sum(1 for t in data.trials if t.value is not None)
    if path is not None and complete < IMPORTANCE_MIN_TRIALS:
        blocks.append(f"**Warning**: these importances rest on {complete} complete trial(s), fewer than "
                      f"{IMPORTANCE_MIN_TRIALS}; read them as a hint, not a finding.")
    path, why = study_figures.parallel_coordinates(data, out_dir / "parallel_coordinates.png")
    add(path, "Parallel coordinates: every sampled parameter of the complete trials, coloured by the objective",
        why)
    paths, why = study_figures.slices(data, out_dir)
    for i, path in enumerate(paths):
        add(path, f"Slice plots ({i + 1}/{len(paths)}): the objective against each sampled parameter")
    if not paths:
        add(None, "Slice plots", why)
    path, why = study_figures.timeline(data, out_dir / "timeline.png")
    add(path, "Timeline: the trials of each worker (host:pid) from start to end", why)
    add(figures.by_choice(data, table, out_dir / "by_choice.png"),
        "The objective by each categorical choice (complete trials; line: median)",
        "no categorical choice varies across complete trials")
    add(figures.learning_rate(data, table, out_dir / "learning_rate.png"),
        "Learning rate against the objective, log axis")
    add(figures.confusion(data, out_dir / "confusion_matrix.png"),
        "Best trial's validation confusion matrix", "no complete trial with a logged confusion matrix")
    per_class = data.per_class()
    add(figures.per_class_f1(per_class, out_dir / "per_class_f1.png"),
        "Best trial's per-class F1 on the validation split", "no complete trial with per-class metrics")
    if per_class is not None and not per_class.empty:
        worst = per_class.sort_values("f1", kind="stable").head(10)
        blocks.append("Ten worst classes (validation F1): " + ", ".join(
            f"{c} ({f:.2f})" for c, f in zip(worst["class"], worst["f1"])))
    weights = keys.weights_path(keys.weights_dir(data.name, weights_root), data.best_number or 0)
    add(figures.first_layer_kernels(weights, out_dir / "first_layer_kernels.png"),
        "Best model's first-layer kernels (each scaled to its own range)",
        f"the best trial's weights are not in {weights.parent}")
    if missing:
        blocks.append("Not drawn: " + "; ".join(missing) + ".")
    blocks.append(f"optuna-dashboard with one label per parameter (a copy of the study as this report read it, "
                  f"branches merged as in these figures): `optuna-dashboard sqlite:///{out_dir / DASHBOARD_DB}`.")
    (out_dir / "report.md").write_text(render_markdown(blocks))
    (out_dir / "report.html").write_text(render_html(blocks, f"Study {data.name}"))
    _dashboard_copy(data, out_dir / DASHBOARD_DB)
    return sorted(out_dir.iterdir())


DASHBOARD_DB = "dashboard.db"


def _dashboard_copy(data: StudyData, path: Path) -> None:
    """The study as optuna-dashboard should show it: a parameter with branches (`train.lr` per optimiser) is
    one parameter in its importance, slice and parallel-coordinates views, as in the report. A new file each
    time; the study's own storage is only read."""
    path.unlink(missing_ok=True)
    try:
        one_label_study(data.study, EVERY_STATE, f"sqlite:///{path}")
    except Exception as exc:  # the report stands without it
        path.unlink(missing_ok=True)
        print(f"warning: could not write {path} for optuna-dashboard: {type(exc).__name__}: {exc}", file=sys.stderr)


def comparison_report(studies: list[StudyData], out_dir: Path) -> list[Path]:
    """Several studies side by side: one table with a study column, best of each, one history plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames, links = [], []
    for data in studies:
        frame = trials_frame(data)
        frame.insert(0, "study", data.name)
        frames.append(frame.rename(columns={data.metric: "objective"}))
        links += [data.run_link(r) for r in frame.get("run_id", [])]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.to_csv(out_dir / "trials.csv", index=False)
    summary = pd.DataFrame([{"study": d.name, "dataset": d.dataset, "sampler": d.sampler, "metric": d.metric,
                             "trials": len(d.trials), "best_trial": d.best_number,
                             "best_value": d.best().value if d.best() else None,
                             "test_accuracy": d.test_metrics.get("test_accuracy"),
                             "test_macro_f1": d.test_metrics.get("test_macro_f1")} for d in studies])
    blocks: list[Block] = ["# " + " vs ".join(d.name for d in studies), "## Best of each study", summary]
    path = figures.history(studies, out_dir / "history.png")
    if path is not None:
        blocks.append(Figure(path, "Optimisation history of each study"))
    blocks += ["## All trials", Table(table.drop(columns=["run_id"], errors="ignore"), {"trial": links}, ("note",))]
    (out_dir / "report.md").write_text(render_markdown(blocks))
    (out_dir / "report.html").write_text(render_html(blocks, "Studies compared"))
    return sorted(out_dir.iterdir())


def log_to_parent_run(data: StudyData, files: list[Path]) -> bool:
    if not data.parent_run_id:
        return False
    from ..sweep.stores.tracking import Tracker

    tracker = Tracker(data.tracking_uri, (data.config.study.experiment if data.config else None) or data.name)
    if not tracker.run_exists(data.parent_run_id):
        return False
    for path in files:
        tracker.log_file(data.parent_run_id, path, "report")
    return True


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet_exp.report",
                                description="Write comparison reports of sweeps to reports/<study>/.")
    p.add_argument("--study", action="append", default=[], help="study name (repeat to compare studies); "
                                                                 "default: every study under sweeps/")
    p.add_argument("--storage", help="Optuna storage URL (default: sweeps/<study>/optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's, MLFLOW_TRACKING_URI or "
                                          "./mlflow.db)")
    p.add_argument("--out", default="reports", help="output folder (default: reports/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to the parent run")
    args = p.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per study is enough

    if args.study:
        targets = [(name, args.storage or f"sqlite:///{keys.default_storage_path(name)}") for name in args.study]
        missing = [(n, s) for n, s in targets if s.startswith("sqlite:///") and not Path(s[10:]).is_file()]
        if missing:
            print(f"error: no study storage at {missing[0][1][10:]}; run the sweep first, or pass --storage",
                  file=sys.stderr)
            return 2
    else:
        targets = discover_studies()
        if not targets:
            print("error: no study under sweeps/; run `python -m alexnet_exp.sweep search_spaces/smoke.yaml` "
                  "first, or name one with --study and --storage", file=sys.stderr)
            return 2
    studies = []
    for name, storage in targets:
        try:
            studies.append(load_study_data(name, storage, args.tracking_uri))
        except KeyError:
            print(f"error: no study named {name!r} in {redact_url(storage)}", file=sys.stderr)
            return 2
    out = Path(args.out)
    for data in studies:
        files = study_report(data, out / data.name)
        logged = not args.no_mlflow and log_to_parent_run(data, files)
        print(f"{data.name}: {out / data.name / 'report.html'} ({len(data.trials)} trials"
              f"{', logged to the MLflow parent run' if logged else ''})")
    if len(args.study) > 1:
        folder = out / ("compare-" + "-".join(d.name for d in studies))
        comparison_report(studies, folder)
        print(f"comparison: {folder / 'report.html'}")
    return 0
