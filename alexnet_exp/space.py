"""The search space: the only caller of `trial.suggest_*`, conditions, baselines. Samplers and pruners: samplers.py."""
from __future__ import annotations

import json
from typing import Any, Optional

import optuna

from .config import CategoricalParam, IntParam, RunConfig, SpaceParam, ordered_params


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
