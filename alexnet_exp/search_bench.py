"""`python -m alexnet_exp.bench search`: does the shipped search find better configurations than random search,
and than the search as it was before, at equal compute?

On the `glyphs` task (a generated CIFAR-100 stand-in, glyphs.py), each strategy runs real sweeps (the sweep's
own roles: Optuna on SQLite, MLflow on SQLite, checkpoints, the test split once) with several study seeds, one
trial at a time, until the epochs it has trained reach the same budget; then it compares:
- the best validation accuracy reached against epochs spent (a figure, and its value at the budget);
- the share of trials after the sampler's start-up that diverged or stalled (dead configurations);
- the held-out test accuracy of the configuration each study chose (its best trial, evaluated once).

Strategies:
- `default`: the shipped `search_spaces/glyphs.yaml` as it is: TPE (failures count as its worst results), the
  fair median pruner, a space whose every entry TPE models jointly (the rate as a scale of its optimiser's
  reference);
- `random`: the same space, sampled at random, nothing pruned;
- `before`: the space as the shipped spaces were written before the search was reworked (a rate and a weight
  decay per optimiser in branches, momentum and nesterov for SGD only, more normalisation, norm and schedule
  choices), TPE blind to failures, the fair median pruner. The training fixes made at the same time (momentum
  kept under onecycle, no pruning or stalling at a trial's last epoch) apply to every strategy.
Repeated seeds (`study.repeats`) are off in every strategy: they choose between finished configurations and
would spend the budget the same way in each.

Defaults are sized for a 2-core CPU (about 30 minutes); `--set` scales the task up on a GPU, e.g.
`--gpu-scale --set model.width=1.0 --set train.epochs=30 --epoch-budget 1500` (the YAML's full size: 100 classes
of 500 images).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from .config import RunConfig, config_from_dict, load_config
from .run_parts import DataCache
from .sweep import keys
from .sweep.lifecycle import finish_study, run_worker, setup_study
from .sweep.search.pruning import make_pruner
from .sweep.search.samplers import make_sampler
from .sweep.stores.study_store import open_storage
from .sweep.stores.tracking import Tracker
from .train import resolve_device

STRATEGIES = ("default", "random", "before")
DEAD = (keys.DIVERGED, keys.STALLED)

# glyphs.yaml's dimensions, written the way the shipped spaces were before the rework: per-optimiser rate and
# decay branches (so TPE modelled the rate apart from everything else), SGD's momentum and nesterov, and the
# normalisation, norm and schedule choices that were dropped as dead weight.
BEFORE_SPACE = {
    "train.optimizer": {"type": "categorical", "choices": ["sgd", "adam", "adamw"]},
    "train.batch_size": {"type": "categorical", "choices": [64, 128, 256, 512]},
    # the same rates as glyphs.yaml's scales give at batch 128, but per optimiser and blind to the batch size
    "train.lr": [
        {"when": {"train.optimizer": "sgd"}, "type": "float", "low": 5.0e-3, "high": 0.2, "log": True},
        {"when": {"train.optimizer": ["adam", "adamw"]}, "type": "float", "low": 1.0e-4, "high": 4.0e-3,
         "log": True}],
    "train.momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"train.optimizer": "sgd"}},
    "train.nesterov": {"type": "categorical", "choices": [False, True], "when": {"train.optimizer": "sgd"}},
    "train.weight_decay": [
        {"when": {"train.optimizer": ["sgd", "adam"]}, "type": "float", "low": 1.5e-4, "high": 1.5e-3,
         "log": True},
        {"when": {"train.optimizer": "adamw"}, "type": "float", "low": 1.5e-2, "high": 0.15, "log": True}],
    "train.schedule": {"type": "categorical", "choices": ["cosine", "onecycle", "plateau"]},
    "train.label_smoothing": {"type": "categorical", "choices": [0.0, 0.1]},
    "model.norm": {"type": "categorical", "choices": ["lrn", "batchnorm", "none"]},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.4},
    "augment.normalize": {"type": "categorical", "choices": ["none", "dataset", "imagenet"]},
    "augment.crop": {"type": "categorical", "choices": [True, False]},
    "augment.flip": {"type": "categorical", "choices": [True, False]},
    "augment.pca_color": {"type": "categorical", "choices": [0.0, 0.1]},
}


@dataclasses.dataclass
class StudyResult:
    strategy: str
    seed: int
    trials: list[dict]  # number, state, fail_kind, epochs, value, cumulative epochs at its end
    test_accuracy: Optional[float]
    chosen_trial: Optional[int]
    seconds: float

    def best_by(self, epochs: float) -> Optional[float]:
        """The best validation value among the trials finished within `epochs` epochs of training."""
        done = [t["value"] for t in self.trials if t["value"] is not None and t["cumulative_epochs"] <= epochs]
        return max(done) if done else None

    def dead_share(self, startup: int) -> Optional[float]:
        """Share of the sampled trials after the first `startup` that diverged or stalled."""
        later = [t for t in self.trials if t["number"] >= startup]
        return sum(t["fail_kind"] in DEAD for t in later) / len(later) if later else None


def epochs_trained(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs a finished trial trained: one report per epoch; a diverged or stalled run ended on an epoch it
    trained but did not report (fit stops before the report, so that no pruner records it as pruned)."""
    reported = len(trial.intermediate_values)
    return reported + (1 if trial.user_attrs.get(keys.FAIL_KIND) in DEAD else 0)


