"""The trial budget: which trials count, how many are in flight, and who gives way at the last slot.

The budget (`study.n_trials`) is global: finished trials across all workers, launchers and resumes. A failure
that judges the hyperparameters counts (keys.VERDICT_FAILURES); an exception, a lost or interrupted worker,
or a surplus trial does not, and later trials make it up. Repeats (`study.repeats`) are outside this budget:
they are planned for it once it is spent (repeats.py).
"""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from .. import keys


def is_verdict(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials: complete, pruned, or failed for a reason that judges the hyperparameters."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and trial.user_attrs.get(keys.FAIL_KIND) in keys.VERDICT_FAILURES)


def is_repeat(trial: optuna.trial.FrozenTrial) -> bool:
    """A retraining of a chosen configuration with another seed (repeats.py), not a search trial."""
    return keys.REPEAT_OF in trial.user_attrs


def is_measurement(trial) -> bool:
    """A trial that measures rather than searches, never pruned: a repeat, or a replay of a documented run (a
    baseline with `reported` figures, there to be compared with them). Takes a trial or a frozen trial."""
    return keys.REPEAT_OF in trial.user_attrs or keys.REPORTED in trial.user_attrs


def is_error(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and trial.user_attrs.get(keys.FAIL_KIND) == keys.ERROR


def budget_state(study: optuna.Study) -> tuple[int, int]:
    """(finished search trials, search trials running now)."""
    trials = [t for t in study.get_trials(deepcopy=False) if not is_repeat(t)]
    return sum(is_verdict(t) for t in trials), sum(t.state == TrialState.RUNNING for t in trials)


def surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Two workers can take the last slot of the budget at the same moment: the later trial gives way."""
    ahead = [t for t in study.get_trials(deepcopy=False)
             if t.number < number and not is_repeat(t) and (is_verdict(t) or t.state == TrialState.RUNNING)]
    return len(ahead) >= n_trials
