"""The search space: the only caller of `trial.suggest_*`, plus samplers, pruners and baselines by name."""
from __future__ import annotations

import json
from typing import Any, Optional

import optuna

from .config import CategoricalParam, ConfigError, FloatParam, IntParam, RunConfig, SpaceParam


def ordered_params(space: dict[str, SpaceParam]) -> list[str]:
    """Parameter paths with every `when` condition's parameter before the parameters that depend on it."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str, chain: list[str]) -> None:
        if path in order:
            return
        if path in visiting:
            raise ConfigError("space", [f"space.{path}.when: circular condition {' -> '.join(chain + [path])}"])
        visiting.add(path)
        for dep in space[path].when:
            visit(dep, chain + [path])
        visiting.discard(path)
        order.append(path)

    for path in space:
        visit(path, [])
    return order


def _active(param: SpaceParam, values: dict[str, Any]) -> bool:
    for dep, wanted in param.when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if dep not in values or values[dep] not in allowed:
            return False
    return True


def suggest(trial: optuna.Trial, space: dict[str, SpaceParam], fixed: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Sample the active parameters of `space` for `trial`; `fixed` values are taken as they are (baselines)."""
    fixed = fixed or {}
    values: dict[str, Any] = {}
    for path in ordered_params(space):
        param = space[path]
        if not _active(param, values):
            continue
        if path in fixed:
            values[path] = fixed[path]
        elif isinstance(param, CategoricalParam):
            values[path] = trial.suggest_categorical(path, param.choices)
        elif isinstance(param, IntParam):
            values[path] = trial.suggest_int(path, param.low, param.high, step=param.step, log=param.log)
        else:
            values[path] = trial.suggest_float(path, param.low, param.high, step=param.step, log=param.log)
    for path, value in fixed.items():  # baseline values outside the space (epochs, say)
        values.setdefault(path, value)
    return values


def _contains(param: SpaceParam, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return value in param.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return param.low <= value <= param.high


def _read_path(config: RunConfig, path: str) -> Any:
    section, _, key = path.partition(".")
    return getattr(getattr(config, section), key)


def baseline_trial(baseline: dict[str, Any], config: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a baseline into (Optuna params to enqueue, values to fix outside the sampler).

    A baseline is the YAML's fixed config plus its own values, exactly: space parameters it does not name
    take the YAML's fixed value, not a sampled one. Values inside the space's distributions are enqueued so
    the sampler learns from them; the rest (outside a range, or not sampled at all) are fixed.
    """
    values = {k: v for k, v in baseline.items() if k != "name"}
    for path in config.space:
        values.setdefault(path, _read_path(config, path))
    params = {p: v for p, v in values.items() if p in config.space and _contains(config.space[p], v)}
    fixed = {p: v for p, v in values.items() if p not in params}
    return params, fixed


def baseline_name(baseline: dict[str, Any], index: int) -> str:
    return str(baseline.get("name", f"baseline_{index}"))


def space_signature(space: dict[str, SpaceParam]) -> str:
    """A stable text of the space, stored with the study to refuse resuming with a different one."""
    return json.dumps({p: space[p].model_dump() for p in sorted(space)}, sort_keys=True)


def _grid(space: dict[str, SpaceParam]) -> dict[str, list]:
    grid = {}
    for path, param in space.items():
        if isinstance(param, CategoricalParam):
            grid[path] = list(param.choices)
        elif isinstance(param, IntParam) and not param.log:
            grid[path] = list(range(param.low, param.high + 1, param.step))
        elif isinstance(param, FloatParam) and param.step is not None:
            n = int(round((param.high - param.low) / param.step))
            grid[path] = [param.low + i * param.step for i in range(n + 1)]
        else:
            raise ConfigError("study.sampler", [f"space.{path}: the grid sampler needs categorical choices, "
                                                f"an int range or a float with step"])
    return grid


def make_sampler(name: str, options: dict[str, Any], seed: Optional[int],
                 space: dict[str, SpaceParam]) -> optuna.samplers.BaseSampler:
    samplers = optuna.samplers
    factories = {
        "tpe": lambda: samplers.TPESampler(seed=seed, **options),
        "random": lambda: samplers.RandomSampler(seed=seed, **options),
        "grid": lambda: samplers.GridSampler(_grid(space), seed=seed, **options),
        "gp": lambda: samplers.GPSampler(seed=seed, **options),
        "cmaes": lambda: samplers.CmaEsSampler(seed=seed, **options),
        "qmc": lambda: samplers.QMCSampler(seed=seed, **options),
    }
    if name not in factories:
        raise ConfigError("study.sampler", [f"study.sampler: {name!r}; valid: {', '.join(factories)}"])
    try:
        return factories[name]()
    except (TypeError, ValueError, ImportError) as exc:
        raise ConfigError("study.sampler_options", [f"study.sampler_options for {name}: {exc}"]) from None


def make_pruner(name: str, options: dict[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    pruners = optuna.pruners
    # Defaults that suit epoch-level reports (steps are 1-based epochs): never judge the noisy first epoch,
    # and only once 3 trials have finished.
    factories = {
        "median": lambda: pruners.MedianPruner(**{"n_startup_trials": 3, "n_warmup_steps": 2, **options}),
        "percentile": lambda: pruners.PercentilePruner(
            **{"percentile": 25.0, "n_startup_trials": 3, "n_warmup_steps": 2, **options}),
        "successive_halving": lambda: pruners.SuccessiveHalvingPruner(**options),
        "hyperband": lambda: pruners.HyperbandPruner(**{"min_resource": 1, "max_resource": epochs, **options}),
        "none": lambda: pruners.NopPruner(),
    }
    if name not in factories:
        raise ConfigError("study.pruner", [f"study.pruner: {name!r}; valid: {', '.join(factories)}"])
    try:
        return factories[name]()
    except (TypeError, ValueError) as exc:
        raise ConfigError("study.pruner_options", [f"study.pruner_options for {name}: {exc}"]) from None
