"""Where this project leans on Optuna and MLflow beyond their stable public API, in one list, each checked by
tests/test_upstream.py so that an upgrade that moves one fails there, loudly, and not in a sweep.

Optuna (5.0):
- `frozen_trial` below: a live trial's stored state through `trial.study._storage.get_trial(trial._trial_id)`
  (Optuna's `Trial` has no public getter of its system attributes).
- `retry_history`, `retried_trial_number` below: `RetryFailedTrialCallback`'s public, experimental helpers
  (what its retries write in a trial's system attributes), with their ExperimentalWarning kept quiet.
- stores/study_store.py `StudyStorage`: overrides RDBStorage's `_get_stale_trial_ids(study_id)` (to record why a
  trial was lost) and claims a queued trial with an UPDATE through `optuna.storages._rdb.models.TrialModel`
  and `optuna.storages._rdb.storage._create_scoped_session`.
- search/samplers.py `_TrialIndexedQMC`: overrides QMCSampler's `_find_sample_id(study, search_space)`;
  `_TrialSeededGrid` sets GridSampler's `_rng` to an `optuna.samplers._lazy_random_state.LazyRandomState`.
- search/pruning.py `SameBudgetStudy`: the `_storage` and `_study_id` a pruner reads from its study;
  `BudgetHyperband` overrides HyperbandPruner's `_create_bracket_study(study, bracket_id)` and calls its
  `_get_bracket_id(study, trial)`.

MLflow (3.17):
- stores/tracking.py: `mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor(run_id, sampling_interval=,
  samples_before_logging=, tracking_uri=)` with `start()` and `finish()`, one monitor per trial run (MLflow's
  public switch monitors only the active run of the process), and after `finish()` its `monitors` (each with
  `metrics`), `collect_metrics()`, `aggregate_metrics()`, `publish_metrics(...)` and `mlflow_logger.flush()`
  to log the last, partial window MLflow's own finish drops;
  `mlflow.store.artifact.artifact_repository_registry.get_artifact_repository(uri, tracking_uri=)` with
  `delete_artifacts(path)` (the client has no call that deletes a run's artifacts).
"""
from __future__ import annotations

import warnings
from typing import Optional

import optuna
from optuna.storages import RetryFailedTrialCallback
from optuna.trial import FrozenTrial


def frozen_trial(trial: optuna.Trial) -> FrozenTrial:
    """The stored state of a live trial (its system attributes included), read once from its storage."""
    return trial.study._storage.get_trial(trial._trial_id)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the earlier tries this trial retries, the first one first ([] for a first try)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(RetryFailedTrialCallback.retry_history(trial) or [])


def retried_trial_number(trial: FrozenTrial) -> Optional[int]:
    """The number of the first try when this trial is a retry, else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryFailedTrialCallback.retried_trial_number(trial)
