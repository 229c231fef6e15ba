"""What a report shows, read from the Optuna study and its MLflow runs. Reads only; never trains."""
from __future__ import annotations

import datetime as dt
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import optuna
import pandas as pd
from mlflow import MlflowClient
from optuna.trial import TrialState

from . import names
from .config import ConfigError, RunConfig, config_from_dict, parse_yaml
from .tracking import resolve_tracking_uri

CURVES = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")

# Results the seed documents report for their hand-tuned runs (test split, not rerun here).
REFERENCE_RESULTS = {
    "cifar100": [{"source": "CIFAR-100 notebook, run 7 (hand-tuned, 20 epochs)", "accuracy": 0.482,
                  "macro_f1": 0.473}],
    "cifar10": [{"source": "CIFAR-10 notebook (reduced AlexNet)", "accuracy": 0.7082, "macro_f1": 0.6436}],
}


@dataclass
class TrialRow:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: Optional[float]
    baseline: str
    note: str
    duration_s: Optional[float]
    values: dict[str, Any]
    config: Optional[RunConfig]
    run_id: Optional[str]
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def last(self, metric: str) -> Optional[float]:
        points = self.curves.get(metric)
        return points[-1][1] if points else None


@dataclass
class StudyData:
    name: str
    metric: str
    direction: str
    sampler: str
    pruner: str
    config: Optional[RunConfig]
    environment: dict[str, Any]
    trials: list[TrialRow]
    study: optuna.Study
    tracking_uri: str
    parent_run_id: Optional[str]
    test_metrics: dict[str, float]
    best_number: Optional[int]

    @property
    def dataset(self) -> str:
        return self.config.data.dataset if self.config else "?"

    @property
    def model(self) -> str:
        return self.config.model.arch if self.config else "?"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out

    def best(self) -> Optional[TrialRow]:
        return next((t for t in self.trials if t.number == self.best_number), None)

    def artifact_text(self, run_id: str, path: str) -> Optional[str]:
        client = MlflowClient(self.tracking_uri)
        try:
            local = client.download_artifacts(run_id, path)
        except Exception:  # not logged (failed trial, older run): the report says so instead
            return None
        return Path(local).read_text()

    def confusion(self) -> Optional[tuple[np.ndarray, list[str]]]:
        best = self.best()
        text = self.artifact_text(best.run_id, "evaluation/confusion_matrix.csv") if best and best.run_id else None
        if text is None:
            return None
        frame = pd.read_csv(io.StringIO(text), index_col=0)
        return frame.to_numpy(), [str(c) for c in frame.columns]

    def per_class(self) -> Optional[pd.DataFrame]:
        best = self.best()
        text = self.artifact_text(best.run_id, "evaluation/per_class.csv") if best and best.run_id else None
        return None if text is None else pd.read_csv(io.StringIO(text), dtype={"class": str})


def _note(t: optuna.trial.FrozenTrial) -> str:
    if t.state == TrialState.PRUNED:
        return f"pruned at epoch {t.user_attrs.get(names.PRUNED_AT_EPOCH, '?')}"
    if t.state == TrialState.FAIL:
        kind = t.user_attrs.get(names.FAIL_KIND)
        reason = t.user_attrs.get(names.FAIL_REASON, "")
        if kind is None:  # no verdict recorded: its process died (stale heartbeat) and it was retried
            return "failed: its worker ended mid-trial"
        return {names.OUT_OF_MEMORY: "out of memory"}.get(kind, kind) + (f": {reason}" if reason else "")
    if t.state == TrialState.RUNNING:
        return f"running (epoch {t.user_attrs.get(names.EPOCHS_RUN, 0)})"
    return ""


def _duration(t: optuna.trial.FrozenTrial) -> Optional[float]:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or dt.datetime.now()
    return (end - t.datetime_start).total_seconds()


def _history(client: MlflowClient, run_id: Optional[str]) -> dict[str, list[tuple[int, float]]]:
    if not run_id:
        return {}
    curves = {}
    for metric in CURVES:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
        if points:
            curves[metric] = points
    return curves


