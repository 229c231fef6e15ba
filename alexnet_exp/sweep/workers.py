"""The loop every worker runs: ask the shared study for the next trial until the global budget is met.

There is no scheduler: workers share the Optuna storage and each asks it for the next trial. A worker that
finds the budget taken by trials in flight waits, because one of them may still end in an error that does not
count. Errors are counted per process, since this run of it: the errors of an earlier run (a fault that has
since passed) never stop a new one.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import optuna

from .progress import worker_label
from .search.budget import budget_state, is_error
from .stores.interrupts import whole_write
from .stores.retries import error_behind, is_lasting, retry_transient, storage_error_behind, storage_problem

POLL_SECONDS = 1.0
MAX_ERROR_PAUSE_SECONDS = 30.0


def taken_over(exc: BaseException) -> bool:
    """Did `exc` come of recording a trial that another worker has failed already (a stale heartbeat)?"""
    # Optuna's own words for telling a finished trial (optuna/study/_tell.py); tests/test_faults.py pins them
    return error_behind(exc, lambda e: isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(e, ValueError) and "Cannot tell a" in str(e))) is not None


def error_pause(consecutive_errors: int) -> float:
    """Seconds to wait before the next trial after errors in a row: 0 after one, then 1, 2, 4 ... 30 s,
    so that a passing fault (a full disk, a folder that is back in a minute) has time to pass."""
    if consecutive_errors < 2:
        return 0.0
    return min(2.0 ** (consecutive_errors - 2), MAX_ERROR_PAUSE_SECONDS)


def run_trials(study: optuna.Study, objective: Callable, n_trials: int, timeout: Optional[float],
               after_trial: Callable, max_errors: int,
               count: Callable[[optuna.Study], tuple[int, int]] = budget_state,
               before_trial: Optional[Callable[[], None]] = None, only_queued: bool = False) -> str:
    """Run trials one at a time until the global budget is met: `count(study)` gives (trials finished, trials
    running) against `n_trials` (the search budget by default; the planned repeats in their phase), and
    `before_trial` runs before each (queueing what is missing); with `only_queued`, only queued trials run, none
    is sampled (the repeats: while the last ones run elsewhere, wait). Returns why it stopped: `budget`,
    `timeout` or `errors` (`max_errors` trials of this process raised errors)."""
    started = time.monotonic()
    errors = consecutive = 0
    said_waiting = False  # a worker idle while others finish says why once, not at every poll

    def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal errors, consecutive
        if is_error(trial):
            errors, consecutive = errors + 1, consecutive + 1
        else:
            consecutive = 0
        after_trial(study, trial)

    while True:
        if timeout is not None and time.monotonic() - started > timeout:
            return "timeout"

        def check() -> tuple[int, int]:
            # Trials whose worker died stop beating; failing them here triggers their retry, even while every
            # live worker is only waiting.
            with whole_write():  # failing a lost trial and queueing its retry: both, or neither
                optuna.storages.fail_stale_trials(study)
            return count(study)

        verdicts, active = retry_transient(check, "the budget check")
        if verdicts >= n_trials:
            return "budget"
        if errors >= max_errors:
            return "errors"
        if verdicts + active >= n_trials:
            if not said_waiting:
                print(f"{worker_label()}waiting: the last {active} trial(s) of the budget run in other workers; "
                      f"this one takes over any that fails", flush=True)
                said_waiting = True
            time.sleep(POLL_SECONDS)
            continue
        said_waiting = False
        time.sleep(error_pause(consecutive))
        if before_trial is not None:
            retry_transient(before_trial, "queueing the next trial")
        if only_queued and not retry_transient(
                lambda: study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)), "the queue"):
            time.sleep(POLL_SECONDS)
            continue
        try:
            study.optimize(objective, n_trials=1, callbacks=[on_trial_end], catch=(Exception,),
                           gc_after_trial=False)
        except Exception as exc:
            if taken_over(exc):
                # This worker was paused past the grace period and another worker failed its trial as `lost`
                # (and retries it): Optuna cannot record this end any more (it says "Cannot tell a FAIL trial",
                # or "Should not reach" over that). The trial's own run is closed; carry on.
                print(f"{worker_label()}a trial of this worker was failed by another for a stale heartbeat (this "
                      f"process was paused); its result is dropped and the trial is retried there",
                      file=sys.stderr, flush=True)
                continue
            cause = storage_error_behind(exc)
            if cause is None:
                raise
            if is_lasting(cause):  # a full disk under the database: stop here (lifecycle.run_worker says why)
                raise cause from None
            # Optuna could not record the end of a trial: it stays RUNNING without a heartbeat, so it is failed
            # and retried from its checkpoint once the storage is back. Nothing else is lost; carry on (a storage
            # that stays away stops this worker at the next budget check, see lifecycle.run_worker).
            print(f"{worker_label()}storage error while recording a trial ({storage_problem(cause)}); it will be "
                  f"retried", file=sys.stderr, flush=True)
            time.sleep(POLL_SECONDS)
