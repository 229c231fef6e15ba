"""The study's state in its Optuna storage: opening it, refusing a mismatched resume, baselines, retries.

`open_study`, `enqueue_baselines` and `requeue_unfinished` read and then write: call them under the study's
lock (`locks.study_lock`), as `lifecycle.setup_study` does, so that launchers started together do each once.
"""
from __future__ import annotations

import copy
import datetime
import functools
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from ...config import ConfigError, ReportedFigures, RunConfig, config_from_dict, dump_config, parse_yaml
from ...redaction import redact_url
from .. import keys
from ..search.budget import is_verdict
from ..search.space import baseline_name, baseline_trial, space_signature
from ..upstream import retry_history
from .interrupts import whole_write
from .retries import transient_storage_errors

# Heartbeats and the stale-trial retry are marked experimental; they are what makes killed workers recoverable.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# Fixed values that may change between runs of one study without changing what a trial means.
OPERATIONAL_KEYS = {"data.root", "data.download", "train.device", "train.eval_batch_size", "train.compile"}
MAX_RETRIES = 2


class StudyMismatch(RuntimeError):
    pass


def default_storage(study_name: str, sweeps_dir: Path = keys.SWEEPS_DIR) -> str:
    path = keys.default_storage_path(study_name, sweeps_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Two additions to Optuna's RDB storage:
    - its heartbeat thread dies on the first failed write, after which a live trial looks dead: a heartbeat
      that cannot be written while the database is away is reported and tried again at the next beat;
    - a trial failed for a stale heartbeat gets `fail_kind: lost` and its reason, like every other end. Optuna
      fails stale trials in two places (before each trial, and in our budget check) through this method;
      attributes can only be written while the trial is still RUNNING, so they are written here, just before
      Optuna fails it."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except transient_storage_errors() as exc:
            print(f"storage unreachable for a heartbeat ({type(exc).__name__}); trying again at the next beat",
                  file=sys.stderr, flush=True)

    # Optuna starts a trial's heartbeat thread only once the trial runs its objective; a trial whose process
    # died between its creation (or its pop from the queue) and then would stay RUNNING for ever, since the
    # stale check passes over trials without a heartbeat. It beats from the moment it is RUNNING.
    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is None or template_trial.state == TrialState.RUNNING:
            self.record_heartbeat(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if state == TrialState.RUNNING and values is None:
            changed = self._claim(trial_id)
        else:
            changed = super().set_trial_state_values(trial_id, state, values)
        if changed and state == TrialState.RUNNING:
            self.record_heartbeat(trial_id)
        return changed

    def _claim(self, trial_id: int) -> bool:
        """A queued trial (WAITING) becomes this worker's (RUNNING) in one conditional UPDATE. Optuna reads the
        state and then writes it; its SELECT ... FOR UPDATE locks nothing on SQLite, so two workers popping the
        queue at once both got the same trial (3 processes popping 180 queued trials: 9 and 13 taken twice),
        trained it twice, and the second one's end failed with "Cannot tell a COMPLETE trial"."""
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        started = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # Optuna's naive UTC column
        with _create_scoped_session(self.scoped_session) as session:
            claimed = session.execute(
                sqlalchemy.update(models.TrialModel)
                .where(models.TrialModel.trial_id == trial_id, models.TrialModel.state == TrialState.WAITING)
                .values({models.TrialModel.state: TrialState.RUNNING, models.TrialModel._datetime_start_utc: started})
                .execution_options(synchronize_session=False)).rowcount == 1
        if not claimed:  # taken by another worker (False), or finished already (Optuna's error, as before)
            with _create_scoped_session(self.scoped_session) as session:
                self.check_trial_is_updatable(trial_id, models.TrialModel.find_or_raise_by_id(trial_id, session).state)
        return claimed

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                self.set_trial_user_attr(trial_id, keys.FAIL_KIND, keys.LOST)
                self.set_trial_user_attr(trial_id, keys.FAIL_REASON,
                                         f"its worker stopped sending heartbeats for over {self.grace_period} s "
                                         f"(killed, or its machine lost); retried with the same parameters")
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another process failed it first, and recorded the same
        return stale


class _RetryStaleTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Optuna's retry copies the failed trial's user attributes into the retry: its run id and its end
    (`fail_kind`, ...) would then describe the retry. Only what says what to train is carried over."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        carried = copy.copy(trial)
        carried.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in keys.OUTCOME_ATTRS}
        super().__call__(study, carried)


def retry_callback(max_retry: Optional[int] = MAX_RETRIES) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    # inherit_intermediate_values: the retry resumes from a checkpoint, so the pruner must see those epochs.
    return _RetryStaleTrial(max_retry=max_retry, inherit_intermediate_values=True)


def _as_whole_writes(cls):
    """Each call of Optuna's storage interface on `cls` as a whole write: a SIGTERM or Ctrl-C during one takes
    effect when it returns, never with the SQLite write lock held by a half-done transaction (interrupts.py)."""
    for name in dir(optuna.storages.BaseStorage):
        method = getattr(cls, name)
        if name.startswith("_") or not callable(method):
            continue

        def whole(self, *args, _method=method, **kwargs):
            with whole_write():
                return _method(self, *args, **kwargs)
        setattr(cls, name, functools.wraps(method)(whole))
    return cls


_as_whole_writes(ResilientRDBStorage)


def open_storage(url: str, heartbeat_seconds: int = 20) -> optuna.storages.BaseStorage:
    if url.split(":", 1)[0].split("+", 1)[0] not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError("study.storage", [f"study.storage: {redact_url(url)!r} is not an Optuna RDB URL "
                                            f"(sqlite:///path.db, postgresql://user:pass@host/db, mysql://...)"])
    import sqlalchemy.exc

    # sqlite: wait up to a minute for the write lock instead of failing with "database is locked";
    # servers: test pooled connections before use, so a dropped connection is replaced, not an error.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    last: Exception = RuntimeError("no attempt made")
    for attempt in range(5):
        try:
            # The heartbeat lets a later worker find trials whose process died, fail them and retry them.
            return ResilientRDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat_seconds,
                grace_period=3 * heartbeat_seconds, heartbeat_stale_trial_callback=retry_callback())
        except sqlalchemy.exc.DatabaseError as exc:
            # Another process (a worker, a report) creating the same fresh schema at the same moment makes the
            # loser see "table already exists" or a duplicate version row; the next attempt finds the schema
            # complete. An unreachable server fails all attempts (about 3 s) and is reported below.
            last = exc
            time.sleep(0.2 * (attempt + 1))
        except Exception as exc:
            last = exc
            break
    raise ConfigError("study.storage", [f"cannot open storage {redact_url(url)}: {type(last).__name__}: "
                                        f"{str(last).splitlines()[0]}"]) from None


