"""The sweep's three roles, each callable on its own and safe in any number of processes at the same instant:

- `setup_study`: create (or check and resume) the Optuna study, the MLflow experiment and the study's parent
  run, close stale runs, enqueue the baselines and the interrupted trials, once;
- `run_worker`: run trials of the study until its global budget is met;
- `finish_study`: evaluate the best trial once on the held-out test split and close the parent run.

What must happen once per study (the parent run, the baselines, the test evaluation) happens under the study's
lock (`locks.study_lock`), so that launchers started together, on one machine or many, agree on it.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from ..config import RunConfig, dump_config
from ..locks import study_lock
from ..redaction import redact_url
from ..run_parts import DataCache, RunParts, evaluate_weights
from . import keys
from .objective import TrialContext, run_trial
from .objective import best_value as _best_value
from .progress import SweepProgress, warn, worker_label
from .search.budget import budget_state, is_repeat, is_verdict
from .search.repeats import (
    ConfigGroup,
    RepeatPlan,
    chosen_configuration,
    ensure_repeats,
    repeats_state,
    search_settled,
    sweep_complete,
)
from .search.seed_stats import seed_stats
from .stores.interrupts import whole_write
from .stores.retries import retry_transient, storage_error_behind, storage_problem
from .stores.study_store import (
    MAX_RETRIES,
    enqueue_baselines,
    open_study,
    record_search_changes,
    requeue_unfinished,
    unfinished,
)
from .stores.tracking import Tracker
from .stores.trial_state import TrialStateStore
from .workers import POLL_SECONDS, run_trials


@dataclass
class SweepStudy:
    """An opened study and where its runs go."""

    config: RunConfig
    storage_url: str
    study: optuna.Study
    tracker: Tracker
    parent_id: str

    @property
    def name(self) -> str:
        return self.config.study.name


@dataclass
class SetupReport:
    finished: int  # trials that count toward the budget, before this run
    closed_runs: int  # MLflow runs left RUNNING by ended processes, closed as failed
    baselines: int  # baselines enqueued now
    requeued: int  # interrupted trials and baselines that raised an error, queued to run again
    search_changes: list[str]  # the sampler or pruner changed by this resume, one line each


def setup_study(config: RunConfig, storage_url: str, storage, sampler, pruner, tracker: Tracker,
                environment: dict[str, Any]) -> tuple[SweepStudy, SetupReport]:
    with study_lock(storage_url, config.study.name):
        study = open_study(config, storage, sampler, pruner)
        parent_id = _ensure_parent_run(study, tracker, config, storage_url)
        study.set_user_attr(keys.ENVIRONMENT, environment)  # the latest invocation; the report shows it
        tracker.set_tags(parent_id, environment)
        search_changes = record_search_changes(study, config)
        if search_changes:  # the parent run's tags say how the study searches now
            tracker.set_tags(parent_id, {"sampler": config.study.sampler, "pruner": config.study.pruner})
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        closed = len(tracker.close_stale(parent_id, running))
        added = enqueue_baselines(study, config)
        requeued = requeue_unfinished(study)
    finished, _ = budget_state(study)
    return SweepStudy(config, storage_url, study, tracker, parent_id), SetupReport(finished, closed, added, requeued,
                                                                                search_changes)


def _ensure_parent_run(study: optuna.Study, tracker: Tracker, config: RunConfig, storage_url: str) -> str:
    parent_id = study.user_attrs.get(keys.PARENT_RUN_ID)
    if tracker.run_exists(parent_id):
        tracker.reopen(parent_id)
    else:
        s = config.study
        parent_id = tracker.start_parent(s.name, {"study": s.name, "sampler": s.sampler, "pruner": s.pruner,
                                                  "metric": s.metric, "direction": s.direction,
                                                  "storage": redact_url(storage_url),
                                                  "dataset": config.data.dataset, "model": config.model.arch})
        study.set_user_attr(keys.PARENT_RUN_ID, parent_id)
        tracker.log_text(parent_id, dump_config(config), keys.CONFIG_ARTIFACT)
    # optuna-dashboard shows user attributes: a link from the study to its runs in MLflow
    study.set_user_attr(keys.MLFLOW_LINK, tracker.run_link(parent_id))
    return parent_id


def join_study(config: RunConfig, storage_url: str, storage, sampler, pruner, tracker: Tracker,
               wait_seconds: float = 0.0, poll_seconds: float = 2.0) -> SweepStudy:
    """A worker's (or the finish step's) view of a study that `setup_study` has set up, waiting up to
    `wait_seconds` for it: a scheduler starts its tasks in any order, an array's tasks all at once."""
    name = config.study.name
    deadline, said_waiting = time.monotonic() + wait_seconds, False
    while True:
        study = None
        try:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:  # not created yet
            pass
        # METRIC is written last of the study's description, PARENT_RUN_ID once the parent run exists
        if study is not None and {keys.METRIC, keys.PARENT_RUN_ID} <= set(study.user_attrs):
            break
        if time.monotonic() >= deadline:
            raise RuntimeError(f"study {name!r} is not set up in {redact_url(storage_url)}"
                               f"{f' after waiting {wait_seconds:.0f} s' if wait_seconds else ''}: run the set-up "
                               f"step first (python -m alexnet_exp.sweep CONFIG --init-only, or a plain launcher), "
                               f"check --storage / study.storage, or wait longer (--wait SECONDS)")
        if not said_waiting:  # a scheduler's log then says why the task sits idle
            print(f"{worker_label()}study {name!r} is not set up yet: waiting up to {wait_seconds:.0f} s for the "
                  f"set-up step", flush=True)
            said_waiting = True
        time.sleep(poll_seconds)
    study = open_study(config, storage, sampler, pruner)  # refuses a study made for another setup
    return SweepStudy(config, storage_url, study, tracker, study.user_attrs[keys.PARENT_RUN_ID])


