"""`python -m alexnet_exp.sweep SPACE.yaml`: an Optuna study over AlexNet trials, tracked in MLflow.

The launcher validates everything before writing any state, then plays the three roles of `lifecycle.py`: it sets
up (or resumes) the study, the MLflow experiment and the parent run; runs trials itself or supervises
`--workers N` worker processes on the same study (one GPU each, round-robin) until the budget of finished
trials is met; and finishes: the best trial evaluated once on the held-out test split, the parent run closed.
Any number of launchers may start at the same instant on the same study (one machine or many): they share
the budget, sample different configurations and set up and finish the study once.
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

from ..config import ConfigError, RunConfig, load_config, resolved_rates, with_epochs_everywhere
from ..data import DataError
from ..redaction import redact_text, redact_url
from ..run_parts import DataCache
from ..space_params import branches, ordered_params
from ..train import resolve_device
from . import keys
from .lifecycle import (
    SweepStudy,
    budget_left,
    close_parent,
    finish_study,
    join_study,
    prepare_to_join,
    run_worker,
    setup_study,
    trial_counts,
)
from .processes import gpu_list, python_command, supervise, watch_launcher
from .progress import warn
from .search.budget import budget_state
from .search.pruning import make_pruner
from .search.samplers import make_sampler
from .search.space import suggest
from .stores.interrupts import request_stop
from .stores.retries import retry_transient
from .stores.study_store import StudyMismatch, default_storage, enqueue_baselines, open_storage
from .stores.tracking import Tracker, resolve_tracking_uri

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
        for branch in branches(config.space[path]):
            print(f"  {path}: {branch.model_dump(exclude_defaults=True)}")
    conditional = [p for p in ordered_params(config.space) if any(b.when for b in branches(config.space[p]))]
    if conditional and config.study.sampler == "tpe":  # what multivariate TPE cannot model with the rest
        print(f"conditional (TPE models them apart from the other parameters): {', '.join(conditional)}")
    print(f"study: {config.study.name}, {config.study.direction} {config.study.metric}, "
          f"{config.study.n_trials} trials, sampler {config.study.sampler}, pruner {config.study.pruner}\n")
    study = optuna.create_study(sampler=sampler, direction=config.study.direction)
    enqueue_baselines(study, config)
    for _ in range(n):
        trial = study.ask()
        values = suggest(trial, config.space, json.loads(trial.user_attrs.get(keys.FIXED, "{}")))
        label = trial.user_attrs.get(keys.BASELINE, "sampled")
        try:
            resolved = config.with_values(values)
            # what a scale resolves to: the rate that trains (and that MLflow and the report show)
            status = "".join(f"  -> {value} {rate:.4g}" for value, rate in resolved_rates(resolved).items())
        except ConfigError as exc:
            status = f"  INVALID: {'; '.join(exc.errors)}"
        print(f"trial {trial.number} ({label}): {json.dumps(values)}{status}")
        study.tell(trial, state=TrialState.FAIL)  # nothing trained


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m alexnet_exp.sweep",
                                description="Run (or resume) an Optuna sweep of AlexNet trials tracked in MLflow.")
    p.add_argument("config", help="search space YAML, e.g. search_spaces/smoke.yaml")
    p.add_argument("--trials", type=int, help="budget of finished trials (study.n_trials)")
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts (study.timeout)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite under sweeps/<study>/)")
    p.add_argument("--study-name", help="study name (study.name)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (train.device)")
    p.add_argument("--epochs", type=int, help="epochs of every trial, baselines and a sampled train.epochs included "
                                              "(train.epochs)")
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
    p.add_argument("--register-model", metavar="NAME", help="register the best trial's logged model under NAME in "
                                                            "the MLflow model registry (a database tracking URI, "
                                                            "e.g. the default sqlite:///mlflow.db, or a server)")
    roles = p.add_argument_group("scheduler steps (Slurm, Kubernetes): each may run any number of times, in any "
                                 "order, all at once")
    step = roles.add_mutually_exclusive_group()
    step.add_argument("--init-only", action="store_true", help="set up the study, its MLflow experiment and parent "
                                                              "run and enqueue the baselines, then exit")
    step.add_argument("--join", action="store_true", help="run trials as one worker of the study (waiting for its "
                                                         "set-up up to --wait seconds) until the budget is met")
    step.add_argument("--finalize", action="store_true", help="once the budget is met, evaluate the best trial on the "
                                                             "held-out test split (once) and close the parent run")
    step.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set by the launcher
    roles.add_argument("--wait", type=float, default=600.0, metavar="SEC",
                       help="--join/--finalize: seconds to wait for the study's set-up (default 600)")
    return p


REQUEUED = "trial(s) queued to run again (interrupted ones resume, baselines that raised an error retry)"
FLAG_KEYS = {"trials": "study.n_trials", "timeout": "study.timeout", "storage": "study.storage",
             "study_name": "study.name", "device": "train.device", "epochs": "train.epochs",  # + with_epochs_everywhere
             "data_root": "data.root", "tracking_uri": "study.tracking_uri"}


def _flag_overrides(args) -> list[str]:
    out = list(args.overrides)
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out


_stopping = False


def _raise_interrupt(signum, frame):
    """SIGTERM (and in workers Ctrl-C) take the clean way out, once: a second signal while the first is being
    handled (Ctrl-C reaches the workers and then the launcher's SIGTERM does too) must not cut the clean-up."""
    global _stopping
    if _stopping:
        return
    _stopping = True
    request_stop(f"signal {signum}")  # at once, or when the store write under way ends (interrupts.py)


def _exit_code(why: str) -> int:
    return {"interrupted": keys.EXIT_INTERRUPTED, "errors": keys.EXIT_ERRORS, "storage": keys.EXIT_ERRORS,
            "workers failed": keys.EXIT_WORKERS_FAILED}.get(why, keys.EXIT_OK)


def main(argv: Optional[list[str]] = None) -> int:
    global _stopping
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    _stopping = False
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # a second Ctrl-C must not cut the clean-up of the first
    try:
        config = load_config(args.config, _flag_overrides(args))
        if args.epochs is not None:
            config = with_epochs_everywhere(config, args.epochs)
        s = config.study
        sampler = make_sampler(s.sampler, s.sampler_options, s.seed, config.space)
        pruner = make_pruner(s.pruner, s.pruner_options, config.train.epochs)
        if args.dry_run and (args.init_only or args.join or args.finalize or args.worker):
            raise ConfigError("--dry-run", ["--dry-run trains nothing and writes nothing: use it without "
                                            "--init-only, --join or --finalize"])
        if args.dry_run:
            dry_run(config, sampler, args.dry_run_trials)
            return keys.EXIT_OK
        joining = args.worker or args.join
        if args.join and (args.workers or args.trials_per_gpu):
            raise ConfigError("--join", ["--join runs one worker in this process: start as many as you want workers "
                                         "(a job array, a Job's parallelism) instead of --workers/--trials-per-gpu"])
        gpus = gpu_list(args.gpus) if not joining else []
        if args.workers is not None and args.workers < 1:
            raise ConfigError("--workers", [f"--workers: must be at least 1 (got {args.workers})"])
        if args.trials_per_gpu is not None and args.trials_per_gpu < 1:
            raise ConfigError("--trials-per-gpu", [f"--trials-per-gpu: must be at least 1 (got {args.trials_per_gpu})"])
        n_workers = args.workers or ((len(gpus) or 1) * args.trials_per_gpu if args.trials_per_gpu else 1)
        device = resolve_device(config.train.device)
        cache = DataCache(device)  # each dataset loaded once in this process, for the trials and the test split
        if not (args.worker or args.finalize):
            cache.get(config.data)  # a missing dataset is one clear error before any state is written
        storage_url = s.storage or default_storage(s.name)
        storage = open_storage(storage_url, s.heartbeat_seconds)
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines say what happened to each trial
        tracker = Tracker(resolve_tracking_uri(s.tracking_uri), s.experiment or s.name,
                          system_metrics=s.system_metrics, registered_model=args.register_model)
        run_tags = {"study": s.name, "sampler": s.sampler, "device": str(device), "git_commit": git_commit()}
        if args.worker:  # the launcher has set everything up; just run trials
            sweep = join_study(config, storage_url, storage, sampler, pruner, tracker)
        elif args.join or args.finalize:
            sweep = join_study(config, storage_url, storage, sampler, pruner, tracker, wait_seconds=args.wait)
        else:
            environment = {"command": redact_text("python -m alexnet_exp.sweep " + " ".join(argv)),
                           "device": str(device), "workers": n_workers, "git_commit": run_tags["git_commit"],
                           **library_versions()}
            sweep, report = setup_study(config, storage_url, storage, sampler, pruner, tracker, environment)
    except (ConfigError, StudyMismatch, DataError, RuntimeError) as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return keys.EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return keys.EXIT_INTERRUPTED

    if args.worker:
        return _work(sweep, cache, run_tags)
    if args.join:
        return _join(sweep, cache, run_tags, args.quiet)
    if args.finalize:
        return _finalize(sweep, cache)
    if args.init_only:
        _print_setup(sweep, report, device, n_workers=0)
        return keys.EXIT_OK
    return _launch(sweep, report, cache, run_tags, argv, n_workers, gpus, device, args.quiet)


def _work(sweep: SweepStudy, cache: DataCache, run_tags: dict) -> int:
    """A worker process started by the launcher."""
    launcher_gone = watch_launcher()
    why = run_worker(sweep, cache, run_tags, quiet=True)
    if why == "interrupted" and launcher_gone.is_set():
        # No launcher is left to close the parent run: the last worker out does, as the launcher would have.
        if close_parent(sweep, "KILLED"):
            print("the launcher ended: parent run closed as KILLED; run the same command to resume",
                  file=sys.stderr)
    return _exit_code(why)


def _join(sweep: SweepStudy, cache: DataCache, run_tags: dict, quiet: bool) -> int:
    """A worker started by a scheduler (`--join`). The parent run is open while trials may run: reopened when a
    worker joins a study with budget left, closed as KILLED when the last worker is stopped (scancel,
    preemption) with budget left; the finish step closes it for good."""
    if not retry_transient(lambda: budget_left(sweep), "the budget check"):
        # A scheduler's spare or late task: its log says why it did nothing, and what comes next.
        finished, _ = budget_state(sweep.study)
        closed = sweep.tracker.run_status(sweep.parent_id) == "FINISHED"
        print(f"study {sweep.name!r}: nothing left to run, the budget is met ({finished}/{sweep.config.study.n_trials} "
              f"trials finished); " + ("the study is finished (see its report)" if closed else
                                      "the finish step (--finalize) evaluates the best trial on the test split"),
              flush=True)
        return keys.EXIT_OK
    count = prepare_to_join(sweep)
    if count:
        print(f"{count} {REQUEUED}", flush=True)
    why = run_worker(sweep, cache, run_tags, quiet)
    if why == "interrupted" and close_parent(sweep, "KILLED"):
        print("stopped with budget left: parent run closed as KILLED until workers join again", file=sys.stderr)
    return _exit_code(why)


def _launch(sweep: SweepStudy, report, cache: DataCache, run_tags: dict, argv: list[str], n_workers: int,
            gpus: list[str], device, quiet: bool) -> int:
    s, tracker = sweep.config.study, sweep.tracker
    _print_setup(sweep, report, device, n_workers)

    started = time.monotonic()
    why = "budget"
    if budget_left(sweep):
        if n_workers == 1:
            why = run_worker(sweep, cache, run_tags, quiet)
        else:
            # The workers load their own copy: the launcher's, loaded to check the data before any state was
            # written, would sit beside theirs on the first GPU (a resident image folder: gigabytes) while they
            # train. The test evaluation at the end loads it again.
            cache.release()
            command = python_command("alexnet_exp.sweep", argv + ["--worker", "--quiet"])
            codes = supervise(command, n_workers, gpus, lambda: retry_transient(
                lambda: budget_left(sweep), "the budget check"))
            if codes is None:
                why = "interrupted"
                print("interrupted: workers stopped, their running trials marked failed; run the same command "
                      "to resume", file=sys.stderr)
            elif keys.EXIT_ERRORS in codes:
                why = "errors"
            elif any(code != keys.EXIT_OK for code in codes):
                why = "workers failed"
                print(f"workers ended with exit codes {codes} (see their lines above); the budget is "
                      f"{'not met' if budget_left(sweep) else 'met'}: run the same command "
                      f"to go on", file=sys.stderr)
    summary = None
    repeats_pending = why not in ("interrupted", "storage") and s.repeats is not None and budget_left(sweep)
    if why == "interrupted":
        close_parent(sweep, "KILLED")
    elif why == "storage":  # stopped with budget left, resumable, no test evaluation. The trial in flight could
        try:                # not be recorded as ended, so it looks RUNNING: close the parent all the same
            tracker.finish(sweep.parent_id, "KILLED")
        except Exception as exc:
            warn("could not close the parent run", exc)
    elif repeats_pending:  # the winner is chosen by the mean of its seeds: no test evaluation before they are in
        close_parent(sweep, "KILLED")
        print("the repeats are not finished: the test split stays untouched until they are; run the same command "
              "to go on", file=sys.stderr)
    else:
        summary = finish_study(sweep, cache, "FINISHED" if why in ("budget", "timeout") else "FAILED")
    _print_end(sweep, summary, f" in {time.monotonic() - started:.0f} s",
               why not in ("interrupted", "storage") and not repeats_pending)
    if why == "errors":
        print(f"stopped because trials kept raising errors (exit code {keys.EXIT_ERRORS}): see their MLflow "
              f"runs' {keys.ERROR_ARTIFACT}, fix the cause, and run the same command to go on", file=sys.stderr)
    print(f"MLflow runs: {tracker.ui_link()}")
    return _exit_code(why)


def _print_setup(sweep: SweepStudy, report, device, n_workers: int) -> None:
    s, tracker = sweep.config.study, sweep.tracker
    print(f"study {s.name}: {report.finished}/{s.n_trials} trials finished{', resuming' if report.finished else ''}; "
          f"storage {redact_url(sweep.storage_url)}; device {device}"
          f"{f'; {n_workers} worker(s)' if n_workers else '; set up, no trial started (--init-only)'}")
    for count, what in ((report.closed_runs, "stale MLflow run(s) left RUNNING by an ended process closed as failed"),
                        (report.baselines, "baseline(s) enqueued"),
                        (report.requeued, REQUEUED)):
        if count:
            print(f"{count} {what}")
    for line in report.search_changes:
        print(line)
    where = "" if tracker.is_server else " (run `mlflow ui` in this folder)"
    print(f"MLflow: {tracker.shown_uri} -> {tracker.ui_link()}{where}")


def _print_end(sweep: SweepStudy, summary: Optional[dict], took: str, say_missing: bool) -> None:
    s = sweep.config.study
    counts = trial_counts(sweep.study)
    print(f"\nstudy {s.name}: {', '.join(f'{v} {k}' for k, v in counts.items())}{took}")
    if summary:
        test = (f"; held-out test accuracy {summary['test_accuracy']:.4f}, macro-F1 {summary['test_macro_f1']:.4f}"
                if "test_accuracy" in summary else "")
        if "seeds" in summary:  # repeated: the mean over its fresh seeds chose it
            n = summary["seeds"]
            interval = (f" ± {summary['value_std']:.4f} (95% CI {summary['value_low']:.4f}–"
                        f"{summary['value_high']:.4f})" if n >= 2 else "")
            spread = (f"{interval} over {n} fresh seed{'s' if n != 1 else ''} (the search seed that chose it: "
                      f"{summary['value_search_seed']:.4f}; all seeds: {summary['value_all_seeds']:.4f})")
            if "test_accuracy_std" in summary:
                test = (f"; held-out test accuracy {summary['test_accuracy']:.4f} ± "
                        f"{summary['test_accuracy_std']:.4f}, "
                        f"macro-F1 {summary['test_macro_f1']:.4f} ± {summary['test_macro_f1_std']:.4f} "
                        f"({summary['test_seeds']} seeds)")
        else:
            spread = ""
        print(f"best trial {summary['trial']}: {s.metric} {summary['value']:.4f}{spread}{test}")
        print(f"  {json.dumps(summary['params'])}")
    elif say_missing:
        print("no trial completed: nothing to evaluate on the test split")


def _finalize(sweep: SweepStudy, cache: DataCache) -> int:
    """The scheduler's last step: the test evaluation once the budget is met, and the parent run closed."""
    s = sweep.config.study
    finished, running = budget_state(sweep.study)
    if budget_left(sweep):
        closed = close_parent(sweep, "KILLED")
        repeats = ", with its repeats," if s.repeats is not None else ""
        print(f"study {s.name}: the budget{repeats} is not met ({finished}/{s.n_trials} trials finished, "
              f"{running} running): "
              f"the test split stays untouched; parent run {'closed as KILLED' if closed else 'left RUNNING'}. "
              f"Start workers again (--join) to go on, then --finalize.", file=sys.stderr)
        return keys.EXIT_INCOMPLETE
    summary = finish_study(sweep, cache)
    _print_end(sweep, summary, "", True)
    if summary and "test_accuracy" not in summary:
        print("the best trial's weights were found neither here nor in its MLflow run: the test split was not "
              "evaluated (set study.state_store: mlflow, or run --finalize where the best trial trained)",
              file=sys.stderr)
        return keys.EXIT_INCOMPLETE
    print(f"MLflow runs: {sweep.tracker.ui_link()}")
    return keys.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
