"""Pruners by name, made fair: a trial is judged only after a fair share of its own schedule, only against trials
of its own epoch budget, and Hyperband's resource is the trial's own epochs.

Optuna's pruners compare a trial's value at epoch k with other trials' values at epoch k, across the whole
study. Here that compared unlike things: a onecycle trial still warming up with trials at their peak learning
rate, and a 10-epoch trial with 20-epoch trials (whose schedules are at another point at epoch k). So:
- the objective records on each trial its epoch budget (`train.epochs`) and its warm-up (`record_budget`);
- `FairPruner` never judges a trial before the end of its warm-up epoch nor at its last epoch (a trial that
  trained every epoch completes), and gives the Optuna pruner a view of
  the study holding only the trials of the same budget (one inner pruner per budget: Hyperband's brackets and
  SuccessiveHalving's rungs are per budget too);
- repeats (`repeat_of`) are measurements of a chosen configuration: they are never pruned.
Every process builds the pruner from the config alike (`make_pruner`), so workers agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import optuna
from optuna.pruners import BasePruner, HyperbandPruner

from ...choices import PRUNERS
from ...config import ConfigError
from ...train.optim import ONECYCLE_PCT_START
from .. import keys
from .budget import is_measurement

# Keys of study.pruner_options read here, not passed on to the Optuna pruner.
WARMUP_OPTIONS = ("warmup_fraction", "min_warmup_epochs")


@dataclass(frozen=True)
class WarmupRule:
    """A trial is first judged at the end of epoch `epochs(...)`: at least `min_epochs`, at least `fraction`
    of its own epochs, and for onecycle at least the epochs of OneCycleLR's warm-up (its peak)."""

    fraction: float = 0.25  # share of the trial's own epochs
    min_epochs: int = 2  # the first epoch is noise (the median pruner's old n_warmup_steps: 2)

    def epochs(self, epochs: int, schedule: str, lr_warmup_epochs: int = 0) -> int:
        """The first epoch at which a trial of `epochs` epochs may be judged: after its own learning-rate
        warm-up too (`train.warmup_epochs`; a rate still rising is not the trial's rate yet). Never past its
        epochs (the pruner judges no trial at its last epoch anyway: FairPruner)."""
        # round() first: 0.3 * 10 is 3.0000000000000004 in floating point, whose ceiling would be 4.
        shares = [self.fraction] + ([ONECYCLE_PCT_START] if schedule == "onecycle" else [])
        needed = max([self.min_epochs, lr_warmup_epochs + 1]
                     + [math.ceil(round(share * epochs, 9)) for share in shares])
        return min(needed, epochs)


def warmup_rule(options: dict[str, Any]) -> WarmupRule:
    """The warm-up keys of `study.pruner_options`, checked; defaults where absent."""
    rule = WarmupRule()
    fraction = options.get("warmup_fraction", rule.fraction)
    min_epochs = options.get("min_warmup_epochs", rule.min_epochs)
    errors = []
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        errors.append(f"study.pruner_options.warmup_fraction: {fraction!r}; a share of each trial's epochs, "
                      f"from 0 to 1 (default {rule.fraction})")
    if isinstance(min_epochs, bool) or not isinstance(min_epochs, int) or min_epochs < 1:
        errors.append(f"study.pruner_options.min_warmup_epochs: {min_epochs!r}; a whole number of epochs, 1 or "
                      f"more (default {rule.min_epochs}; 1 judges trials from their first epoch)")
    if errors:
        raise ConfigError("study.pruner_options", errors)
    return WarmupRule(float(fraction), min_epochs)


def record_budget(trial: optuna.Trial, epochs: int, schedule: str, options: dict[str, Any],
                  lr_warmup_epochs: int = 0) -> None:
    """Write on `trial`, before it trains, what the pruner judges it by: its epoch budget and its warm-up."""
    trial.set_user_attr(keys.EPOCH_BUDGET, epochs)
    trial.set_user_attr(keys.FIRST_JUDGED_EPOCH, warmup_rule(options).epochs(epochs, schedule, lr_warmup_epochs))


def epoch_budget(trial: optuna.trial.FrozenTrial, default: int) -> int:
    """The trial's own epochs; `default` (the config's train.epochs) for trials recorded without one."""
    return int(trial.user_attrs.get(keys.EPOCH_BUDGET, default))


