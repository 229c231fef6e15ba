"""Running trials: the loop every worker runs, and the launcher's management of worker processes.

There is no scheduler here: workers share the Optuna study storage and each asks it for the next trial.
The budget is global (finished trials across all workers and resumes); a worker that finds the budget taken
by trials in flight waits, because one of them may still end in an error that does not count.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

import optuna
from optuna.trial import TrialState

POLL_SECONDS = 1.0

# Failures that are a verdict on the hyperparameters (they count toward the trial budget); any other
# failure (an exception, a killed or interrupted worker, a surplus trial) is not, and later trials make it up.
VERDICT_FAILURES = ("diverged", "stalled", "invalid", "out_of_memory")


def is_verdict(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials: complete, pruned, or failed for a reason that judges the hyperparameters."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("fail_kind") in VERDICT_FAILURES)


def is_error(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and trial.user_attrs.get("fail_kind") == "error"


def budget_state(study: optuna.Study) -> tuple[int, int, int]:
    """(finished trials, trials running or waiting to be retried/run, errors)."""
    trials = study.get_trials(deepcopy=False)
    verdicts = sum(is_verdict(t) for t in trials)
    active = sum(t.state == TrialState.RUNNING for t in trials)
    errors = sum(is_error(t) for t in trials)
    return verdicts, active, errors


def transient_storage_errors() -> tuple[type[BaseException], ...]:
    """What a storage that is away for a moment raises (a restart, a network blip)."""
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, optuna.exceptions.StorageInternalError)


def retry_transient(fn: Callable, what: str, attempts: int = 7):
    """Call `fn`, retrying while the storage is unreachable (a restart, a network blip): 1+2+...+32 s."""
    for attempt in range(attempts):
        try:
            return fn()
        except transient_storage_errors() as exc:
            if attempt == attempts - 1:
                raise
            delay = 2 ** attempt
            print(f"{worker_label()}storage unreachable during {what} ({type(exc).__name__}); retrying in {delay} s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)


def run_trials(study: optuna.Study, objective: Callable, n_trials: int, timeout: Optional[float],
               after_trial: Callable, max_errors: int) -> str:
    """Run trials one at a time until the global budget is met; returns why it stopped."""
    started = time.monotonic()
    while True:
        if timeout is not None and time.monotonic() - started > timeout:
            return "timeout"

        def check() -> tuple[int, int, int]:
            # Trials whose worker died stop beating; failing them here triggers their retry, even while every
            # live worker is only waiting.
            optuna.storages.fail_stale_trials(study)
            return budget_state(study)

        verdicts, active, errors = retry_transient(check, "the budget check")
        if verdicts >= n_trials:
            return "budget"
        if errors >= max_errors:
            return "errors"
        if verdicts + active >= n_trials:
            time.sleep(POLL_SECONDS)
            continue
        try:
            study.optimize(objective, n_trials=1, callbacks=[after_trial], catch=(Exception,),
                           gc_after_trial=False)
        except transient_storage_errors() as exc:
            # Optuna could not record the end of a trial: it stays RUNNING without a heartbeat, so it is failed
            # and retried from its checkpoint once the storage is back. Nothing else is lost; carry on.
            print(f"{worker_label()}storage unreachable while recording a trial ({type(exc).__name__}); it will "
                  f"be retried", file=sys.stderr, flush=True)
            time.sleep(POLL_SECONDS)


def surplus(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Two workers can take the last slot of the budget at the same moment: the later trial gives way."""
    ahead = [t for t in study.get_trials(deepcopy=False)
             if t.number < number and (is_verdict(t) or t.state == TrialState.RUNNING)]
    return len(ahead) >= n_trials


# ---- the launcher's side ------------------------------------------------------------------------------------

def worker_env(index: int, gpus: list[str], n_workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ALEXNET_EXP_WORKER"] = str(index)
    env["PYTHONUNBUFFERED"] = "1"
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]  # one process sees one GPU, round-robin
    else:
        # CPU workers share the cores instead of each starting a thread per core.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n_workers))
    return env


def start_workers(command: list[str], n_workers: int, gpus: list[str]) -> list[subprocess.Popen]:
    return [subprocess.Popen(command, env=worker_env(i, gpus, n_workers)) for i in range(n_workers)]


def wait_for_workers(workers: list[subprocess.Popen], grace_seconds: float = 60.0) -> bool:
    """Wait for every worker; on Ctrl-C or SIGTERM pass SIGTERM on, so each fails its running trial cleanly
    (Optuna and MLflow), and return False. Workers still alive after `grace_seconds` are killed."""
    try:
        for w in workers:
            w.wait()
        return True
    except KeyboardInterrupt:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for w in workers:
            try:
                w.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.kill()
        return False


def gpu_list(flag: Optional[str]) -> list[str]:
    if flag:
        return [g.strip() for g in flag.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_label() -> str:
    index = os.environ.get("ALEXNET_EXP_WORKER")
    return f"[worker {index}] " if index is not None else ""


def python_command(module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", module, *args]
