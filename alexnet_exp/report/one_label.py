"""One label per parameter in the report's views of a study.

A space entry with branches (`train.lr` with one range for SGD and one for Adam) is sampled as one Optuna
parameter per branch (`train.lr[train.optimizer=sgd]`, `train.lr[train.optimizer=adam]`), so that each
branch keeps its own history in the sampler (space_params.optuna_name). Read that way, every importance,
slice and parallel-coordinates view splits the learning rate in two, and "how much does the learning rate
matter" has no answer. The report draws from a copy of the study, in memory, where each trial's branch
parameter carries the entry's own name and a distribution covering every branch; it also writes such a copy
of every trial to reports/<study>/dashboard.db, for optuna-dashboard to show the same way.
"""
from __future__ import annotations

import warnings
from typing import Optional

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ..space_params import entry_name


def _union(a: BaseDistribution, b: BaseDistribution) -> Optional[BaseDistribution]:
    """One distribution holding both, or None when they cannot be one axis (a range and a set of choices)."""
    if isinstance(a, FloatDistribution) and isinstance(b, FloatDistribution):
        return FloatDistribution(min(a.low, b.low), max(a.high, b.high), log=a.log and b.log)
    if isinstance(a, IntDistribution) and isinstance(b, IntDistribution):
        log = a.log and b.log
        return IntDistribution(min(a.low, b.low), max(a.high, b.high), log=log,
                               step=1 if log or a.step != b.step else a.step)
    if isinstance(a, CategoricalDistribution) and isinstance(b, CategoricalDistribution):
        return CategoricalDistribution(list(dict.fromkeys([*a.choices, *b.choices])))
    return None


EVERY_STATE = tuple(TrialState)  # a copy for the dashboard keeps every trial, so that its numbers stay the same


def one_label_study(study: optuna.Study, states: tuple[TrialState, ...] = (TrialState.COMPLETE,),
                    storage: Optional[str] = None) -> optuna.Study:
    """A copy of `study`'s trials in `states` with branch parameters under their entry's name: in memory, or
    in `storage` (a new study of the same name, metric names and user attributes, for optuna-dashboard)."""
    trials = study.get_trials(deepcopy=False, states=states)
    merged: dict[str, BaseDistribution] = {}
    apart: set[str] = set()  # entries whose branches cannot share an axis keep their branch names
    for t in trials:
        for name, dist in t.distributions.items():
            entry = entry_name(name)
            if entry in apart:
                continue
            joined = dist if entry not in merged else _union(merged[entry], dist)
            if joined is None:
                apart.add(entry)
                merged.pop(entry, None)
            else:
                merged[entry] = joined
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory" on the console
    try:
        copy = optuna.create_study(directions=[d.name.lower() for d in study.directions], storage=storage,
                                   study_name=study.study_name if storage else None)
    finally:
        optuna.logging.set_verbosity(level)
    if storage is not None:
        for key, value in study.user_attrs.items():
            copy.set_user_attr(key, value)
        if study.metric_names:
            with warnings.catch_warnings():  # experimental in Optuna 5; what the dashboard names its axis by
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                copy.set_metric_names(study.metric_names)
    for t in trials:
        params, dists = {}, {}
        for name, value in t.params.items():
            entry = entry_name(name)
            label = entry if entry in merged else name
            params[label] = value
            dists[label] = merged[entry] if entry in merged else t.distributions[name]
        copy.add_trial(optuna.trial.FrozenTrial(
            number=t.number, state=t.state, value=None, values=t.values, datetime_start=t.datetime_start,
            datetime_complete=t.datetime_complete, params=params, distributions=dists, user_attrs=t.user_attrs,
            system_attrs={}, intermediate_values=t.intermediate_values, trial_id=0))  # add_trial gives its own id
    return copy