def strategy_config(base: RunConfig, strategy: str, seed: int) -> tuple[RunConfig, bool]:
    """The study config of a strategy, and whether failures teach its sampler."""
    raw = base.model_dump()
    raw["study"].update(name=f"search-{strategy}-{seed}", seed=seed, repeats=None, storage=None, tracking_uri=None)
    raw["baselines"] = []  # no strategy starts from a hand-picked configuration
    if strategy == "random":
        raw["study"].update(sampler="random", sampler_options={}, pruner="none", pruner_options={})
    elif strategy == "before":
        raw["space"] = BEFORE_SPACE
        for key in ("lr_scale", "weight_decay_scale"):  # its rates are absolute
            raw["train"][key] = None
    elif strategy != "default":
        raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    return config_from_dict(raw, f"strategy {strategy}"), strategy != "before"


def run_study(config: RunConfig, failures_as_worst: bool, epoch_budget: int, cache: DataCache,
              strategy: str) -> StudyResult:
    """Trials one at a time (the sweep's worker loop, one more trial per call) until `epoch_budget` epochs are
    trained; then the chosen configuration is evaluated once on the test split. Run in an empty folder."""
    s = config.study
    storage_url = f"sqlite:///{Path('sweeps') / s.name / 'optuna.db'}"
    Path("sweeps", s.name).mkdir(parents=True, exist_ok=True)
    storage = open_storage(storage_url, s.heartbeat_seconds)
    sampler = make_sampler(s.sampler, s.sampler_options, s.seed, config.space, failures_as_worst)
    pruner = make_pruner(s.pruner, s.pruner_options, config.train.epochs)
    tracker = Tracker(f"sqlite:///{Path('mlflow.db').resolve()}", s.name, system_metrics=False)
    run, _ = setup_study(config, storage_url, storage, sampler, pruner, tracker, {"command": "bench search"})
    started = time.monotonic()
    spent, target = 0, 0
    while spent < epoch_budget:
        target += 1
        step = dataclasses.replace(run, config=run.config.model_copy(
            update={"study": run.config.study.model_copy(update={"n_trials": target})}))
        if run_worker(step, cache, {"study": s.name}, quiet=True) != "budget":
            break
        spent = sum(epochs_trained(t) for t in run.study.get_trials(deepcopy=False) if t.state.is_finished())
    summary = finish_study(dataclasses.replace(run, config=step.config), cache)
    trials, total = [], 0
    for t in sorted(run.study.get_trials(deepcopy=False), key=lambda t: t.datetime_complete or t.datetime_start):
        if not t.state.is_finished():
            continue
        total += epochs_trained(t)
        trials.append({"number": t.number, "state": t.state.name, "fail_kind": t.user_attrs.get(keys.FAIL_KIND),
                       "epochs": epochs_trained(t), "cumulative_epochs": total,
                       "value": t.value if t.state == TrialState.COMPLETE else None,
                       "values": json.loads(t.user_attrs.get(keys.VALUES, "{}"))})
    return StudyResult(strategy, s.seed, trials, (summary or {}).get("test_accuracy"),
                       (summary or {}).get("trial"), time.monotonic() - started)


