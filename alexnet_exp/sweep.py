"""`python -m alexnet_exp.sweep SPACE.yaml`: an Optuna study over AlexNet trials, tracked in MLflow.

The launcher validates everything, creates (or resumes) the study, the MLflow experiment and the parent run
once, enqueues the baselines, runs trials until the budget of finished trials is met, then evaluates the best
trial once on the held-out test split.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

# Heartbeats and the stale-trial retry are marked experimental; they are what makes killed workers recoverable.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

from .config import ConfigError, RunConfig, dump_config, load_config
from .data import DataError
from .objective import VERDICT_FAILURES, TrialContext, TrialFailed, evaluate_on_test, run_trial, weights_path
from .pipeline import DataCache
from .progress import SweepProgress
from .space import baseline_name, baseline_trial, make_pruner, make_sampler, ordered_params, space_signature, suggest
from .tracking import Tracker, resolve_tracking_uri
from .train import resolve_device

# Fixed values that may change between runs of one study without changing what a trial means.
OPERATIONAL_KEYS = {"data.root", "data.download", "train.device", "train.eval_batch_size", "train.compile"}
HEARTBEAT_SECONDS = 20


class StudyMismatch(RuntimeError):
    pass


# ---- study state ---------------------------------------------------------------------------------------------

def default_storage(study_name: str, sweeps_dir: Path = Path("sweeps")) -> str:
    folder = sweeps_dir / study_name
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def redact(url: str) -> str:
    """A storage URL fit to print or log: the password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if not url.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql"):
        raise ConfigError("study.storage", [f"study.storage: {redact(url)!r} is not an Optuna RDB URL "
                                            f"(sqlite:///path.db, postgresql://user:pass@host/db, mysql://...)"])
    try:
        # The heartbeat lets a later worker find trials whose process died, fail them and retry them.
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=3 * HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))
    except Exception as exc:
        raise ConfigError("study.storage", [f"cannot open storage {redact(url)}: {type(exc).__name__}: "
                                            f"{str(exc).splitlines()[0]}"]) from None


def fixed_signature(config: RunConfig) -> dict:
    return {k: v for k, v in config.flat().items() if k not in OPERATIONAL_KEYS and k not in config.space}


def open_study(config: RunConfig, storage, sampler, pruner) -> optuna.Study:
    """Create the study, or load it and refuse it when it was made for another objective, space or config."""
    s = config.study
    study = optuna.create_study(study_name=s.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=s.direction, load_if_exists=True)
    attrs = study.user_attrs
    if "metric" not in attrs:  # new study: record what it is
        study.set_user_attr("metric", s.metric)
        study.set_user_attr("space", space_signature(config.space))
        study.set_user_attr("fixed", json.dumps(fixed_signature(config), sort_keys=True))
        study.set_user_attr("config", dump_config(config))
        return study
    problems = []
    if study.direction.name.lower() != s.direction:
        problems.append(f"direction: stored {study.direction.name.lower()}, YAML {s.direction}")
    if attrs["metric"] != s.metric:
        problems.append(f"metric: stored {attrs['metric']}, YAML {s.metric}")
    if attrs.get("space") != space_signature(config.space):
        stored = json.loads(attrs.get("space", "{}"))
        now = json.loads(space_signature(config.space))
        changed = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
        problems.append(f"space: differs in {', '.join(changed)}")
    stored_fixed = json.loads(attrs.get("fixed", "{}"))
    now_fixed = fixed_signature(config)
    changed = sorted(k for k in set(stored_fixed) | set(now_fixed) if stored_fixed.get(k) != now_fixed.get(k))
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


def enqueue_baselines(study: optuna.Study, config: RunConfig) -> int:
    done = set(json.loads(study.user_attrs.get("baselines_enqueued", "[]")))
    added = 0
    for i, baseline in enumerate(config.baselines):
        name = baseline_name(baseline, i)
        if name in done:
            continue
        params, fixed = baseline_trial(baseline, config)
        study.enqueue_trial(params, user_attrs={"baseline": name, "fixed": json.dumps(fixed)})
        done.add(name)
        added += 1
    study.set_user_attr("baselines_enqueued", json.dumps(sorted(done)))
    return added