class SameBudgetStudy:
    """What Optuna's pruners read of a study (`get_trials`, `direction`, `study_name`, `_storage`), showing only
    the trials of one epoch budget, and optionally only those `keep` accepts (one Hyperband bracket)."""

    def __init__(self, study: optuna.Study, budget: int, default_budget: int,
                 keep: Optional[Callable[[optuna.trial.FrozenTrial], bool]] = None):
        self._study, self._budget, self._default, self._keep = study, budget, default_budget, keep

    def narrowed(self, keep: Callable[[optuna.trial.FrozenTrial], bool]) -> "SameBudgetStudy":
        return SameBudgetStudy(self._study, self._budget, self._default, keep)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if epoch_budget(t, self._default) == self._budget and (self._keep is None or self._keep(t))]

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.get_trials()

    @property
    def direction(self):
        return self._study.direction

    @property
    def directions(self):
        return self._study.directions

    @property
    def study_name(self) -> str:
        return self._study.study_name

    @property
    def _storage(self):  # SuccessiveHalving records each trial's rung values through it
        return self._study._storage

    @property
    def _study_id(self) -> int:
        return self._study._study_id

    def stop(self) -> None:
        self._study.stop()


class BudgetHyperband(HyperbandPruner):
    """Hyperband over the trials of one epoch budget. Optuna's own bracket study reads the storage directly,
    every trial of the study; this one narrows the same-budget view to the bracket."""

    def _create_bracket_study(self, study, bracket_id: int):
        return study.narrowed(lambda t: self._get_bracket_id(study, t) == bracket_id)


# Each pruner that prunes, by name, built for one epoch budget from `study.pruner_options` (`none`, which
# prunes nothing, is make_pruner's NopPruner). median and percentile act only once 3 trials of the budget
# have finished.
PRUNER_BUILDERS: dict[str, Callable[[dict[str, Any], int], BasePruner]] = {
    "median": lambda options, budget: optuna.pruners.MedianPruner(**{"n_startup_trials": 3, **options}),
    "percentile": lambda options, budget: optuna.pruners.PercentilePruner(
        **{"percentile": 25.0, "n_startup_trials": 3, **options}),
    "successive_halving": lambda options, budget: optuna.pruners.SuccessiveHalvingPruner(**options),
    "hyperband": lambda options, budget: BudgetHyperband(**{"min_resource": 1, **options, "max_resource": budget}),
}


def _inner_pruner(name: str, options: dict[str, Any], budget: int) -> BasePruner:
    return PRUNER_BUILDERS[name](options, budget)


class FairPruner(BasePruner):
    """The named Optuna pruner, per epoch budget, after each trial's warm-up (see the module's docstring).
    Built from plain values only, so every worker process builds the same one from the config."""

    def __init__(self, name: str, options: dict[str, Any], default_epochs: int):
        self._name, self._default_epochs = name, default_epochs
        self._warmup = warmup_rule(options)
        self._options = {k: v for k, v in options.items() if k not in WARMUP_OPTIONS}
        self._inner: dict[int, BasePruner] = {}
        self.for_budget(default_epochs)  # bad options are a ConfigError now, not at the first report

    def for_budget(self, budget: int) -> BasePruner:
        """The Optuna pruner that judges the trials of `budget` epochs."""
        if budget not in self._inner:
            try:
                self._inner[budget] = _inner_pruner(self._name, self._options, budget)
            except (TypeError, ValueError) as exc:
                raise ConfigError("study.pruner_options", [f"study.pruner_options for {self._name}: {exc}"]) from None
        return self._inner[budget]

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if is_measurement(trial):
            return False
        step = trial.last_step
        budget = epoch_budget(trial, self._default_epochs)
        warmup = trial.user_attrs.get(keys.FIRST_JUDGED_EPOCH, self._warmup.epochs(budget, "none"))
        # Never at its last epoch: the budget is spent, and pruning would only throw the finished result away
        # (a 1- or 2-epoch trial was otherwise judged only there, and `--epochs 1` pruned half a sweep).
        if step is None or step < warmup or step >= budget:
            return False
        return self.for_budget(budget).prune(SameBudgetStudy(study, budget, self._default_epochs), trial)

    def __repr__(self) -> str:
        return f"FairPruner({self._name}, {self._options}, {self._warmup})"


def make_pruner(name: str, options: dict[str, Any], epochs: int) -> BasePruner:
    """`study.pruner` with `study.pruner_options`; `epochs` (the config's train.epochs) stands for the budget
    of trials recorded without one. `none` prunes nothing and reads no options."""
    if name not in PRUNERS:
        raise ConfigError("study.pruner", [f"study.pruner: {name!r}; valid: {', '.join(PRUNERS)}"])
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband" and "max_resource" in options:
        raise ConfigError("study.pruner_options", ["study.pruner_options.max_resource: Hyperband's resource is "
                                                   "each trial's own train.epochs; remove the key"])
    return FairPruner(name, options, epochs)