def summarize(results: list[StudyResult], epoch_budget: int, startup: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for strategy in dict.fromkeys(r.strategy for r in results):
        mine = [r for r in results if r.strategy == strategy]
        best = [r.best_by(epoch_budget) for r in mine]
        dead = [r.dead_share(startup) for r in mine]
        tests = [r.test_accuracy for r in mine]
        final = [r.best_by(float("inf")) for r in mine]
        out[strategy] = {
            "best_val_at_budget": best, "mean_best_val_at_budget": _mean(best),
            # the trial that crossed the budget included: the configuration each study chose
            "best_val_final": final, "mean_best_val_final": _mean(final),
            "epochs_spent": [r.trials[-1]["cumulative_epochs"] if r.trials else 0 for r in mine],
            "dead_share_after_startup": dead, "mean_dead_share": _mean(dead),
            "test_accuracy_of_chosen": tests, "mean_test_accuracy": _mean(tests),
            "trials": [len(r.trials) for r in mine], "seconds": [round(r.seconds, 1) for r in mine]}
    return out


def _mean(values: list[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def plot(results: list[StudyResult], epoch_budget: int, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    colours = {"default": "tab:green", "random": "tab:blue", "before": "tab:orange"}
    # one line style per study seed: strategies of one seed share TPE's random start-up, so their curves meet
    styles = {seed: style for seed, style in zip(sorted({r.seed for r in results}), ("-", "--", ":", "-."))}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        xs, ys, best = [0], [None], None
        for t in r.trials:
            if t["value"] is not None and (best is None or t["value"] > best):
                best = t["value"]
            xs.append(t["cumulative_epochs"])
            ys.append(best)
        points = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if points:
            ax.step(*zip(*points), where="post", color=colours.get(r.strategy), alpha=0.8,
                    linestyle=styles.get(r.seed, "-"), label=f"{r.strategy}, seed {r.seed}")
    ax.axvline(epoch_budget, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("epochs trained (all trials of the study)")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("\n".join(textwrap.wrap(title, 95)), fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet_exp.bench search",
                                description="Random search against the shipped search, at equal compute, on the "
                                            "glyphs task (see alexnet_exp/search_bench.py).")
    p.add_argument("--config", default="search_spaces/glyphs.yaml", help="the default strategy's YAML")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, of: " + ", ".join(STRATEGIES))
    p.add_argument("--seeds", default="0,1", help="study seeds, comma-separated")
    p.add_argument("--epoch-budget", type=int, default=CPU_EPOCH_BUDGET, help="epochs each study may train")
    p.add_argument("--startup", type=int, default=10, help="trials counted as the sampler's start-up (TPE's 10)")
    p.add_argument("--set", dest="overrides", action="append", default=list(CPU_SCALE), metavar="KEY=VALUE",
                   help="override the YAML (repeatable); the defaults are the CPU scale: " + " ".join(CPU_SCALE))
    p.add_argument("--gpu-scale", action="store_true", help="drop the CPU-scale defaults: the YAML as shipped")
    p.add_argument("--out", default="benchmarks/results", help="folder for the JSON and the figure")
    args = p.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        p.error(f"--strategies: {', '.join(unknown) or 'none given'}; valid: {', '.join(STRATEGIES)}")
    if args.epoch_budget < 1:
        p.error(f"--epoch-budget: at least 1 (got {args.epoch_budget})")
    overrides = args.overrides[len(CPU_SCALE):] if args.gpu_scale else args.overrides
    base = load_config(args.config, overrides)
    device = resolve_device(base.train.device)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cache = DataCache(device)
    results = []
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="search-bench-") as work:
        os.chdir(work)  # the sweeps' stores, checkpoints and weights go there, not into the repository
        try:
            for seed in seeds:
                for strategy in strategies:
                    config, teach = strategy_config(base, strategy, seed)
                    print(f"== {strategy}, seed {seed} ==", flush=True)
                    results.append(run_study(config, teach, args.epoch_budget, cache, strategy))
        finally:
            os.chdir(here)
    summary = summarize(results, args.epoch_budget, args.startup)
    date = dt.date.today().isoformat()
    meta = {"date": date, "device": str(device), "threads": __import__("torch").get_num_threads(),
            "python": platform.python_version(), "torch": __import__("torch").__version__,
            "optuna": optuna.__version__, "config": args.config, "overrides": overrides,
            "epoch_budget": args.epoch_budget, "seeds": seeds, "startup": args.startup}
    stem = f"search-{device.type}-{date}"
    figure = plot(results, args.epoch_budget, out / f"{stem}.png",
                  f"glyphs, {' '.join(overrides) or 'as shipped'}; budget {args.epoch_budget} epochs per study")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                  "studies": [dataclasses.asdict(r) for r in results]}, indent=2))
    print(f"\n{'strategy':<10}{'best val @ budget':>18}{'final best':>12}{'test of chosen':>16}"
          f"{'dead after start-up':>21}{'trials':>8}{'epochs':>8}")
    for strategy, s in summary.items():
        print(f"{strategy:<10}{_fmt(s['mean_best_val_at_budget']):>18}{_fmt(s['mean_best_val_final']):>12}"
              f"{_fmt(s['mean_test_accuracy']):>16}{_fmt(s['mean_dead_share'], '.0%'):>21}"
              f"{sum(s['trials']) / len(s['trials']):>8.1f}{sum(s['epochs_spent']) / len(s['epochs_spent']):>8.1f}")
        print(f"{'':<10}per seed: best @ budget {', '.join(_fmt(v) for v in s['best_val_at_budget'])}; "
              f"test {', '.join(_fmt(v) for v in s['test_accuracy_of_chosen'])}")
    print(f"written {out / (stem + '.json')} and {figure}")
    return 0


def _fmt(value: Optional[float], spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


# The CPU scale (2 cores, about 30 minutes for 3 strategies x 2 seeds; benchmarks/RESULTS.md): 20 classes of
# 300 images (5,400 train / 600 validation), 8 epochs a trial (about 20 s), 120 epochs a study.
CPU_SCALE = ("data.glyph_classes=20", "data.glyph_train_per_class=300", "train.epochs=8", "train.device=cpu")
CPU_EPOCH_BUDGET = 120