def is_verdict(trial: optuna.trial.FrozenTrial) -> bool:
    """Finished trials: complete, pruned, or failed for a reason that judges the hyperparameters."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and trial.user_attrs.get("fail_kind") in VERDICT_FAILURES)


def count_verdicts(study: optuna.Study) -> int:
    return sum(is_verdict(t) for t in study.get_trials(deepcopy=False))


def count_errors(study: optuna.Study) -> int:
    return sum(t.state == TrialState.FAIL and not is_verdict(t) for t in study.get_trials(deepcopy=False))


# ---- the run -------------------------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    import platform

    import mlflow
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "optuna": optuna.__version__,
            "mlflow": mlflow.__version__}


def dry_run(config: RunConfig, sampler, n: int) -> None:
    print("validated search space:")
    for path in ordered_params(config.space):
        print(f"  {path}: {config.space[path].model_dump(exclude_defaults=True)}")
    print(f"study: {config.study.name}, {config.study.direction} {config.study.metric}, "
          f"{config.study.n_trials} trials, sampler {config.study.sampler}, pruner {config.study.pruner}\n")
    study = optuna.create_study(sampler=sampler, direction=config.study.direction)
    enqueue_baselines(study, config)
    for _ in range(n):
        trial = study.ask()
        values = suggest(trial, config.space, json.loads(trial.user_attrs.get("fixed", "{}")))
        label = trial.user_attrs.get("baseline", "sampled")
        try:
            config.with_values(values)
            status = ""
        except ConfigError as exc:
            status = f"  INVALID: {'; '.join(exc.errors)}"
        print(f"trial {trial.number} ({label}): {json.dumps(values)}{status}")
        study.tell(trial, state=TrialState.FAIL)  # nothing trained


def finalize(study: optuna.Study, config: RunConfig, tracker: Tracker, parent_id: str, cache: DataCache,
             weights_dir: Path) -> Optional[dict]:
    """Evaluate the best trial once on the held-out test split; log it on its run and the parent run."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return None
    best = study.best_trial
    summary = {"trial": best.number, "value": best.value, "params": json.loads(best.user_attrs["values"])}
    weights = weights_path(weights_dir, best.number)
    if study.user_attrs.get("test_evaluated_trial") == best.number:
        summary.update(study.user_attrs.get("test_metrics", {}))
        return summary
    if not weights.is_file():
        print(f"note: no saved weights for best trial {best.number} (expected {weights}); test split not evaluated",
              file=sys.stderr)
        return summary
    best_config = config.with_values(summary["params"])
    model, result = evaluate_on_test(best_config, cache, weights)
    metrics = {"test_accuracy": result.accuracy, "test_macro_f1": result.macro_f1, "test_loss": result.loss}
    run_id = best.user_attrs.get("mlflow_run_id")
    if run_id:
        tracker.log_metrics(run_id, metrics, step=best.user_attrs.get("epochs_run", 0))
        try:
            tracker.log_model(run_id, model)
        except Exception as exc:  # the test metrics are logged already; the model file is a convenience
            print(f"warning: could not log the best model to MLflow: {type(exc).__name__}: {exc}", file=sys.stderr)
    tracker.log_metrics(parent_id, {**metrics, f"best_{config.study.metric}": best.value}, step=0)
    tracker.set_tags(parent_id, {"best_trial": best.number, "best_run_id": run_id or ""})
    study.set_user_attr("test_evaluated_trial", best.number)
    study.set_user_attr("test_metrics", metrics)
    for stale in weights_dir.glob("trial_*.pt"):  # only the best trial's weights are kept
        if stale != weights:
            stale.unlink(missing_ok=True)
    summary.update(metrics)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet_exp.sweep",
                                description="Run (or resume) an Optuna sweep of AlexNet trials tracked in MLflow.")
    p.add_argument("config", help="search space YAML, e.g. search_spaces/smoke.yaml")
    p.add_argument("--trials", type=int, help="budget of finished trials (study.n_trials)")
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts (study.timeout)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite under sweeps/<study>/)")
    p.add_argument("--study-name", help="study name (study.name)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (train.device)")
    p.add_argument("--epochs", type=int, help="epochs per trial (train.epochs)")
    p.add_argument("--data-root", help="folder with the CIFAR files (data.root)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any YAML value, e.g. --set train.batch_size=64 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the validated space and the first sampled "
                                                          "configurations, train nothing")
    p.add_argument("--dry-run-trials", type=int, default=5, help="how many configurations --dry-run shows")
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of a progress bar")
    return p


FLAG_KEYS = {"trials": "study.n_trials", "timeout": "study.timeout", "storage": "study.storage",
             "study_name": "study.name", "device": "train.device", "epochs": "train.epochs",
             "data_root": "data.root", "tracking_uri": "study.tracking_uri"}


