"""`python -m alexnet_exp.sweep SPACE.yaml`: an Optuna study over AlexNet trials, tracked in MLflow.

The launcher validates everything, creates (or resumes) the study, the MLflow experiment and the parent run
once, enqueues the baselines, then runs trials itself or starts `--workers N` worker processes on the same
study (one GPU each, round-robin), until the budget of finished trials is met. It then evaluates the best
trial once on the held-out test split.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

from .config import ConfigError, RunConfig, dump_config, load_config
from .data import DataError
from .objective import TrialContext, evaluate_on_test, run_trial, weights_path
from .pipeline import DataCache
from .progress import SweepProgress
from .space import make_pruner, make_sampler, ordered_params, suggest
from .study_store import (StudyMismatch, default_storage, enqueue_baselines, open_storage, open_study, redact,
                          requeue_interrupted)
from .tracking import Tracker, resolve_tracking_uri
from .train import resolve_device
from .workers import (budget_state, gpu_list, is_verdict, python_command, run_trials, start_workers,
                      wait_for_workers, worker_label)


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
    p.add_argument("--workers", type=int, help="worker processes on this machine (default 1, or "
                                               "GPUs x --trials-per-gpu)")
    p.add_argument("--gpus", help="GPU ids for the workers, round-robin, e.g. 0,1 (default: all visible)")
    p.add_argument("--trials-per-gpu", type=int, help="workers per GPU, for small trials that leave a GPU idle")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by the launcher
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


def _run_here(config: RunConfig, study: optuna.Study, tracker: Tracker, parent_id: str, cache: DataCache,
              quiet: bool) -> bool:
    """Run trials in this process until the budget is met; False when interrupted."""
    s = config.study
    verdicts, _, _ = budget_state(study)
    progress = SweepProgress(s.n_trials, min(verdicts, s.n_trials), config.train.epochs, s.metric, quiet,
                             prefix=worker_label())
    ctx = TrialContext(config, tracker, parent_id, cache, Path("sweeps") / s.name / "weights", progress,
                       {"study": s.name, "sampler": s.sampler, "device": str(cache.device), "git_commit": git_commit()},
                       Path("sweeps") / s.name / "checkpoints" if s.checkpoint else None)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = trial.value if trial.state == TrialState.COMPLETE else None
        note = trial.user_attrs.get("fail_reason", "")
        if trial.state == TrialState.PRUNED:
            note = f"pruned at epoch {trial.user_attrs.get('pruned_at_epoch', '?')}"
        best = study.best_value if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) \
            else None
        progress.trial_finished(trial.number, trial.state.name, value, note, best, is_verdict(trial))

    try:
        why = run_trials(study, lambda trial: run_trial(trial, ctx, s.n_trials), s.n_trials, s.timeout,
                         after_trial, max_errors=max(3, s.n_trials))
        if why == "errors":
            print(f"{worker_label()}stopping: as many trials raised errors as the budget (see their MLflow runs' "
                  f"error.txt)", file=sys.stderr)
        return True
    except KeyboardInterrupt:
        print(f"\n{worker_label()}interrupted: the running trial is marked failed; run the same command to "
              f"resume it", file=sys.stderr)
        return False
    finally:
        progress.close()


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM takes the same clean way out as Ctrl-C
    try:
        config = load_config(args.config, _flag_overrides(args))
        ordered_params(config.space)
        s = config.study
        sampler = make_sampler(s.sampler, s.sampler_options, s.seed, config.space)
        pruner = make_pruner(s.pruner, s.pruner_options, config.train.epochs)
        if args.dry_run:
            dry_run(config, sampler, args.dry_run_trials)
            return 0
        gpus = gpu_list(args.gpus) if not args.worker else []
        n_workers = args.workers or ((len(gpus) or 1) * args.trials_per_gpu if args.trials_per_gpu else 1)
        if n_workers < 1:
            raise ConfigError("--workers", ["--workers: must be at least 1"])
        device = resolve_device(config.train.device)
        cache = DataCache(device)  # each dataset loaded once in this process, for the trials and the test split
        if not args.worker:
            cache.get(config.data)  # a missing dataset is one clear error before any state is written
        storage_url = s.storage or default_storage(s.name)
        storage = open_storage(storage_url, s.heartbeat_seconds)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened to each trial
        study = open_study(config, storage, sampler, pruner)
        existing = len(study.get_trials(deepcopy=False))
        if existing and s.seed is not None:
            # The same seed again would replay the first samples: continue the stream where the study is.
            study.sampler = make_sampler(s.sampler, s.sampler_options, s.seed + existing, config.space)
        tracker = Tracker(resolve_tracking_uri(s.tracking_uri), s.experiment or s.name)
    except (ConfigError, StudyMismatch, DataError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

    if args.worker:  # the launcher has set everything up; just run trials
        parent_id = study.user_attrs["mlflow_parent_run_id"]
        return 0 if _run_here(config, study, tracker, parent_id, cache, quiet=True) else 130

    commit = git_commit()
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if tracker.run_exists(parent_id):
        tracker.reopen(parent_id)
    else:
        parent_id = tracker.start_parent(s.name, {"study": s.name, "sampler": s.sampler, "pruner": s.pruner,
                                                  "metric": s.metric, "direction": s.direction,
                                                  "storage": redact(storage_url), "dataset": config.data.dataset,
                                                  "model": config.model.arch})
        study.set_user_attr("mlflow_parent_run_id", parent_id)
        tracker.log_text(parent_id, dump_config(config), "config.yaml")
    command = "python -m alexnet_exp.sweep " + " ".join(argv)
    command = command.replace(storage_url, redact(storage_url))  # never record a password
    environment = {"command": command, "device": str(device), "workers": n_workers, "git_commit": commit,
                   **library_versions()}
    study.set_user_attr("environment", environment)  # the latest invocation; the report shows it
    tracker.set_tags(parent_id, environment)
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    closed = tracker.close_stale(parent_id, running)
    added = enqueue_baselines(study, config)
    requeued = requeue_interrupted(study)
    done, _, _ = budget_state(study)
    print(f"study {s.name}: {done}/{s.n_trials} trials finished{', resuming' if done else ''}; "
          f"storage {redact(storage_url)}; device {device}; {n_workers} worker(s)")
    for count, what in ((closed, "stale MLflow run(s) left RUNNING by an ended process closed as failed"),
                        (added, "baseline(s) enqueued"), (requeued, "interrupted trial(s) queued to resume")):
        if count:
            print(f"{count} {what}")
    print(f"MLflow: {tracker.tracking_uri} -> {tracker.ui_link()} (run `mlflow ui` in this folder)")

    started = time.monotonic()
    finished = True
    if done < s.n_trials:
        if n_workers == 1:
            finished = _run_here(config, study, tracker, parent_id, cache, args.quiet)
        else:
            workers = start_workers(python_command("alexnet_exp.sweep", argv + ["--worker", "--quiet"]),
                                    n_workers, gpus)
            print(f"started {n_workers} workers (pids {', '.join(str(w.pid) for w in workers)})"
                  f"{'; GPUs ' + ','.join(gpus) if gpus else ''}")
            finished = wait_for_workers(workers)
            if not finished:
                print("interrupted: workers stopped, their running trials marked failed; run the same command "
                      "to resume", file=sys.stderr)
    summary = None
    if finished:
        summary = finalize(study, config, tracker, parent_id, cache, Path("sweeps") / s.name / "weights")
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    tracker.log_metrics(parent_id, {f"trials_{k}": v for k, v in counts.items()}, step=0)
    tracker.finish(parent_id, "FINISHED" if finished else "KILLED")
    print(f"\nstudy {s.name}: {', '.join(f'{v} {k}' for k, v in counts.items())} "
          f"in {time.monotonic() - started:.0f} s")
    if summary:
        test = (f"; held-out test accuracy {summary['test_accuracy']:.4f}, macro-F1 {summary['test_macro_f1']:.4f}"
                if "test_accuracy" in summary else "")
        print(f"best trial {summary['trial']}: {s.metric} {summary['value']:.4f}{test}")
        print(f"  {json.dumps(summary['params'])}")
    elif finished:
        print("no trial completed: nothing to evaluate on the test split")
    print(f"MLflow runs: {tracker.ui_link()}")
    return 0 if finished else 130


if __name__ == "__main__":
    raise SystemExit(main())