def prepare_to_join(sweep: SweepStudy) -> int:
    """What a scheduler's worker does before its trials, when budget is left (after a scancel or a preemption,
    without waiting for a new set-up step): reopen the parent run, and queue the interrupted trials to resume
    (once, whoever gets the lock first). Returns how many it queued."""
    if not budget_left(sweep):
        return 0
    if sweep.tracker.run_status(sweep.parent_id) not in (None, "RUNNING"):
        sweep.tracker.reopen(sweep.parent_id)
    with study_lock(sweep.storage_url, sweep.name):
        return requeue_unfinished(sweep.study)


def run_worker(sweep: SweepStudy, cache: DataCache, run_tags: dict[str, Any], quiet: bool) -> str:
    """Run trials in this process until the budget is met. Returns why it stopped: `budget`, `timeout`,
    `errors` or `interrupted` (Ctrl-C, SIGTERM, or the launcher gone)."""
    s, study = sweep.config.study, sweep.study
    finished, _ = budget_state(study)
    progress = SweepProgress(s.n_trials, min(finished, s.n_trials), sweep.config.train.epochs, s.metric, quiet,
                             prefix=worker_label())
    progress.best = _best_value(study)
    ctx = TrialContext(sweep.config, sweep.tracker, sweep.parent_id, cache, progress, state_store(sweep), run_tags)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = trial.value if trial.state == TrialState.COMPLETE else None
        note = trial.user_attrs.get(keys.FAIL_REASON, "")
        if trial.state == TrialState.PRUNED:
            note = f"pruned at epoch {trial.user_attrs.get(keys.PRUNED_AT_EPOCH, '?')}"
        if keys.REPEAT_OF in trial.user_attrs:
            note = "; ".join(filter(None, [f"repeat of trial {trial.user_attrs[keys.REPEAT_OF]}", note]))
        best = _best_value(study)
        progress.trial_finished(trial.number, trial.state.name, value, note, best, is_verdict(trial))
        if best is not None and not is_repeat(trial):
            # The parent's optimisation history in MLflow: the best so far at every finished trial (a step
            # function; logged on improvement only, MLflow drew a diagonal across the failed trials between),
            # and each trial's own value beside it.
            points = {f"best_{s.metric}": best, **({f"trial_{s.metric}": value} if value is not None else {})}
            try:
                sweep.tracker.log_metrics(sweep.parent_id, points, step=trial.number)
            except Exception as exc:  # a chart point is not worth a trial
                warn("could not log the best value on the parent run", exc)

    def requeue() -> None:
        """A baseline that raised an error runs again before the next sample (not only at the next set-up)."""
        if unfinished(study.get_trials(deepcopy=False)):  # the lock only when there is something to queue
            with study_lock(sweep.storage_url, sweep.name):
                requeue_unfinished(study)

    deadline = None if s.timeout is None else time.monotonic() + s.timeout
    try:
        why = run_trials(study, lambda trial: run_trial(trial, ctx, s.n_trials), s.n_trials, s.timeout,
                         after_trial, max_errors=max(3, s.n_trials), before_trial=requeue)
        if why == "budget" and s.repeats is not None:
            why = _run_repeats(sweep, ctx, after_trial, deadline)
        if why == "errors":
            print(f"{worker_label()}stopping: {max(3, s.n_trials)} trials of this run raised errors (see their "
                  f"MLflow runs' {keys.ERROR_ARTIFACT}); fix the cause and run the same command again",
                  file=sys.stderr)
        return why
    except KeyboardInterrupt:
        print(f"\n{worker_label()}interrupted: the running trial is marked failed; run the same command to "
              f"resume it", file=sys.stderr)
        return "interrupted"
    except Exception as exc:
        cause = storage_error_behind(exc)
        if cause is None:
            raise
        # still failing after retry_transient's minute of retries: a full disk under the database, a database
        # gone read-only or away for good. Nothing more can be recorded; what was recorded stays resumable.
        print(f"{worker_label()}stopping: the study's storage {redact_url(sweep.storage_url)} cannot be used "
              f"({storage_problem(cause)}); fix it (free space, bring the database back) and run the same command "
              f"again: the trial in flight is retried", file=sys.stderr, flush=True)
        return "storage"
    finally:
        progress.close()