def _flag_overrides(args) -> list[str]:
    out = list(args.overrides)
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, _flag_overrides(args))
        ordered_params(config.space)
        s = config.study
        sampler = make_sampler(s.sampler, s.sampler_options, s.seed, config.space)
        pruner = make_pruner(s.pruner, s.pruner_options, config.train.epochs)
        if args.dry_run:
            dry_run(config, sampler, args.dry_run_trials)
            return 0
        device = resolve_device(config.train.device)
        storage_url = s.storage or default_storage(s.name)
        storage = open_storage(storage_url)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened to each trial
        study = open_study(config, storage, sampler, pruner)
        existing = len(study.get_trials(deepcopy=False))
        if existing and s.seed is not None:
            # The same seed again would replay the first samples: continue the stream where the study is.
            study.sampler = make_sampler(s.sampler, s.sampler_options, s.seed + existing, config.space)
        tracker = Tracker(resolve_tracking_uri(s.tracking_uri), s.experiment or s.name)
    except (ConfigError, StudyMismatch, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    commit = git_commit()
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if tracker.run_exists(parent_id):
        tracker.reopen(parent_id)
    else:
        parent_id = tracker.start_parent(s.name, {"study": s.name, "sampler": s.sampler, "pruner": s.pruner,
                                                  "metric": s.metric, "direction": s.direction,
                                                  "storage": redact(storage_url), "git_commit": commit,
                                                  "dataset": config.data.dataset, "model": config.model.arch})
        study.set_user_attr("mlflow_parent_run_id", parent_id)
        tracker.log_text(parent_id, dump_config(config), "config.yaml")
    command = "python -m alexnet_exp.sweep " + " ".join(sys.argv[1:] if argv is None else argv)
    command = command.replace(storage_url, redact(storage_url))  # never record a password
    environment = {"command": command, "device": str(device), "git_commit": commit, **library_versions()}
    study.set_user_attr("environment", environment)  # the latest invocation; the report shows it
    tracker.set_tags(parent_id, environment)
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    closed = tracker.close_stale(parent_id, running)
    added = enqueue_baselines(study, config)
    done = count_verdicts(study)
    weights_dir = Path("sweeps") / s.name / "weights"  # only the best trial's are kept
    print(f"study {s.name}: {done}/{s.n_trials} trials finished{', resuming' if done else ''}; "
          f"storage {redact(storage_url)}; device {device}")
    if closed:
        print(f"closed {len(closed)} stale MLflow run(s) left RUNNING by an ended process")
    if added:
        print(f"enqueued {added} baseline(s)")
    print(f"MLflow: {tracker.tracking_uri} -> {tracker.ui_link()} (run `mlflow ui` in this folder)")

    cache = DataCache(device)
    progress = SweepProgress(s.n_trials, min(done, s.n_trials), config.train.epochs, s.metric, args.quiet)
    ctx = TrialContext(config, tracker, parent_id, cache, weights_dir, progress,
                       {"study": s.name, "sampler": s.sampler, "device": str(device), "git_commit": commit})
    max_errors = max(3, s.n_trials)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = trial.value if trial.state == TrialState.COMPLETE else None
        note = trial.user_attrs.get("fail_reason", "")
        if trial.state == TrialState.PRUNED:
            note = f"pruned at epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
        best = study.best_value if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) \
            else None
        progress.trial_finished(trial.number, trial.state.name, value, note, best, is_verdict(trial))
        if count_verdicts(study) >= s.n_trials:
            study.stop()
        elif count_errors(study) >= max_errors:
            print(f"stopping: {count_errors(study)} trials raised errors (see their MLflow runs' error.txt)",
                  file=sys.stderr)
            study.stop()

    started = time.monotonic()
    status = "FINISHED"
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if done < s.n_trials:
            try:
                cache.get(config.data)  # load once up front: a missing dataset is one clear error, not N failures
            except DataError as exc:
                print(f"error: {exc}", file=sys.stderr)
                tracker.finish(parent_id, "FAILED", {"fail_reason": str(exc)})
                return 2
            study.optimize(lambda trial: run_trial(trial, ctx), timeout=s.timeout, callbacks=[after_trial],
                           catch=(TrialFailed, Exception), gc_after_trial=False)
    except KeyboardInterrupt:
        status = "KILLED"
        print("\ninterrupted: the running trial is marked failed; run the same command to resume", file=sys.stderr)
    finally:
        progress.close()
    summary = finalize(study, config, tracker, parent_id, cache, weights_dir) if status == "FINISHED" else None
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    tracker.log_metrics(parent_id, {f"trials_{k}": v for k, v in counts.items()}, step=0)
    tracker.finish(parent_id, status)
    print(f"\nstudy {s.name}: {', '.join(f'{v} {k}' for k, v in counts.items())} "
          f"in {time.monotonic() - started:.0f} s")
    if summary:
        test = (f"; held-out test accuracy {summary['test_accuracy']:.4f}, macro-F1 {summary['test_macro_f1']:.4f}"
                if "test_accuracy" in summary else "")
        print(f"best trial {summary['trial']}: {s.metric} {summary['value']:.4f}{test}")
        print(f"  {json.dumps(summary['params'])}")
    elif status == "FINISHED":
        print("no trial completed: nothing to evaluate on the test split")
    print(f"MLflow runs: {tracker.ui_link()}")
    return 0 if status == "FINISHED" else 130


if __name__ == "__main__":
    raise SystemExit(main())