def load_study_data(name: str, storage: str, tracking_uri: Optional[str] = None) -> StudyData:
    """`tracking_uri` defaults to the study's own (its YAML's, else MLFLOW_TRACKING_URI, else MLflow's default)."""
    study = optuna.load_study(study_name=name, storage=storage)
    attrs = study.user_attrs
    base = None
    if names.CONFIG in attrs:
        try:
            base = config_from_dict(parse_yaml(attrs[names.CONFIG]), f"study {name}")
        except ConfigError:
            base = None  # written by another version: show what Optuna has
    tracking_uri = tracking_uri or resolve_tracking_uri(base.study.tracking_uri if base else None)
    client = MlflowClient(tracking_uri)
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = json.loads(t.user_attrs.get(names.VALUES, "{}")) or dict(t.params)
        config = None
        if base is not None:
            try:
                config = base.with_values(values)
            except ConfigError:
                config = None
        run_id = t.user_attrs.get(names.MLFLOW_RUN_ID)
        value = t.value if t.state == TrialState.COMPLETE else None
        rows.append(TrialRow(t.number, t.state.name, value, t.user_attrs.get(names.BASELINE, ""), _note(t),
                             _duration(t), values, config, run_id, _history(client, run_id)))
    complete = [r for r in rows if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    best_number = study.best_trial.number if complete else None
    test = attrs.get(names.TEST_METRICS, {}) if attrs.get(names.TEST_EVALUATED_TRIAL) == best_number else {}
    return StudyData(name, attrs.get(names.METRIC, "value"), study.direction.name.lower(),
                     base.study.sampler if base else "?", base.study.pruner if base else "?", base,
                     attrs.get(names.ENVIRONMENT, {}), rows, study, tracking_uri, attrs.get(names.PARENT_RUN_ID),
                     test, best_number)


def _augmentation(config: Optional[RunConfig]) -> str:
    if config is None:
        return ""
    a = config.augment
    parts = ([f"crop{a.crop_padding}"] if a.crop and a.crop_padding else []) + (["flip"] if a.flip else []) \
        + ([f"pca{a.pca_color:g}"] if a.pca_color else [])
    return "+".join(parts) or "none"


def trials_frame(data: StudyData) -> pd.DataFrame:
    """The comparison table: one row per trial, best first by the objective."""
    records = []
    for t in data.trials:
        c = t.config
        records.append({
            "trial": t.number, "baseline": t.baseline, "state": t.state,
            data.metric: t.value if t.value is not None else t.last(data.metric),
            "val_macro_f1": t.last("val_macro_f1"), "val_accuracy": t.last("val_accuracy"),
            "augmentation": _augmentation(c), "normalize": c.augment.normalize if c else "",
            "norm": c.model.norm if c else "", "batch_size": c.train.batch_size if c else None,
            "lr": c.train.lr if c else None, "optimizer": c.train.optimizer if c else "",
            "epochs_run": len(t.curves.get("val_loss", [])), "epochs": c.train.epochs if c else None,
            "duration_s": round(t.duration_s, 1) if t.duration_s is not None else None, "note": t.note,
        })
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return frame
    frame = frame.loc[:, ~frame.columns.duplicated()]
    # Complete trials first, by their objective; then the others by their last reported value.
    frame["_complete"] = frame["state"] == "COMPLETE"
    frame = frame.sort_values(["_complete", data.metric], ascending=[False, data.direction == "minimize"],
                              na_position="last", kind="stable")
    return frame.drop(columns="_complete").reset_index(drop=True)


def discover_studies(sweeps_dir: Path = Path("sweeps")) -> list[tuple[str, str]]:
    """(study name, storage URL) of every study in the default per-study storages under sweeps/."""
    found = []
    for db in sorted(sweeps_dir.glob("*/optuna.db")):
        url = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(url, include_best_trial=False):
            found.append((summary.study_name, url))
    return found
