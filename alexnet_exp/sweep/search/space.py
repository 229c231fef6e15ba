"""The search space: the only caller of `trial.suggest_*`, conditions, baselines. Samplers and pruners: samplers.py."""
from __future__ import annotations

import json
from typing import Any, Optional

import optuna

from ...config import RunConfig, as_scales
from ...space_params import (
    CategoricalParam,
    IntParam,
    SpaceEntry,
    SpaceParam,
    active_branch,
    optuna_name,
    ordered_params,
)


def suggest(trial: optuna.Trial, space: dict[str, SpaceEntry],
            fixed: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Sample the active parameters of `space` for `trial`; `fixed` values are taken as they are (baselines,
    repeats). A parameter with branches is sampled from the branch its conditions select, under that branch's
    own Optuna name (see space_params.optuna_name); `values` holds it under its dotted path."""
    fixed = fixed or {}
    values: dict[str, Any] = {}
    for path in ordered_params(space):
        param = active_branch(space[path], values)
        if param is None:
            continue
        name = optuna_name(path, space[path], param)
        if path in fixed:
            values[path] = fixed[path]
        elif isinstance(param, CategoricalParam):
            values[path] = trial.suggest_categorical(name, param.choices)
        elif isinstance(param, IntParam):
            values[path] = trial.suggest_int(name, param.low, param.high, step=param.step, log=param.log)
        else:
            values[path] = trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)
    for path, value in fixed.items():  # baseline values outside the space (epochs, say)
        values.setdefault(path, value)
    return values


def _contains(param: SpaceParam, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return value in param.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return param.low <= value <= param.high


def baseline_trial(baseline: dict[str, Any], config: RunConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a baseline into (Optuna params to enqueue, values to fix outside the sampler).

    A baseline is the YAML's fixed config plus its own values, exactly: space parameters it does not name
    take the YAML's fixed value, not a sampled one. Values inside the space's distributions are enqueued so
    the sampler learns from them; the rest (outside a range, or not sampled at all) are fixed.
    """
    values = as_scales({k: v for k, v in baseline.items() if k not in BASELINE_KEYS}, config)
    for path in config.space:
        values.setdefault(path, config.value(path))
    params, enqueued = {}, set()
    for path in ordered_params(config.space):
        branch = active_branch(config.space[path], values)
        if branch is not None and _contains(branch, values[path]):
            params[optuna_name(path, config.space[path], branch)] = values[path]
            enqueued.add(path)
    fixed = {p: v for p, v in values.items() if p not in enqueued}
    return params, fixed


BASELINE_KEYS = ("name", "reported")  # a baseline's own keys; every other key is a dotted training parameter


def baseline_name(baseline: dict[str, Any], index: int) -> str:
    return str(baseline.get("name", f"baseline_{index}"))


def space_signature(space: dict[str, SpaceEntry]) -> str:
    """A stable text of the space, stored with the study to refuse resuming with a different one. A single
    distribution keeps the text it had before branches existed, so older studies still resume."""
    return json.dumps({p: [b.model_dump() for b in space[p]] if isinstance(space[p], list) else space[p].model_dump()
                       for p in sorted(space)}, sort_keys=True)
