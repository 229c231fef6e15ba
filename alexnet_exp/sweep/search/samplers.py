"""Samplers by name (pruners: pruning.py), and the rule that makes many processes sample as one sampler would.

Randomness is a function of (study seed, trial number), never of the process: every trial's sampler is seeded
with `trial_seed(seed, trial.number)`. Trial numbers are unique in a study, so workers and launchers that start
at the same instant draw different configurations (seeded alike, they drew identical streams), while one worker
run twice on the same YAML and seed gives the same trials, and a resumed study continues the stream instead of
replaying it. Samplers whose state is the study's (grid ids, the QMC sequence) share the study seed instead.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Optional

import numpy as np
import optuna
from optuna.samplers import BaseSampler, GridSampler, QMCSampler
from optuna.trial import FrozenTrial, TrialState

from ...config import ConfigError
from ...space_params import CategoricalParam, FloatParam, IntParam, SpaceEntry, branches, optuna_name
from .budget import is_verdict

# TPE's constant liar (our default, for parallel workers) is marked experimental.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for one trial, independent for neighbouring trial numbers and stable across machines."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def as_worst_result(trial: FrozenTrial) -> FrozenTrial:
    """A failure that judges its hyperparameters (diverged, stalled, invalid, out of memory) as the sampler should
    see it: PRUNED with no intermediate value, which TPE ranks below every complete and every pruned trial."""
    if trial.state != TrialState.FAIL or not is_verdict(trial):
        return trial
    shown = copy.copy(trial)
    shown.state, shown.intermediate_values = TrialState.PRUNED, {}
    return shown


class FailuresAsWorst:
    """The study as the sampler reads it: verdict failures shown as the worst results (`as_worst_result`),
    everything else as it is. Optuna's samplers ignore FAIL trials, so a region that diverged was sampled again
    and again; through this view TPE puts it among its bad trials. The study itself keeps them as FAIL, with
    their `fail_kind`. What Optuna's samplers read of a study: `_get_trials` (TPE, the intersection search
    space), `get_trials`; the rest is passed through."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = [as_worst_result(t) for t in self._study._get_trials(deepcopy=deepcopy, use_cache=use_cache)]
        return trials if states is None else [t for t in trials if t.state in states]

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str):
        return getattr(self._study, name)