def _run_repeats(sweep: SweepStudy, ctx: TrialContext, after_trial, deadline: Optional[float]) -> str:
    """The repeats' phase: once no search trial runs any more (one of them may still be the best), plan the
    repeats (once, under the lock) and run planned repeats until all of them are finished. `deadline`
    (time.monotonic) is the study's timeout, shared with the search phase."""
    s, study = sweep.config.study, sweep.study
    while not retry_transient(lambda: search_settled(study, s.n_trials), "the search check"):
        if deadline is not None and time.monotonic() > deadline:
            return "timeout"
        with whole_write():  # a dead worker's trial must not hold the repeats back: failed and retried
            optuna.storages.fail_stale_trials(study)
        time.sleep(POLL_SECONDS)

    def top_up() -> RepeatPlan:
        with study_lock(sweep.storage_url, sweep.name):
            requeue_unfinished(study)  # a repeat stopped by a signal resumes, as at any set-up
            return ensure_repeats(study, s.n_trials, s.repeats.top_k, s.repeats.seeds, sweep.config.train.seed,
                                  MAX_RETRIES)

    plan = retry_transient(top_up, "planning the repeats")
    if plan.planned:
        ctx.progress.extend(plan.planned, f"repeating the {len(plan.seeds)} best configuration(s) with "
                                          f"{s.repeats.seeds} more seed(s) each")
    timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    return run_trials(study, lambda trial: run_trial(trial, ctx, s.n_trials), plan.planned, timeout, after_trial,
                      max_errors=max(3, plan.planned), count=lambda st: repeats_state(st, plan), before_trial=top_up,
                      only_queued=True)


def budget_left(sweep: SweepStudy) -> bool:
    """Is there work left: search trials, or with `study.repeats` the planned repeats?"""
    s = sweep.config.study
    return not sweep_complete(sweep.study, s.n_trials, (s.repeats.top_k, s.repeats.seeds) if s.repeats else None)


def state_store(sweep: SweepStudy) -> TrialStateStore:
    """Checkpoints and weights in sweeps/<study>/, and with a shared store also in the runs' artifacts."""
    s = sweep.config.study
    shared = s.state_store == "mlflow" or (s.state_store == "auto" and sweep.tracker.is_server)
    return TrialStateStore(keys.checkpoints_dir(s.name) if s.checkpoint else None, keys.weights_dir(s.name),
                           sweep.tracker if shared else None)


def trial_counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    return counts


def close_parent(sweep: SweepStudy, status: str) -> bool:
    """Log the trial counts on the parent run and close it with `status`, unless trials are still running in
    other processes (the last process out closes it). Returns whether it was closed."""
    study = sweep.study
    if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        return False
    sweep.tracker.log_metrics(sweep.parent_id, {f"trials_{k}": v for k, v in trial_counts(study).items()}, step=0)
    sweep.tracker.finish(sweep.parent_id, status)
    return True


