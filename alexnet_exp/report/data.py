"""What a report shows, read from the Optuna study and its MLflow runs. Reads only; never trains."""
from __future__ import annotations

import datetime as dt
import functools
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

from ..config import ConfigError, RunConfig, config_from_dict, parse_yaml
from ..redaction import without_credentials
from ..sweep import keys
from ..sweep.search.budget import is_verdict
from ..sweep.search.repeats import chosen_configuration
from ..sweep.stores.tracking import resolve_tracking_uri, ui_runs_address
from ..sweep.upstream import retry_history
from .one_label import one_label_study

CURVES = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")

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
    repeat_of: Optional[int] = None  # a repeat: the search trial whose configuration it retrains with another seed
    reported: dict[str, Any] = field(default_factory=dict)  # a baseline's figures as its source reported them
    worker: str = ""  # host:pid of the process that ran it
    started: Optional[dt.datetime] = None
    completed: Optional[dt.datetime] = None
    verdict: bool = False  # finished with a result that judges its values (budget.is_verdict)
    fail_kind: str = ""  # a FAIL trial's kind (keys.FAIL_KIND): interrupted and lost ones were retried
    tries: int = 1  # this trial and the earlier tries it retries; its duration_s is theirs together

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
    val_images: Optional[int] = None  # size of the validation split, from a run's logged dataset input
    experiment_id: Optional[str] = None  # the MLflow experiment of its runs

    def run_link(self, run_id: Optional[str]) -> Optional[str]:
        """A run's page on the tracking server (its address without credentials). None for a local store: no
        address serves it until someone starts `mlflow ui`, so the report names the run instead."""
        if not run_id or not self.experiment_id or not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{ui_runs_address(without_credentials(self.tracking_uri), self.experiment_id)}/{run_id}"

    @functools.cached_property
    def views_study(self) -> optuna.Study:
        """The complete trials with one label per parameter (branches merged, one_label.py): what the
        importance, slice and parallel-coordinates views draw from."""
        return one_label_study(self.study)

    @property
    def dataset(self) -> str:
        return self.config.data.dataset if self.config else "?"

    @property
    def model(self) -> str:
        return self.config.model.arch if self.config else "?"

    def counts(self) -> dict[str, int]:
        """Trials by state, an interrupted or lost one (its retry carries it on) apart from failures."""
        out: dict[str, int] = {}
        for t in self.trials:
            state = t.fail_kind.upper() if t.fail_kind in (keys.INTERRUPTED, keys.LOST) else t.state
            out[state] = out.get(state, 0) + 1
        return out

    def baselines_without_verdict(self) -> dict[str, list[str]]:
        """Baselines none of whose tries ended with a result, none running: name -> each try's note (a try
        still queued when the budget was met is listed as waiting: a larger `--trials` runs it)."""
        tries: dict[str, list[TrialRow]] = {}
        for t in self.trials:
            if t.baseline and t.repeat_of is None:
                tries.setdefault(t.baseline, []).append(t)
        return {name: [f"trial {t.number}: {t.note or t.state.lower()}" for t in rows] for name, rows in tries.items()
                if not any(t.verdict or t.state == "RUNNING" for t in rows)}

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
        return f"pruned at epoch {t.user_attrs.get(keys.PRUNED_AT_EPOCH, '?')}"
    if t.state == TrialState.FAIL:
        kind = t.user_attrs.get(keys.FAIL_KIND)
        reason = t.user_attrs.get(keys.FAIL_REASON, "")
        if kind is None:  # no verdict recorded: its process died (stale heartbeat) and it was retried
            return "failed: its worker ended mid-trial"
        return {keys.OUT_OF_MEMORY: "out of memory"}.get(kind, kind) + (f": {reason}" if reason else "")
    if t.state == TrialState.RUNNING:
        return f"running (epoch {t.user_attrs.get(keys.EPOCHS_RUN, 0)})"
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
    if keys.CONFIG in attrs:
        try:
            base = config_from_dict(parse_yaml(attrs[keys.CONFIG]), f"study {name}")
        except ConfigError:
            base = None  # written by another version: show what Optuna has
    tracking_uri = tracking_uri or resolve_tracking_uri(base.study.tracking_uri if base else None)
    client = MlflowClient(tracking_uri)
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = json.loads(t.user_attrs.get(keys.VALUES, "{}")) or dict(t.params)
        config = None
        if base is not None:
            try:
                config = base.with_values(values)
            except ConfigError:
                config = None
        run_id = t.user_attrs.get(keys.MLFLOW_RUN_ID)
        value = t.value if t.state == TrialState.COMPLETE else None
        row = TrialRow(t.number, t.state.name, value, t.user_attrs.get(keys.BASELINE, ""), _note(t),
                       _duration(t), values, config, run_id, _history(client, run_id))
        row.repeat_of = _int_or_none(t.user_attrs.get(keys.REPEAT_OF))
        row.reported = _json_dict(t.user_attrs.get(keys.REPORTED))
        if keys.WORKER_PID in t.user_attrs:
            row.worker = f"{t.user_attrs.get(keys.WORKER_HOST, '?')}:{t.user_attrs[keys.WORKER_PID]}"
        row.started, row.completed = t.datetime_start, t.datetime_complete
        row.verdict = is_verdict(t)
        row.fail_kind = t.user_attrs.get(keys.FAIL_KIND, "") if t.state == TrialState.FAIL else ""
        row.tries = 1 + len(retry_history(t))
        rows.append(row)
    # A retried trial's time is its tries' together: a resume that trained one last epoch did not take 58 s.
    by_number = {r.number: r for r in rows}
    for t in study.get_trials(deepcopy=False):
        earlier = [by_number[n].duration_s for n in retry_history(t) if n in by_number]
        if earlier and by_number[t.number].duration_s is not None:
            by_number[t.number].duration_s += sum(d for d in earlier if d is not None)
    complete = [r for r in rows if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    # the plan stored decides (the report cannot see the config of the latest run: a study resumed with its
    # repeats removed was test-evaluated on its best single trial; the header then shows no test figures)
    chosen = chosen_configuration(study, repeats=True) if complete else None
    best_number = chosen[0].number if chosen is not None else None
    test = attrs.get(keys.TEST_METRICS, {}) if attrs.get(keys.TEST_EVALUATED_TRIAL) == best_number else {}
    return StudyData(name, attrs.get(keys.METRIC, "value"), study.direction.name.lower(),
                     _searched_with(attrs, "sampler", base.study.sampler if base else "?"),
                     _searched_with(attrs, "pruner", base.study.pruner if base else "?"), base,
                     attrs.get(keys.ENVIRONMENT, {}), rows, study, tracking_uri, attrs.get(keys.PARENT_RUN_ID),
                     test, best_number, _validation_images(client, rows),
                     _experiment_of(client, [attrs.get(keys.PARENT_RUN_ID)] + [r.run_id for r in rows]))


def _experiment_of(client: MlflowClient, run_ids: list[Optional[str]]) -> Optional[str]:
    """The experiment of the first of these runs that the store still has."""
    for run_id in filter(None, run_ids):
        try:
            return client.get_run(run_id).info.experiment_id
        except Exception:  # deleted, or a store that is away: the report names runs without links
            continue
    return None


def _searched_with(attrs: dict, what: str, stored: str) -> str:
    """The study's sampler or pruner, with each change a resume made (keys.SEARCH_HISTORY): `random, then
    tpe from trial 12`."""
    history = json.loads(attrs.get(keys.SEARCH_HISTORY, "[]"))
    steps = [h for i, h in enumerate(history) if i == 0 or h[what] != history[i - 1][what]]
    if len(steps) < 2:
        return steps[0][what] if steps else stored
    return ", then ".join([steps[0][what]] + [f"{h[what]} from trial {h['from_trial']}" for h in steps[1:]])


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _json_dict(text: Any) -> dict[str, Any]:
    """A JSON user attribute; one written by another version (not JSON, not an object) reads as absent."""
    if isinstance(text, dict):
        return text
    try:
        found = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _validation_images(client: MlflowClient, rows: list[TrialRow]) -> Optional[int]:
    """The validation split's size, from the first run that logged its dataset inputs (objective.py logs each
    split with a profile {"images": N, ...}); one run read, not every one. None when no run has it."""
    for row in [r for r in rows if r.run_id][:5]:  # a run that failed before logging inputs: try a few
        try:
            inputs = client.get_run(row.run_id).inputs
        except Exception:  # run deleted or store unreachable: the report goes on without the split size
            return None
        for item in (inputs.dataset_inputs if inputs else []):
            if any(tag.key == "mlflow.data.context" and tag.value == "validation" for tag in item.tags):
                images = _json_dict(item.dataset.profile).get("images")
                return int(images) if isinstance(images, int) and images > 0 else None
    return None


def _augmentation(config: Optional[RunConfig]) -> str:
    if config is None:
        return ""
    a = config.augment
    parts = ([f"crop{a.crop_padding}"] if a.crop and a.crop_padding else []) + (["flip"] if a.flip else []) \
        + ([f"pca{a.pca_color:g}"] if a.pca_color else [])
    return "+".join(parts) or "none"


# Always shown (the figures group by them), whether sampled or fixed: short name -> dotted key.
CORE_PARAMS = {"lr": "train.lr", "optimizer": "train.optimizer", "batch_size": "train.batch_size",
               "norm": "model.norm", "normalize": "augment.normalize"}
# Keys another column already shows.
COVERED = {"train.epochs"}  # the `epochs` column


def param_columns(data: StudyData) -> dict[str, str]:
    """Column name -> dotted key for every parameter a trial of this study set: the core ones, then the space's
    (sampled), then any other a trial's values hold (a baseline's fixed epochs, a repeat's seed). A column is
    the key's last part (`lr`, `momentum`) unless two keys or a fixed column share it; then the dotted key."""
    keys = list(CORE_PARAMS.values()) + list(data.config.space if data.config else [])
    for t in data.trials:
        keys += list(t.values)
    keys = [k for k in dict.fromkeys(keys) if k not in COVERED]
    return {(s if s not in FIXED_COLUMNS else k): k for s, k in zip(short_names(keys), keys)}


def short_names(params: list[str]) -> list[str]:
    """`lr_scale` for `train.lr_scale`; the dotted name where two parameters share their last part."""
    last = [p.rsplit(".", 1)[-1] for p in params]
    return [s if last.count(s) == 1 else p for s, p in zip(last, params)]


FIXED_COLUMNS = {"trial", "baseline", "repeat_of", "state", "val_macro_f1", "val_accuracy", "vs_best",
                 "augmentation", "epochs_run", "epochs", "duration_s", "note"}


def _resolved(config: Optional[RunConfig], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def _param_value(t: TrialRow, key: str, sampled: set[str]) -> Any:
    """What the trial trained with: its own value; blank for a sampled parameter its conditions left inactive
    (momentum under Adam); else the study's fixed value."""
    if key in t.values:
        return t.values[key]
    if key in sampled or t.config is None:
        return None
    return _resolved(t.config, key)


def trials_frame(data: StudyData, vs_best: Optional[dict[int, str]] = None) -> pd.DataFrame:
    """The comparison table: one row per trial with every parameter as a column, best first by the objective.
    `vs_best`: trial number -> its configuration's standing against the best (ties.py)."""
    columns = param_columns(data)
    sampled = set(data.config.space) if data.config else set()
    repeats = any(t.repeat_of is not None for t in data.trials)
    records = []
    for t in data.trials:
        c = t.config
        record = {"trial": t.number, "baseline": t.baseline}
        if repeats:
            record["repeat_of"] = t.repeat_of
        record.update({"state": t.state, data.metric: t.value if t.value is not None else t.last(data.metric)})
        for metric in ("val_macro_f1", "val_accuracy"):  # the objective's own column keeps the trial's value
            record.setdefault(metric, t.last(metric))
        if vs_best is not None:
            record["vs_best"] = vs_best.get(t.number, "")
        record.update({name: _param_value(t, key, sampled) for name, key in columns.items()})
        record.update({"augmentation": _augmentation(c), "epochs_run": len(t.curves.get("val_loss", [])),
                       "epochs": c.train.epochs if c else t.values.get("train.epochs"),
                       "duration_s": round(t.duration_s, 1) if t.duration_s is not None else None,
                       "note": t.note, "run_id": t.run_id or ""})
        records.append(record)
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