def trained_values(config: RunConfig) -> dict:
    """The values that decide what trains: the config's, less where it runs and reads (OPERATIONAL_KEYS)."""
    return {k: v for k, v in config.flat().items() if k not in OPERATIONAL_KEYS}


def fixed_signature(config: RunConfig) -> dict:
    return {k: v for k, v in trained_values(config).items() if k not in config.space}


def open_study(config: RunConfig, storage, sampler, pruner) -> optuna.Study:
    """Create the study, or load it and refuse it when it was made for another objective, space or config."""
    s = config.study
    study = optuna.create_study(study_name=s.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=s.direction, load_if_exists=True)
    attrs = study.user_attrs
    if keys.METRIC not in attrs:  # new study: record what it is (under the study lock: once)
        study.set_user_attr(keys.SPACE, space_signature(config.space))
        study.set_user_attr(keys.FIXED_VALUES, json.dumps(fixed_signature(config), sort_keys=True))
        study.set_user_attr(keys.CONFIG, dump_config(config))
        with warnings.catch_warnings():  # experimental in Optuna 5; optuna-dashboard shows "Objective 0" without it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([s.metric])
        study.set_user_attr(keys.METRIC, s.metric)  # last: its presence says the others are there
        return study
    problems = []
    if study.direction.name.lower() != s.direction:
        problems.append(f"direction: stored {study.direction.name.lower()}, YAML {s.direction}")
    if attrs[keys.METRIC] != s.metric:
        problems.append(f"metric: stored {attrs[keys.METRIC]}, YAML {s.metric}")
    if attrs.get(keys.SPACE) != space_signature(config.space):
        stored = json.loads(attrs.get(keys.SPACE, "{}"))
        now = json.loads(space_signature(config.space))
        changed = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        problems.append(f"space: differs in {', '.join(changed)}")
    stored_fixed = json.loads(attrs.get(keys.FIXED_VALUES, "{}"))
    now_fixed = fixed_signature(config)
    defaults = fixed_signature(RunConfig())
    # A key the stored study has no value for came with a later version of this tool: at its default it trains
    # what the study's trials trained, so the study resumes; set to anything else it does not.
    changed = sorted(k for k in set(stored_fixed) | set(now_fixed) if stored_fixed.get(k) != now_fixed.get(k)
                     and not (k not in stored_fixed and k in defaults and now_fixed.get(k) == defaults[k]))
    if changed:
        problems.append("fixed values: " + ", ".join(f"{k} stored {stored_fixed.get(k)!r}, now {now_fixed.get(k)!r}"
                                                     for k in changed))
    if problems:
        raise StudyMismatch(
            f"study {s.name!r} already exists with a different setup, and trials of both would be mixed:\n  - "
            + "\n  - ".join(problems)
            + f"\nUse another study name (--study-name NEW) or delete the study (sweeps/{s.name}/ for the default "
              f"storage) to start over.")
    return study


