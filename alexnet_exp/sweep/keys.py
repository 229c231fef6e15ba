"""Names shared between modules: what the sweep writes into Optuna and MLflow and where it keeps local state.

The sweep writes them, the report and the tests read them; one definition here instead of string literals
repeated in every module. A leaf module: it imports nothing of this package.
"""
from __future__ import annotations

from pathlib import Path

# ---- Optuna trial user attributes ---------------------------------------------------------------------------
VALUES = "values"  # JSON of every sampled or fixed value of the trial (dotted keys)
FIXED = "fixed"  # JSON of a baseline's values that are fixed, not sampled
BASELINE = "baseline"  # a baseline's name
FAIL_KIND = "fail_kind"  # one of FAIL_KINDS
FAIL_REASON = "fail_reason"
PRUNED_AT_EPOCH = "pruned_at_epoch"
EPOCHS_RUN = "epochs_run"
MLFLOW_RUN_ID = "mlflow_run_id"
WORKER_PID = "worker_pid"
WORKER_HOST = "worker_host"
RESUMED_FROM_EPOCH = "resumed_from_epoch"
CHECKPOINT_DISCARDED = "checkpoint_discarded"  # a checkpoint that did not load, moved aside: why, and where to
REPEAT_OF = "repeat_of"  # a repeat (study.repeats): the number of the search trial whose configuration it retrains
REPORTED = "reported"  # a baseline's figures as its source document reported them (JSON: accuracy, macro_f1, ...)
EPOCH_BUDGET = "epoch_budget"  # the trial's own train.epochs (pruning ranks trials of one budget together)
# the first epoch at which the pruner may judge the trial (its own schedule's share; not train.warmup_epochs, the
# learning rate's warm-up, which it includes)
FIRST_JUDGED_EPOCH = "first_judged_epoch"
# What a trial's end wrote: a retry (same parameters, new trial) must not inherit it.
OUTCOME_ATTRS = (FAIL_KIND, FAIL_REASON, PRUNED_AT_EPOCH, EPOCHS_RUN, MLFLOW_RUN_ID, WORKER_PID, WORKER_HOST,
                 RESUMED_FROM_EPOCH, CHECKPOINT_DISCARDED)

# ---- Optuna study user attributes ---------------------------------------------------------------------------
METRIC = "metric"
SPACE = "space"  # the space's signature, to refuse a resume with another space
FIXED_VALUES = "fixed"  # the fixed values' signature
CONFIG = "config"  # the resolved config as YAML, secrets redacted
PARENT_RUN_ID = "mlflow_parent_run_id"
MLFLOW_LINK = "mlflow_parent_run"  # the parent run's page in the MLflow UI (study user attribute)
BASELINES_ENQUEUED = "baselines_enqueued"
TEST_EVALUATED_TRIAL = "test_evaluated_trial"
TEST_METRICS = "test_metrics"
TEST_EVALUATED_TRIALS = "test_evaluated_trials"  # the trials whose models were evaluated (a repeated configuration's)
REPEATS_PLAN = "repeats_plan"  # JSON {search trial number: [seeds]}: the configurations retrained with more seeds
# JSON list of {"from_trial", "sampler", "pruner"}: how the study searched, and each change a resume made to it
SEARCH_HISTORY = "search_history"
ENVIRONMENT = "environment"  # the latest invocation: command (redacted), versions, device

# ---- why a trial failed (FAIL_KIND) -------------------------------------------------------------------------
DIVERGED, STALLED, INVALID, OUT_OF_MEMORY = "diverged", "stalled", "invalid", "out_of_memory"
ERROR = "error"  # an exception; its traceback is the run's error.txt
INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM (or its launcher died): resumed by the next run of the sweep
LOST = "lost"  # its worker stopped sending heartbeats (killed, machine gone): failed and retried by another
SURPLUS = "surplus"  # started when other workers had taken the last slot of the budget; trained nothing
# Failures that judge the hyperparameters: they count toward the budget. The others are made up by more trials.
VERDICT_FAILURES = (DIVERGED, STALLED, INVALID, OUT_OF_MEMORY)
FAIL_KINDS = VERDICT_FAILURES + (ERROR, INTERRUPTED, LOST, SURPLUS)

# ---- MLflow -------------------------------------------------------------------------------------------------
ROLE_TAG = "role"  # "study" on the parent run, "trial" on each trial's run
ROLE_STUDY, ROLE_TRIAL = "study", "trial"
TRIAL_TAG = "trial"  # the trial number
STATE_TAG = "state"  # COMPLETE, PRUNED, FAIL, RUNNING
ERROR_ARTIFACT = "error.txt"
CONFIG_ARTIFACT = "config.yaml"

# ---- exit codes of `python -m alexnet_exp.sweep` ------------------------------------------------------------
EXIT_OK = 0
EXIT_WORKERS_FAILED = 1  # worker processes died or could not start (see their lines)
EXIT_BAD_INPUT = 2
EXIT_ERRORS = 3  # stopped because trials kept raising errors (see their runs' error.txt)
EXIT_INCOMPLETE = 4  # --finalize: the budget is not met yet; nothing evaluated on the test split
EXIT_INTERRUPTED = 130

# ---- local state --------------------------------------------------------------------------------------------
SWEEPS_DIR = Path("sweeps")


def study_dir(study_name: str, sweeps_dir: Path = SWEEPS_DIR) -> Path:
    """sweeps/<study>/: the default SQLite storage, checkpoints and the best weights of one study."""
    return sweeps_dir / study_name


def default_storage_path(study_name: str, sweeps_dir: Path = SWEEPS_DIR) -> Path:
    return study_dir(study_name, sweeps_dir) / "optuna.db"


def weights_dir(study_name: str, sweeps_dir: Path = SWEEPS_DIR) -> Path:
    return study_dir(study_name, sweeps_dir) / "weights"


def checkpoints_dir(study_name: str, sweeps_dir: Path = SWEEPS_DIR) -> Path:
    return study_dir(study_name, sweeps_dir) / "checkpoints"


def weights_path(weights: Path, trial_number: int) -> Path:
    return weights / f"trial_{trial_number:05d}.pt"