def finish_study(sweep: SweepStudy, cache: DataCache, status: str = "FINISHED") -> Optional[dict]:
    """Once the budget is spent: evaluate the best trial on the test split (once per best trial, whichever
    process gets here first), then close the parent run. Returns the best trial's summary, or None."""
    with study_lock(sweep.storage_url, sweep.name):
        state = state_store(sweep)
        summary = evaluate_best_once(sweep, cache, state)
        # checkpoints of trials that ended without resuming (interrupted with the budget met elsewhere): a finished
        # study needs none of them, here or in the artifact store
        state.discard_leftover_checkpoints(
            [t.user_attrs.get(keys.MLFLOW_RUN_ID) for t in sweep.study.get_trials(deepcopy=False)
             if t.state == TrialState.FAIL])
        close_parent(sweep, status)
    return summary


def _input_example(parts: RunParts, n: int = 2):
    """The logged model's input example: `n` test images as the model receives them (the eval transform:
    resized to its input size, normalised), so that its signature and example say what to feed it."""
    return parts.augmenter.eval(parts.data.test_x[:n]).cpu()


def _outcome(sweep: SweepStudy, number: int, run_id: str, summary: dict, test: dict) -> str:
    """The parent run's description: the chosen trial (linked), its figures and its parameters."""
    metric = sweep.config.study.metric
    seeds = f" (mean of {summary['seeds']} fresh seeds)" if "seeds" in summary else ""
    params = "\n".join(f"- `{k}` = {v}" for k, v in summary["params"].items())
    link = f"[trial {number}]({sweep.tracker.run_link(run_id)})" if run_id else f"trial {number}"
    return (f"**Best: {link}**, validation {metric} {summary['value']:.4f}{seeds}; held-out test accuracy "
            f"{test['test_accuracy']:.4f}, macro-F1 {test['test_macro_f1']:.4f} (evaluated once).\n\n"
            f"Parameters:\n{params}\n")


def evaluate_best_once(sweep: SweepStudy, cache: DataCache, state: TrialStateStore) -> Optional[dict]:
    """Evaluate the chosen configuration once on the held-out test split (each of its seeds' models when it was
    repeated); log it on their runs and the parent run. Call under the study lock: the study attribute is what
    makes it once."""
    chosen = chosen_configuration(sweep.study, repeats=sweep.config.study.repeats is not None)
    if chosen is None:
        return None
    best, members, group = chosen
    summary = _chosen_summary(best, group)
    if _evaluated_already(sweep.study, best, members):  # the same models: the test split is not read again
        summary.update(sweep.study.user_attrs.get(keys.TEST_METRICS, {}))
        _register_logged_model(sweep, best, summary)
        return summary
    results = [metrics for member in members
               if (metrics := _evaluate_member(sweep, cache, state, member, best, summary)) is not None]
    if not results:
        where = "here or in its MLflow run" if state.shared is not None else "here (study.state_store: local)"
        print(f"note: no saved weights for best trial {best.number} {where}; the process that trained it "
              f"evaluates it on the test split when it finishes", file=sys.stderr)
        return summary
    metrics = _mean_over_seeds(results)
    _log_on_parent(sweep, best, summary, metrics)
    sweep.study.set_user_attr(keys.TEST_EVALUATED_TRIAL, best.number)
    sweep.study.set_user_attr(keys.TEST_EVALUATED_TRIALS, [m.number for m in members])
    sweep.study.set_user_attr(keys.TEST_METRICS, metrics)
    _keep_only_weights_of(sweep.study, state, members)
    summary.update(metrics)
    return summary


def _chosen_summary(best: optuna.trial.FrozenTrial, group: Optional[ConfigGroup]) -> dict:
    """The chosen configuration's trial, value and parameters. Repeated, its value is the mean over its fresh
    seeds (the search seed was selected, see ConfigGroup), with their spread and the two other means beside it."""
    stats = group.fresh if group is not None else None
    summary = {"trial": best.number, "value": stats.mean if stats else best.value,
               "params": json.loads(best.user_attrs[keys.VALUES])}
    if stats is not None:
        summary.update(seeds=stats.n, value_std=stats.std, value_low=stats.low, value_high=stats.high,
                       value_search_seed=best.value, value_all_seeds=group.stats.mean)
    return summary


def _evaluated_already(study: optuna.Study, best: optuna.trial.FrozenTrial, members: list) -> bool:
    return (study.user_attrs.get(keys.TEST_EVALUATED_TRIAL) == best.number
            and study.user_attrs.get(keys.TEST_EVALUATED_TRIALS, [best.number]) == [m.number for m in members])


