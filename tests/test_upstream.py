"""Each place the project leans on Optuna's or MLflow's non-public API (alexnet_exp/sweep/upstream.py lists them),
checked against the installed versions: an upgrade that renames, moves or stops calling one fails here."""
import inspect

import optuna
import pytest
from optuna.trial import TrialState

from alexnet_exp.sweep import upstream
from alexnet_exp.sweep.stores.study_store import ResilientRDBStorage, open_storage


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_a_live_trials_stored_state_and_its_retries(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    seen = []

    def objective(trial):
        seen.append(upstream.frozen_trial(trial))
        raise RuntimeError("fails, to be retried")

    study.optimize(objective, n_trials=1, catch=(RuntimeError,))
    assert seen[0].number == 0 and seen[0].state == TrialState.RUNNING
    failed = study.trials[0]
    optuna.storages.RetryFailedTrialCallback(max_retry=2)(study, failed)  # what a stale trial's retry writes
    retry = study.get_trials(states=(TrialState.WAITING,))[0]
    assert upstream.retried_trial_number(retry) == 0 and upstream.retry_history(retry) == [0]
    assert upstream.retried_trial_number(failed) is None and upstream.retry_history(failed) == []


def test_the_stale_trial_query_is_ours_to_extend(tmp_path):
    assert _parameters(optuna.storages.RDBStorage._get_stale_trial_ids) == ["self", "study_id"]
    asked = []

    class Spy(ResilientRDBStorage):
        def _get_stale_trial_ids(self, study_id):
            asked.append(study_id)
            return super()._get_stale_trial_ids(study_id)

    storage = Spy(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage)
    optuna.storages.fail_stale_trials(study)
    assert asked == [study._study_id]


def test_a_queued_trial_is_claimed_through_optunas_trial_table(tmp_path):
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    for column in ("trial_id", "state", "_datetime_start_utc"):
        assert hasattr(models.TrialModel, column), column
    assert callable(models.TrialModel.find_or_raise_by_id) and callable(_create_scoped_session)
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    study.enqueue_trial({"x": 1.0})
    trial = study.ask()  # popped from the queue by ResilientRDBStorage._claim's UPDATE
    frozen = upstream.frozen_trial(trial)
    assert frozen.state == TrialState.RUNNING and frozen.datetime_start is not None
    assert trial.suggest_float("x", 0, 2) == 1.0


def test_qmc_asks_us_for_its_sample_index(tmp_path):
    from alexnet_exp.sweep.search.samplers import _TrialIndexedQMC

    assert _parameters(optuna.samplers.QMCSampler._find_sample_id) == ["self", "study", "search_space"]
    asked = []

    class Spy(_TrialIndexedQMC):
        def _find_sample_id(self, study, search_space):
            asked.append(self._number)
            return super()._find_sample_id(study, search_space)

    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        sampler = Spy(seed=0, independent_sampler=optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=3)
    assert asked == [1, 2]  # trial 0 defines the space (independent sampling); then point k for trial k


def test_the_grids_random_state_is_the_one_we_set():
    from optuna.samplers._lazy_random_state import LazyRandomState

    from alexnet_exp.sweep.search.samplers import _TrialSeededGrid

    sampler = _TrialSeededGrid({"x": [1, 2, 3]}, seed=0)
    assert isinstance(sampler._rng, LazyRandomState)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: t.suggest_categorical("x", [1, 2, 3]), n_trials=3)
    assert isinstance(sampler._rng, LazyRandomState) and sorted(t.params["x"] for t in study.trials) == [1, 2, 3]


def test_hyperband_builds_its_bracket_studies_through_our_override():
    from alexnet_exp.sweep.search.pruning import BudgetHyperband, SameBudgetStudy

    assert _parameters(optuna.pruners.HyperbandPruner._create_bracket_study) == ["self", "study", "bracket_id"]
    assert _parameters(optuna.pruners.HyperbandPruner._get_bracket_id) == ["self", "study", "trial"]
    built = []

    class Spy(BudgetHyperband):
        def _create_bracket_study(self, study, bracket_id):
            built.append(bracket_id)
            return super()._create_bracket_study(study, bracket_id)

    pruner = Spy(min_resource=1, max_resource=4)
    study = optuna.create_study()
    trial = study.ask()
    trial.report(0.5, 1)
    view = SameBudgetStudy(study, 4, 4)
    pruner.prune(view, study.trials[0])
    assert built and view._storage is study._storage and view._study_id == study._study_id


def test_mlflows_system_metrics_monitor_and_artifact_repository_take_what_we_pass():
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    params = _parameters(SystemMetricsMonitor.__init__)
    for name in ("run_id", "sampling_interval", "samples_before_logging", "tracking_uri"):
        assert name in params, name
    for method in ("start", "finish", "collect_metrics", "aggregate_metrics", "publish_metrics"):
        assert callable(getattr(SystemMetricsMonitor, method)), method
    monitor = SystemMetricsMonitor("0" * 32, sampling_interval=1, samples_before_logging=1)
    assert hasattr(monitor, "monitors") and all(hasattr(m, "metrics") for m in monitor.monitors)
    assert callable(monitor.mlflow_logger.flush)
    assert "tracking_uri" in _parameters(get_artifact_repository)
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    assert callable(LocalArtifactRepository.delete_artifacts)
