"""One trial: sample values -> resolved config -> train -> MLflow child run -> Optuna verdict.

Every outcome is recorded with its reason: complete (value), pruned (epoch), failed (diverged, stalled,
invalid, out_of_memory, error). A failure ends the trial, never the sweep.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import socket
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
import torch

from ..config import ConfigError, RepeatsConfig, RunConfig, dump_config, inactive_paths, resolved_rates
from ..figures_common import confusion_png
from ..redaction import redact_text
from ..run_parts import DataCache, RunParts, evaluate_split, train_run
from ..train import EpochMetrics, FitResult
from . import keys
from .progress import SweepProgress
from .progress import warn as _warn
from .search.budget import is_repeat, surplus
from .search.pruning import record_budget
from .search.repeats import best_search_trial, load_plan
from .search.space import suggest
from .stores.retries import retry_transient, storage_problem, transient_storage_errors
from .stores.study_store import trained_values
from .stores.tracking import Tracker
from .stores.trial_state import TrialStateStore
from .upstream import frozen_trial, retried_trial_number, retry_history


class TrialFailed(Exception):
    def __init__(self, kind: str, reason: str):
        self.kind, self.reason = kind, reason
        super().__init__(f"{kind}: {reason}")


class TrialTakenOver(Exception):
    """This worker was paused (a frozen VM, a swap storm, an NFS stall) past its heartbeats: another worker failed
    its trial as `lost` and retries it. Its result is dropped; workers.run_trials carries on."""

    TAKEN_OVER = ("its worker was paused past its heartbeats; another worker failed the trial as lost and retries "
                  "it: this run's later epochs are not the trial's")




@dataclass
class TrialContext:
    base: RunConfig
    tracker: Tracker
    parent_run_id: str
    cache: DataCache
    progress: SweepProgress
    state: TrialStateStore  # where checkpoints and the best weights go (locally, and shared)
    run_tags: dict[str, Any] = field(default_factory=dict)  # study, sampler, device, git commit

    @property
    def metric(self) -> str:
        return self.base.study.metric


def data_digest(config: RunConfig) -> str:
    return hashlib.sha256(json.dumps(config.data.model_dump(), sort_keys=True).encode()).hexdigest()[:12]


def training_fingerprint(config: RunConfig) -> str:
    """What decides a trial's training state: its configuration without the operational keys (the device, the
    data's folder), so that a retry on another machine resumes the checkpoint and another configuration does not."""
    return hashlib.sha256(json.dumps(trained_values(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def best_value(study: optuna.Study) -> Optional[float]:
    """The best value of the search trials, None before one completes. Repeats are left out: a lucky seed of
    a repeated configuration is not a better configuration (the mean over its seeds decides, repeats.py)."""
    best = best_search_trial(study)
    return best.value if best is not None else None


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _log_evaluation(ctx: TrialContext, run_id: str, result, class_names: list[str]) -> None:
    cm = result.confusion.numpy()
    header = ",".join(["true\\pred"] + class_names)
    rows = [",".join([name] + [str(v) for v in row]) for name, row in zip(class_names, cm)]
    ctx.tracker.log_text(run_id, "\n".join([header] + rows) + "\n", "evaluation/confusion_matrix.csv")
    pc = result.per_class
    lines = ["class,precision,recall,f1,support"] + [
        f"{n},{p:.6f},{r:.6f},{f:.6f},{s}" for n, p, r, f, s in zip(class_names, pc.precision, pc.recall, pc.f1,
                                                                      pc.support)]
    ctx.tracker.log_text(run_id, "\n".join(lines) + "\n", "evaluation/per_class.csv")
    with tempfile.TemporaryDirectory() as tmp:
        png = confusion_png(cm, class_names, Path(tmp) / "confusion_matrix.png",
                            title="validation confusion matrix (rows sum to 1)")
        ctx.tracker.log_file(run_id, png, "evaluation")


@dataclass
class RetryChain:
    """Where a retried trial comes from: the first trial of its chain (whose number names the checkpoint) and
    the MLflow runs of the trials it retries, newest first (where their checkpoints are)."""

    root: int
    previous: Optional[int]  # the trial this one retries; None for a fresh trial
    previous_run: Optional[str]  # its MLflow run
    earlier_runs: list[str]


def _retry_chain(trial: optuna.Trial) -> RetryChain:
    trials = trial.study.get_trials(deepcopy=False)  # one read for all of it
    frozen = next(t for t in trials if t.number == trial.number)
    history = retry_history(frozen)
    run_of = {t.number: t.user_attrs.get(keys.MLFLOW_RUN_ID) for t in trials}
    previous = history[-1] if history else None
    first = retried_trial_number(frozen)
    return RetryChain(trial.number if first is None else first, previous, run_of.get(previous),
                      [run_of[n] for n in reversed(history) if run_of.get(n)])


def _log_epoch(ctx: TrialContext, run_id: str, m: EpochMetrics) -> None:
    ctx.tracker.log_metrics(run_id, m.scalars(), m.epoch, [("train_loss_step", s, v) for s, v in m.step_losses])


def _finish_run(ctx: TrialContext, run_id: Optional[str], status: str, tags: dict[str, Any]) -> None:
    """Close the trial's MLflow run; if MLflow cannot be written, say so: the next launcher closes a run left
    RUNNING as stale, and the trial's end is in Optuna already."""
    if run_id is None:
        return
    try:
        ctx.tracker.finish(run_id, status, tags)
    except Exception as exc:
        _warn(f"could not close MLflow run {run_id}", exc)


def _record_failure(trial: optuna.Trial, kind: str, reason: str) -> tuple[str, str]:
    """Write why the trial failed into Optuna; returns what was recorded. A trial that another worker has
    failed already as `lost` (this one's heartbeat stalled past the grace period) keeps that end."""
    try:
        trial.set_user_attr(keys.FAIL_KIND, kind)
        trial.set_user_attr(keys.FAIL_REASON, reason)
        return kind, reason
    except optuna.exceptions.UpdateFinishedTrialError:
        return keys.LOST, "failed by another worker for a stale heartbeat while it still ran"
    except transient_storage_errors() as exc:  # a full disk under the database: MLflow can still say why
        _warn(f"could not record trial {trial.number}'s end in the study's storage ({storage_problem(exc)}): it "
              f"stays running there, and is retried once the storage is back")
        return kind, reason


def _fail(trial: optuna.Trial, ctx: TrialContext, run_id: Optional[str], kind: str, reason: str,
          error_text: Optional[str] = None):
    """Record the trial's failure in Optuna, then in MLflow (its error.txt too), and end the trial. Exception
    texts can hold a URL with its password: they are masked before they are written anywhere."""
    kind, reason = _record_failure(trial, kind, redact_text(reason))
    if error_text is not None and run_id is not None:
        try:
            ctx.tracker.log_text(run_id, redact_text(error_text), keys.ERROR_ARTIFACT)
        except Exception as exc:
            _warn(f"could not write {keys.ERROR_ARTIFACT} to MLflow run {run_id}", exc)
    _finish_run(ctx, run_id, "FAILED", {keys.STATE_TAG: "FAIL", keys.FAIL_KIND: kind, keys.FAIL_REASON: reason})
    raise TrialFailed(kind, reason)


def _record_interrupted(trial: optuna.Trial, ctx: TrialContext, run_id: Optional[str]) -> None:
    """Ctrl-C or SIGTERM, wherever it lands in the trial: Optuna fails the trial, MLflow must too, and the
    checkpoint stays: the next run of the sweep resumes from it."""
    kind, reason = _record_failure(trial, keys.INTERRUPTED, "interrupted (Ctrl-C, SIGTERM, or its launcher ended)")
    _finish_run(ctx, run_id, "FAILED", {keys.STATE_TAG: "FAIL", keys.FAIL_KIND: kind, keys.FAIL_REASON: reason})


def _is_surplus(trial: optuna.Trial, n_trials: int, repeats: Optional[RepeatsConfig]) -> bool:
    """A sampled trial beyond the search budget: taken at the same moment as the last slot, or started once
    the repeats for this budget are planned (a worker that found no queued repeat left). Planned repeats are
    never surplus."""
    frozen = frozen_trial(trial)
    if is_repeat(frozen):
        return False
    plan = load_plan(trial.study) if repeats is not None else None
    if (plan is not None and plan.made_for(n_trials, repeats.top_k, repeats.seeds)
            and trial.number > plan.after_trial and retried_trial_number(frozen) is None):
        return True
    return surplus(trial.study, trial.number, n_trials)


def _keeps_weights(study: optuna.Study, trial: optuna.Trial, value: float, top_k: int) -> bool:
    """Weights are kept for the trials that may be evaluated on the test split: every repeat, and a search
    trial that is among the `top_k` best so far (the configurations the repeats may choose)."""
    if is_repeat(trial):
        return True
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    better = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if not is_repeat(t) and (t.value > value if maximize else t.value < value)]
    return len(better) < top_k


def run_trial(trial: optuna.Trial, ctx: TrialContext, n_trials: int) -> float:
    """One trial, recorded whatever happens: every way out of here leaves Optuna's `fail_kind`/`fail_reason`
    (or a value, or the pruned epoch) and a closed MLflow run."""
    try:
        return _run_trial(trial, ctx, n_trials)
    except KeyboardInterrupt:
        _record_interrupted(trial, ctx, trial.user_attrs.get(keys.MLFLOW_RUN_ID))
        raise


def _run_trial(trial: optuna.Trial, ctx: TrialContext, n_trials: int) -> float:
    if _is_surplus(trial, n_trials, ctx.base.study.repeats):
        raise TrialFailed(*_record_failure(trial, keys.SURPLUS, "the budget was taken by other workers' trials"))
    fixed = json.loads(trial.user_attrs.get(keys.FIXED, "{}"))  # a baseline's exact values
    values = suggest(trial, ctx.base.space, fixed)
    trial.set_user_attr(keys.VALUES, json.dumps(values))
    try:
        config, invalid = ctx.base.with_values(values), None
    except ConfigError as exc:
        config, invalid = None, exc
    ctx.progress.trial_started(trial.number, {**values, **(resolved_rates(config) if config else {})})
    chain = _retry_chain(trial)
    previous = chain.previous
    tags = {**ctx.run_tags, keys.TRIAL_TAG: trial.number, keys.STATE_TAG: "RUNNING",
            keys.BASELINE: trial.user_attrs.get(keys.BASELINE, "")}
    if previous is not None:
        previous_run = chain.previous_run
        tags.update(retry_of_trial=previous, retry_of_run=previous_run or "")
        if previous_run and ctx.tracker.run_status(previous_run) == "RUNNING":
            _finish_run(ctx, previous_run, "FAILED", {keys.STATE_TAG: "FAIL", keys.FAIL_REASON: "its worker "
                                                      f"ended mid-trial; retried as trial {trial.number}"})
    if invalid is not None:
        run_id = ctx.tracker.start_trial(ctx.parent_run_id, f"trial-{trial.number}", values, tags)
        return _fail(trial, ctx, run_id, keys.INVALID, "; ".join(invalid.errors))
    if keys.REPORTED in trial.user_attrs:  # a replay trains every epoch its document trained, a dead run too
        config = config.with_values({"train.stall_epochs": config.train.epochs + 1})
    inactive = inactive_paths(config)  # not logged as if they were used: listed in a tag and config.yaml
    tags.update(dataset=config.data.dataset, model=config.model.arch, evaluation=config.augment.evaluation,
                inactive_params=", ".join(sorted(inactive)))
    run_id = None
    try:
        params = {k: v for k, v in config.flat().items() if k not in inactive}
        run_id = ctx.tracker.start_trial(ctx.parent_run_id, f"trial-{trial.number}", params, tags)
        trial.set_user_attr(keys.MLFLOW_RUN_ID, run_id)
        trial.set_user_attr(keys.WORKER_PID, os.getpid())
        trial.set_user_attr(keys.WORKER_HOST, socket.gethostname())
        ctx.tracker.log_text(run_id, dump_config(config, sampled=values, inactive=inactive), keys.CONFIG_ARTIFACT)
        checkpoint = ctx.state.checkpoint_path(chain.root)
        earlier_runs = chain.earlier_runs if previous is not None else None
        return _train_and_record(trial, ctx, config, run_id, checkpoint, earlier_runs)
    except (KeyboardInterrupt, optuna.TrialPruned, TrialFailed, TrialTakenOver):
        raise  # recorded already, or by run_trial
    except Exception as exc:  # anything else, the trial's own clean-up included: an error of this trial only
        return _fail(trial, ctx, run_id, keys.ERROR, f"{type(exc).__name__}: {exc}", traceback.format_exc())


def _train_and_record(trial: optuna.Trial, ctx: TrialContext, config: RunConfig, run_id: str,
                      checkpoint: Optional[Path], earlier_runs: Optional[list[str]]) -> float:
    """`earlier_runs`: for a retry, the runs of the trials it retries (None for a fresh trial)."""
    fingerprint = training_fingerprint(config)
    resume = _resume_point(trial, ctx, run_id, checkpoint, earlier_runs, fingerprint)
    reporter = EpochReporter(trial, ctx, run_id, resume["epoch"] if resume is not None else 0)
    chain_runs = [run_id, *(earlier_runs or [])]
    try:
        _log_dataset(ctx, run_id, config)
        # what the pruner judges the trial by: its own epochs and warm-up (pruning.py)
        record_budget(trial, config.train.epochs, config.train.schedule, ctx.base.study.pruner_options,
                      config.train.warmup_epochs)
        on_checkpoint = ((lambda state: ctx.state.save_checkpoint(state, checkpoint, run_id, fingerprint))
                         if checkpoint is not None else None)
        parts, result = train_run(config, ctx.cache, on_epoch=reporter, resume=resume, on_checkpoint=on_checkpoint)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Failed by another worker while this one was paused: the retry resumes from this chain's checkpoint and
        # has its own run, so neither is touched. Only this run is closed, saying why.
        _finish_run(ctx, run_id, "FAILED", {keys.STATE_TAG: "FAIL", keys.FAIL_KIND: keys.LOST,
                                            keys.FAIL_REASON: TrialTakenOver.TAKEN_OVER})
        raise TrialTakenOver(f"trial {trial.number}: {TrialTakenOver.TAKEN_OVER}") from None
    except optuna.TrialPruned:
        ctx.state.discard_checkpoint(checkpoint, chain_runs)
        epoch = trial.user_attrs.get(keys.EPOCHS_RUN, 0)
        trial.set_user_attr(keys.PRUNED_AT_EPOCH, epoch)
        _finish_run(ctx, run_id, "KILLED", {keys.STATE_TAG: "PRUNED", keys.PRUNED_AT_EPOCH: epoch})
        raise
    except Exception as exc:  # any other error ends this trial only; its traceback goes to its run
        parts = None  # let the memory go before the next trial
        _release_memory()
        ctx.state.discard_checkpoint(checkpoint, chain_runs)
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(exc):
            return _fail(trial, ctx, run_id, keys.OUT_OF_MEMORY, str(exc).splitlines()[0])
        return _fail(trial, ctx, run_id, keys.ERROR, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    ctx.state.discard_checkpoint(checkpoint, chain_runs)
    if result.status != "completed":
        for m in result.history:  # the epochs fit ended on (a diverged loss) never reached on_epoch
            if m.epoch > reporter.logged_epochs:
                _log_epoch(ctx, run_id, m)
        return _fail(trial, ctx, run_id, result.status, result.reason)
    return _record_completed(trial, ctx, config, run_id, parts, result)


def _resume_point(trial: optuna.Trial, ctx: TrialContext, run_id: str, checkpoint: Optional[Path],
                  earlier_runs: Optional[list[str]], fingerprint: str) -> Optional[dict]:
    """A retry's checkpoint (None for a fresh trial, or when none loads), with the epochs it already trained
    logged on this run so that its curves are whole; a checkpoint that did not load is recorded as moved aside."""
    if earlier_runs is None:
        return None
    resume, moved_aside = ctx.state.load_checkpoint(checkpoint, earlier_runs, fingerprint)
    if moved_aside:  # recorded where the trial's story is read: its attributes (the report) and its run
        trial.set_user_attr(keys.CHECKPOINT_DISCARDED, "; ".join(moved_aside)[:2000])
        ctx.tracker.set_tags(run_id, {keys.CHECKPOINT_DISCARDED: "; ".join(moved_aside)})
    if resume is not None:
        trial.set_user_attr(keys.RESUMED_FROM_EPOCH, resume["epoch"])
        ctx.progress.trial_resumed(trial.number, resume["epoch"], "from the checkpoint its earlier try left")
        for m in resume["history"]:
            _log_epoch(ctx, run_id, EpochMetrics(**m))
    return resume


class EpochReporter:
    """fit's `on_epoch` for a trial: each epoch logged on its run, reported to Optuna, shown, and pruned when
    the pruner says so. `logged_epochs`: the last epoch on the run (a resumed trial starts past its earlier ones)."""

    def __init__(self, trial: optuna.Trial, ctx: TrialContext, run_id: str, logged_epochs: int):
        self.trial, self.ctx, self.run_id, self.logged_epochs = trial, ctx, run_id, logged_epochs

    def __call__(self, m: EpochMetrics) -> None:
        trial, ctx = self.trial, self.ctx
        value = getattr(m, ctx.metric)
        _log_epoch(ctx, self.run_id, m)
        self.logged_epochs = m.epoch

        def report() -> bool:
            trial.set_user_attr(keys.EPOCHS_RUN, m.epoch)
            trial.report(value, m.epoch)
            return trial.should_prune()  # never for repeats and replays (pruning.FairPruner)

        prune = retry_transient(report, f"trial {trial.number}'s epoch {m.epoch} report")
        ctx.progress.epoch(trial.number, m.epoch, value)
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {m.epoch}")


def _log_dataset(ctx: TrialContext, run_id: str, config: RunConfig) -> None:
    """The trial's data (loaded once per worker), its splits logged as the run's dataset inputs."""
    data, _ = ctx.cache.get(config.data)
    ctx.tracker.log_dataset(
        run_id, data.name, data_digest(config), data.source,
        {context: json.dumps({"images": len(labels), "classes": data.num_classes}) for context, labels in
         (("training", data.train_y), ("validation", data.val_y), ("test", data.test_y))})


def _record_completed(trial: optuna.Trial, ctx: TrialContext, config: RunConfig, run_id: str, parts: RunParts,
                      result: FitResult) -> float:
    """A trial that trained every epoch: its last validation figures logged, its weights kept when it is
    among the best, its run closed; returns its value."""
    final = result.last_eval  # fit's last validation pass: no second pass over the split
    if final is None:  # resumed from a checkpoint of the last epoch: nothing was trained here
        final = evaluate_split(parts, "val", config.train.eval_batch_size)
    value = final.accuracy if ctx.metric == "val_accuracy" else final.macro_f1
    _log_evaluation(ctx, run_id, final, parts.data.class_names)
    repeats = ctx.base.study.repeats
    if _keeps_weights(trial.study, trial, value, repeats.top_k if repeats else 1):
        ctx.state.save_weights({k: v.detach().cpu() for k, v in parts.model.state_dict().items()}, trial.number,
                               run_id)
    _finish_run(ctx, run_id, "FINISHED", {keys.STATE_TAG: "COMPLETE"})
    return value