class TrialSeededSampler(BaseSampler):
    """Delegates to `build(trial_seed(seed, trial.number))`, a fresh inner sampler per trial. The samplers
    built this way keep no state of their own between trials besides their random generator. With
    `failures_as_worst`, the inner sampler reads the study through `FailuresAsWorst`, so that the failures that
    judge a configuration teach it (TPE; GP and CMA-ES model complete trials only, random and QMC nothing)."""

    def __init__(self, build: Callable[[int], BaseSampler], seed: int, failures_as_worst: bool = True):
        self._build, self._seed = build, seed
        self._inner = build(seed)
        self._view = FailuresAsWorst if failures_as_worst else (lambda study: study)

    def before_trial(self, study, trial) -> None:
        self._inner = self._build(trial_seed(self._seed, trial.number))
        self._inner.before_trial(self._view(study), trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        pass  # the seed is the trial's; Optuna calls this only for n_jobs > 1, which the sweep never uses

    def __repr__(self) -> str:
        return f"TrialSeededSampler({self._inner!r}, seed={self._seed})"


class _TrialIndexedQMC(QMCSampler):
    """Trial k takes point k of the sequence. Optuna's QMCSampler counts points in a study attribute that it
    reads and then writes back, so workers asking at the same moment got the same point."""

    _number = 0

    def sample_relative(self, study, trial, search_space):
        self._number = trial.number
        return super().sample_relative(study, trial, search_space)

    def _find_sample_id(self, study, search_space) -> int:  # noqa: ARG002 - Optuna's signature
        return self._number


class _TrialSeededGrid(GridSampler):
    """The grid's order (its shuffle) is the study seed's, shared by every process, so that trial k takes grid
    point k; only the pick among unvisited points, once trial numbers pass the grid's size (baselines and
    failures take numbers too), is seeded by the trial."""

    def __init__(self, search_space: dict[str, list], seed: int):
        super().__init__(search_space, seed=seed)
        self._study_seed = seed

    def before_trial(self, study, trial) -> None:
        from optuna.samplers._lazy_random_state import LazyRandomState  # what GridSampler's own _rng is

        self._rng = LazyRandomState(trial_seed(self._study_seed, trial.number))
        super().before_trial(study, trial)


def grid_points(space: dict[str, SpaceEntry]) -> dict[str, list]:
    grid = {}
    lists = [p for p, e in space.items() if isinstance(e, list)]
    if lists:  # each branch would be an axis of its own: every real configuration trained many times over
        raise ConfigError("study.sampler", [
            f"space.{p}: the grid sampler cannot take a list of branches; give each choice its own categorical "
            f"values, or use another sampler" for p in lists])
    for path, entry, param in ((p, e, b) for p, e in space.items() for b in branches(e)):
        name = optuna_name(path, entry, param)
        if isinstance(param, CategoricalParam):
            grid[name] = list(param.choices)
        elif isinstance(param, IntParam) and not param.log:
            grid[name] = list(range(param.low, param.high + 1, param.step))
        elif isinstance(param, FloatParam) and param.step is not None:
            n = int(round((param.high - param.low) / param.step))
            grid[name] = [param.low + i * param.step for i in range(n + 1)]
        else:
            raise ConfigError("study.sampler", [f"space.{path}: the grid sampler needs categorical choices, "
                                                f"an int range or a float with step"])
    return grid


# Each sampler but grid (a study-wide one, _TrialSeededGrid) by name: built per trial from that trial's seed,
# the study's shared seed and `study.sampler_options`.
PER_TRIAL_SAMPLERS: dict[str, Callable[[int, int, dict[str, Any]], BaseSampler]] = {
    # constant_liar: a running trial counts as a poor result, so parallel workers spread out.
    "tpe": lambda s, shared, options: optuna.samplers.TPESampler(seed=s, **{"constant_liar": True, **options}),
    "random": lambda s, shared, options: optuna.samplers.RandomSampler(seed=s, **options),
    "gp": lambda s, shared, options: optuna.samplers.GPSampler(seed=s, **options),
    "cmaes": lambda s, shared, options: optuna.samplers.CmaEsSampler(seed=s, **options),
    "qmc": lambda s, shared, options: _TrialIndexedQMC(
        seed=shared, independent_sampler=optuna.samplers.RandomSampler(seed=s), **options),
}


def make_sampler(name: str, options: dict[str, Any], seed: Optional[int],
                 space: dict[str, SpaceEntry], failures_as_worst: bool = True) -> BaseSampler:
    """The named Optuna sampler, seeded per trial (see the module's docstring). `seed: None` draws a random
    study seed in each process: trials then differ from run to run and still from worker to worker.
    `failures_as_worst`: the sampler learns from failed trials (TrialSeededSampler); off only to measure the
    search as it was before (bench.py's search mode)."""
    study_seed = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
    shared_seed = seed if seed is not None else 0  # grid and QMC: every process must use the same one
    if name not in PER_TRIAL_SAMPLERS and name != "grid":
        raise ConfigError("study.sampler", [f"study.sampler: {name!r}; valid: "
                                            f"{', '.join([*PER_TRIAL_SAMPLERS, 'grid'])}"])
    points = grid_points(space) if name == "grid" else None  # its own errors name the space's key
    try:
        if name == "grid":
            return _TrialSeededGrid(points, seed=shared_seed, **options)
        build = PER_TRIAL_SAMPLERS[name]
        return TrialSeededSampler(lambda s: build(s, shared_seed, options), study_seed, failures_as_worst)
    except (TypeError, ValueError, ImportError) as exc:
        raise ConfigError("study.sampler_options", [f"study.sampler_options for {name}: {exc}"]) from None