def record_search_changes(study: optuna.Study, config: RunConfig) -> list[str]:
    """The sampler and pruner may change when a study resumes (random search first, then TPE; another pruner):
    trials of both are still trials of one objective and space. Each change is recorded on the study
    (keys.SEARCH_HISTORY, from which trial on) and returned as lines to print; the first run records the
    initial setup. Call under the study lock."""
    s = config.study
    history = json.loads(study.user_attrs.get(keys.SEARCH_HISTORY, "[]"))
    if not history:  # a new study, or one made before the history was kept: its stored config says how
        try:
            first = config_from_dict(parse_yaml(study.user_attrs[keys.CONFIG])).study
        except (KeyError, ConfigError):
            first = s
        history = [{"from_trial": 0, "sampler": first.sampler, "pruner": first.pruner}]
    last = history[-1]
    changed = [f"{what} changed from {last[what]} to {now}" for what, now in (("sampler", s.sampler),
                                                                               ("pruner", s.pruner))
               if last[what] != now]
    if changed:
        history.append({"from_trial": len(study.get_trials(deepcopy=False)), "sampler": s.sampler,
                        "pruner": s.pruner})
    if changed or keys.SEARCH_HISTORY not in study.user_attrs:
        study.set_user_attr(keys.SEARCH_HISTORY, json.dumps(history))
    return [f"study {s.name}: {c}, from trial {history[-1]['from_trial']} on (the earlier trials keep theirs)"
            for c in changed]


def enqueue_baselines(study: optuna.Study, config: RunConfig) -> int:
    """Queue each baseline once, and again (with MAX_RETRIES more tries) one whose every try failed without a
    verdict in an earlier run of the sweep: a fault that has passed since must not leave it without a result."""
    done = set(json.loads(study.user_attrs.get(keys.BASELINES_ENQUEUED, "[]")))
    trials = study.get_trials(deepcopy=False)
    exhausted = _baselines_out_of_tries(trials)
    added = 0
    for i, baseline in enumerate(config.baselines):
        name = baseline_name(baseline, i)
        if name in done and name not in exhausted:
            continue
        params, fixed = baseline_trial(baseline, config)
        attrs = {keys.BASELINE: name, keys.FIXED: json.dumps(fixed)}
        if "reported" in baseline:  # what its source document reported, shown beside the replay in the report
            attrs[keys.REPORTED] = json.dumps(ReportedFigures.model_validate(baseline["reported"]).model_dump())
        study.enqueue_trial(params, user_attrs=attrs)
        done.add(name)
        added += 1
    study.set_user_attr(keys.BASELINES_ENQUEUED, json.dumps(sorted(done)))
    return added


def requeue_unfinished(study: optuna.Study) -> int:
    """Trials failed by Ctrl-C/SIGTERM run again with the same parameters (resuming from their checkpoint), and
    so do baselines (configurations someone asked for by name) that raised an error: up to MAX_RETRIES more
    tries each, before any new configuration is sampled (Optuna runs queued trials first). A sampled trial's
    error is not retried: later samples make it up. Returns how many trials it queued."""
    trials = study.get_trials(deepcopy=False)
    for t in unfinished(trials):
        # No cap for an interruption: each is someone's decision (Ctrl-C, scancel, a preemption), not a trial
        # that kills its worker, which MAX_RETRIES is for.
        retry_callback(max_retry=None if t.user_attrs.get(keys.FAIL_KIND) == keys.INTERRUPTED else MAX_RETRIES)(
            study, t)
    return len(study.get_trials(deepcopy=False)) - len(trials)


def unfinished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The failed trials `requeue_unfinished` runs again: interrupted ones, and baselines that raised an error
    with tries left; none already retried."""
    retried = {n for t in trials for n in retry_history(t)}
    return [t for t in trials if t.state == TrialState.FAIL and t.number not in retried and (
        t.user_attrs.get(keys.FAIL_KIND) == keys.INTERRUPTED or (
            t.user_attrs.get(keys.FAIL_KIND) == keys.ERROR and is_asked_for(t)
            and len(retry_history(t)) < MAX_RETRIES))]


def _baselines_out_of_tries(trials: list[optuna.trial.FrozenTrial]) -> set[str]:
    """Baselines with trials, none of them a verdict, none queued or running, none left to retry."""
    retrying = {t.user_attrs.get(keys.BASELINE) for t in unfinished(trials)}
    by_name: dict[str, list] = {}
    for t in trials:
        if is_asked_for(t):
            by_name.setdefault(t.user_attrs[keys.BASELINE], []).append(t)
    return {name for name, tries in by_name.items() if name not in retrying and not any(
        is_verdict(t) or t.state in (TrialState.RUNNING, TrialState.WAITING) for t in tries)}


def is_asked_for(trial: optuna.trial.FrozenTrial) -> bool:
    """A baseline of the search (repeats are planned and retried by repeats.ensure_repeats)."""
    return keys.BASELINE in trial.user_attrs and keys.REPEAT_OF not in trial.user_attrs
