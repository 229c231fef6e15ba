"""The project's storage and samplers pass Optuna's own shipped test cases (optuna.testing), as any storage or
sampler plugged into Optuna must: the wrappers (ResilientRDBStorage's claim and heartbeats, TrialSeededSampler's
per-trial seeding, failures read as worst) keep Optuna's contract. Sampler settings as Optuna's tests use
them (no start-up trials), so each case exercises the model, not only its random start."""
import pytest
from optuna.testing.pytest_samplers import BasicSamplerTestCase, RelativeSamplerTestCase
from optuna.testing.pytest_storages import StorageTestCase

from alexnet_exp.sweep.search.samplers import make_sampler
from alexnet_exp.sweep.stores.study_store import ResilientRDBStorage

SAMPLER_SETTINGS = {
    "tpe": {"n_startup_trials": 0},
    "random": {},
    "cmaes": {"n_startup_trials": 0},
    "qmc": {},
}
# Optuna runs its relative cases on the samplers that sample jointly only (random samples each parameter on its
# own: its sample_relative is empty by design).
RELATIVE = {"tpe": {"n_startup_trials": 0, "multivariate": True}, "cmaes": {"n_startup_trials": 0}, "qmc": {}}


class TestResilientRDBStorage(StorageTestCase):
    @pytest.fixture
    def storage(self, tmp_path):
        return ResilientRDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=60, grace_period=180)


def _builder(name: str, settings: dict):
    import warnings

    import optuna

    def build():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return make_sampler(name, dict(settings), seed=0, space={})
    return build


class TestProjectSamplers(BasicSamplerTestCase):
    @pytest.fixture(params=sorted(SAMPLER_SETTINGS))
    def sampler(self, request):
        return _builder(request.param, SAMPLER_SETTINGS[request.param])


class TestProjectSamplersRelative(RelativeSamplerTestCase):
    @pytest.fixture(params=sorted(RELATIVE))
    def sampler(self, request):
        return _builder(request.param, RELATIVE[request.param])