def _register_logged_model(sweep: SweepStudy, best: optuna.trial.FrozenTrial, summary: dict) -> None:
    """--register-model given after the test evaluation: the best model is logged already, only registered."""
    tracker = sweep.tracker
    if not (tracker.registered_model and best.user_attrs.get(keys.MLFLOW_RUN_ID)):
        return
    try:
        tracker.register_model(best.user_attrs[keys.MLFLOW_RUN_ID],
                               {"study": sweep.name, "trial": best.number, sweep.config.study.metric: summary["value"],
                                **sweep.study.user_attrs.get(keys.TEST_METRICS, {})})
    except Exception as exc:
        warn(f"could not register the best model as {tracker.registered_model!r}", exc)


def _evaluate_member(sweep: SweepStudy, cache: DataCache, state: TrialStateStore, member: optuna.trial.FrozenTrial,
                     best: optuna.trial.FrozenTrial, summary: dict) -> Optional[dict]:
    """One seed's model of the chosen configuration on the test split, logged on its run (the best's with its
    model); None when its weights are neither here nor in its run."""
    run_id = member.user_attrs.get(keys.MLFLOW_RUN_ID)
    weights = state.fetch_weights(member.number, run_id)
    if weights is None:
        return None
    values = json.loads(member.user_attrs[keys.VALUES])
    parts, result = evaluate_weights(sweep.config.with_values(values), cache, weights, "test")
    metrics = {"test_accuracy": result.accuracy, "test_macro_f1": result.macro_f1, "test_loss": result.loss}
    step = member.user_attrs.get(keys.EPOCHS_RUN, 0)
    if member is best and run_id:
        tags = {"study": sweep.name, "trial": best.number, sweep.config.study.metric: summary["value"], **metrics}
        try:  # the test metrics logged with the model, linked to it
            sweep.tracker.log_model(run_id, parts.model, _input_example(parts), name=f"{sweep.name}-best",
                                    metrics=metrics, step=step, tags=tags,
                                    link_metrics=("val_accuracy", "val_macro_f1", "val_loss"))
            return metrics
        except Exception as exc:  # the model file is a convenience; the test metrics are logged below
            warn("could not log the best model to MLflow", exc)
    if run_id:
        sweep.tracker.log_metrics(run_id, metrics, step=step)
    return metrics


def _mean_over_seeds(results: list[dict]) -> dict:
    """The test figures of the chosen configuration: the mean over its seeds' models, and how much they spread."""
    metrics = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
    if len(results) > 1:
        metrics.update({f"{k}_std": seed_stats([r[k] for r in results]).std
                        for k in ("test_accuracy", "test_macro_f1")})
        metrics["test_seeds"] = len(results)
    return metrics


def _log_on_parent(sweep: SweepStudy, best: optuna.trial.FrozenTrial, summary: dict, metrics: dict) -> None:
    """The test figures, the chosen trial and its parameters on the study's parent run."""
    tracker, metric = sweep.tracker, sweep.config.study.metric
    tracker.log_metrics(sweep.parent_id, metrics, step=best.number)
    # the chosen configuration's value (with repeats, the mean over its seeds): apart from the best_ history
    tracker.log_metrics(sweep.parent_id, {f"chosen_{metric}": summary["value"]}, step=best.number)
    best_run = best.user_attrs.get(keys.MLFLOW_RUN_ID) or ""
    tracker.set_tags(sweep.parent_id, {"best_trial": best.number, "best_run_id": best_run,
                                       # the run's description in MLflow: the study's outcome at a glance
                                       "mlflow.note.content": _outcome(sweep, best.number, best_run, summary,
                                                                       metrics)})
    try:  # MLflow params cannot change: a study resumed with a larger budget and a new best keeps the first
        tracker.log_params(sweep.parent_id, {f"best.{k}": v for k, v in summary["params"].items()})
    except Exception as exc:
        warn("the parent run's best.* params stay those of an earlier best trial (MLflow params cannot change); "
             "its best_trial tag names the current one", exc)


def _keep_only_weights_of(study: optuna.Study, state: TrialStateStore, members: list) -> None:
    """Only the chosen configuration's weights are kept; a running trial's stay."""
    kept = {m.number for m in members}
    finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    for number in finished - kept:
        keys.weights_path(state.weights_dir, number).unlink(missing_ok=True)
