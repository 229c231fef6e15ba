"""The search space: the entries of a YAML `space:` section (one distribution per dotted key, or branches of
one), their order (a condition's parameter first), their checks (Optuna's own rules, and each value against
the training sections' schema) and their names in Optuna (`optuna_name`, and `entry_name` back), before
anything runs. config.py validates the whole file with it; every view of a study reads parameter names here."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .config_sections import ConfigError, check_value


class SpaceError(ConfigError):
    """The `space:` section is invalid (a circular condition); `errors` holds one line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("space", errors)

MAX_CHOICES = 1000  # choices of one categorical parameter


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RangeParam(_Entry):
    """A numeric range; Optuna's own rules, checked before anything runs."""

    @model_validator(mode="after")
    def _range(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high}): swap them")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step not in (None, 1):
            raise ValueError("step and log: true cannot be combined")
        return self


class FloatParam(_RangeParam):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: Optional[float] = Field(None, gt=0)
    when: dict[str, Any] = {}  # sample only when these parameters have these values


class IntParam(_RangeParam):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)
    when: dict[str, Any] = {}


class CategoricalParam(_Entry):
    type: Literal["categorical"]
    # A list longer than MAX_CHOICES is a generated range, better written as `int` or `float` with low/high.
    choices: list[Union[bool, int, float, str, None]] = Field(min_length=1, max_length=MAX_CHOICES)
    when: dict[str, Any] = {}


SpaceParam = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


# A space entry is one distribution, or a list of branches: each branch a distribution with its own `when`,
# exactly one of them active for any assignment of the parameters they depend on (checked by
# `branch_problems`). Adam and SGD get their own learning-rate ranges this way.
SpaceEntry = Union[SpaceParam, Annotated[list[SpaceParam], Field(min_length=2)]]


def branches(entry: SpaceEntry) -> list[SpaceParam]:
    return list(entry) if isinstance(entry, list) else [entry]


def is_active(param: SpaceParam, values: dict[str, Any]) -> bool:
    """Are `param`'s conditions met by the parameter values chosen so far?"""
    for dep, wanted in param.when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if dep not in values or values[dep] not in allowed:
            return False
    return True


def active_branch(entry: SpaceEntry, values: dict[str, Any]) -> Optional[SpaceParam]:
    """The distribution in force for these values, or None when the parameter is inactive."""
    active = [b for b in branches(entry) if is_active(b, values)]
    return active[0] if active else None


def optuna_name(path: str, entry: SpaceEntry, branch: SpaceParam) -> str:
    """The Optuna parameter name of a branch: the path itself for a single distribution, else the path with
    the branch's condition (`train.lr[train.optimizer=adam|adamw]`), so that each branch keeps its own history
    in the sampler (a TPE model of SGD's learning rates must not learn from Adam's)."""
    if not isinstance(entry, list):
        return path
    shown = ",".join(f"{k}={'|'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in branch.when.items())
    return f"{path}[{shown}]"


_BRANCH = re.compile(r"^(?P<path>[^\[\]]+)\[[^\[\]]+\]$")  # `train.lr[train.optimizer=adam|adamw]`


def entry_name(param: str) -> str:
    """The space entry an Optuna parameter belongs to (optuna_name's inverse): the path of a branch, else the
    name itself."""
    match = _BRANCH.match(param)
    return match.group("path") if match else param


def ordered_params(space: dict[str, SpaceEntry]) -> list[str]:
    """Parameter paths with every `when` condition's parameter before the parameters that depend on it."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str, chain: list[str]) -> None:
        if path in order:
            return
        if path in visiting:
            raise SpaceError([f"space.{path}.when: circular condition {' -> '.join(chain + [path])}"])
        visiting.add(path)
        for dep in sorted({dep for branch in branches(space[path]) for dep in branch.when}):
            if dep in space:  # an unknown condition is reported by _check_space
                visit(dep, chain + [path])
        visiting.discard(path)
        order.append(path)

    for path in space:
        visit(path, [])
    return order


MAX_BRANCH_ASSIGNMENTS = 10_000


def branch_problems(path: str, entry: list[SpaceParam], choices: dict[str, list]) -> list[str]:
    """Exactly one branch active for every combination of the choices of the parameters the branches depend
    on (`choices`: each such parameter's categorical choices). Returns the problems, each naming the key."""
    deps = sorted({dep for b in entry for dep in b.when})
    if not deps:
        return [f"space.{path}: a list of branches needs a `when` on each branch (one distribution needs no list)"]
    not_categorical = [d for d in deps if d not in choices]
    if not_categorical:
        return [f"space.{path}: branches can only depend on categorical parameters of the space; "
                f"{', '.join(not_categorical)} is not one"]
    import itertools

    combos = list(itertools.islice(itertools.product(*(choices[d] for d in deps)), MAX_BRANCH_ASSIGNMENTS + 1))
    if len(combos) > MAX_BRANCH_ASSIGNMENTS:
        return [f"space.{path}: its branches depend on more than {MAX_BRANCH_ASSIGNMENTS} combinations of choices"]
    problems = []
    for combo in combos:
        values = dict(zip(deps, combo))
        active = [i for i, b in enumerate(entry) if is_active(b, values)]
        shown = ", ".join(f"{d}={v}" for d, v in values.items())
        if not active:
            problems.append(f"space.{path}: no branch is active for {shown}; add a branch for it or widen a `when`")
        elif len(active) > 1:
            problems.append(f"space.{path}: branches {', '.join(f'[{i}]' for i in active)} overlap for {shown}; "
                            f"exactly one branch must be active for any assignment")
        if len(problems) >= 5:  # the first few say what is wrong; all of them would flood the screen
            break
    return problems


def space_problems(space: dict[str, "SpaceEntry"]) -> list[str]:
    """Every problem of the space's entries: values the training sections refuse (config_sections.check_value),
    conditions on unknown parameters or choices, branches that overlap or leave
    an assignment uncovered."""
    errors: list[str] = []
    choices = {p: _choices(e) for p, e in space.items() if _choices(e) is not None}
    for path, entry in space.items():
        for i, param in enumerate(branches(entry)):
            where = f"space.{path}[{i}]" if isinstance(entry, list) else f"space.{path}"
            errors += _check_param(space, path, where, param, choices)
        if isinstance(entry, list):
            errors += branch_problems(path, entry, choices)
    return errors


def _choices(entry: "SpaceEntry") -> Optional[list]:
    """A categorical parameter's choices (the union over its branches), None for a numeric one."""
    if not all(isinstance(b, CategoricalParam) for b in branches(entry)):
        return None
    return list(dict.fromkeys(c for b in branches(entry) for c in b.choices))


def _check_param(space: dict, path: str, where: str, param: SpaceParam, choices: dict[str, list]) -> list[str]:
    errors = []
    probes = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
    for probe in probes:
        problem = check_value(path, probe)
        if problem:
            errors.append(f"{where}: {problem}")
            break
    for cond_path, cond_value in param.when.items():
        if cond_path not in space:
            errors.append(f"{where}.when: {cond_path!r} is not a sampled parameter of this space")
        elif cond_path == path:
            errors.append(f"{where}.when: a parameter cannot depend on itself")
        else:
            allowed = cond_value if isinstance(cond_value, list) else [cond_value]
            valid = choices.get(cond_path)
            if valid is not None and any(v not in valid for v in allowed):
                errors.append(f"{where}.when: {cond_value!r} is not among {cond_path}'s choices {valid}")
    return errors
