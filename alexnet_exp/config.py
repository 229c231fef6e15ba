"""Run configuration: YAML -> validated, immutable objects.

Precedence is defaults < YAML < ``--set key=value`` overrides. Every problem in a file is reported at once,
each with its dotted path (``train.lr``), before any work starts.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError

from .architecture import input_size_problem
from .choices import PRUNERS, SAMPLERS
from .config_sections import (
    SECTION_TYPES,
    TRAINING_SECTIONS,
    AugmentConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    ReportedFigures,
    Section,
    TrainConfig,
    check_value,
    suggest_key,
)
from .rates import lr_scale_for, weight_decay_scale_for
from .redaction import redact_text
from .space_params import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SpaceEntry,
    SpaceError,
    active_branch,
    branches,
    ordered_params,
    space_problems,
)

# PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string. Readers of a config mean a number.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _ConfigLoader(yaml.SafeLoader):
    pass


_ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """Parse YAML with `1e-4` read as a float, as a person writing a config means it."""
    return yaml.load(text, Loader=_ConfigLoader)


# ---- sweep sections (read by sweep/search/space.py, sweep/cli.py); the entries are in space_params.py ------



class RepeatsConfig(Section):
    """Once the search budget is spent, retrain the `top_k` best configurations with `seeds` more seeds each;
    the winner is the best mean over seeds (repeats.py)."""

    top_k: int = Field(3, ge=1)
    seeds: int = Field(2, ge=1)


class StudyConfig(Section):
    name: str = Field("alexnet", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # also the folder under sweeps/
    metric: Literal["val_accuracy", "val_macro_f1"] = "val_accuracy"  # objective, on the validation split
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: int = Field(20, ge=1)  # global budget of finished (complete or pruned) trials
    timeout: Optional[float] = Field(None, gt=0)  # seconds; stop starting new trials after this
    sampler: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    sampler_options: dict[str, Any] = {}  # keyword arguments of the Optuna sampler
    pruner: Literal[PRUNERS] = "median"  # type: ignore[valid-type]
    pruner_options: dict[str, Any] = {}  # keyword arguments of the Optuna pruner
    seed: Optional[int] = 0  # sampler seed
    storage: Optional[str] = None  # Optuna storage URL; default sqlite under sweeps/<name>/
    tracking_uri: Optional[str] = None  # MLflow; default MLFLOW_TRACKING_URI or MLflow's own default
    experiment: Optional[str] = None  # MLflow experiment name; default the study name
    heartbeat_seconds: int = Field(20, ge=1, le=3600)  # a trial silent for 3x this long is failed and retried
    checkpoint: bool = True  # save each trial's state every epoch, so a retried trial resumes where it died
    # Where checkpoints and the best weights are kept: `local` (sweeps/<name>/), `mlflow` (also as artifacts of
    # the trial's run, which every machine can read), `auto` (mlflow when MLflow is a tracking server).
    state_store: Literal["auto", "local", "mlflow"] = "auto"
    repeats: Optional[RepeatsConfig] = None  # e.g. {top_k: 3, seeds: 2}; none: the best single trial wins
    system_metrics: bool = True  # trial runs log CPU, memory and GPU use (MLflow's system-metrics monitor)


class RunConfig(Section):
    """One YAML file: what to train, and for a sweep, what to sample."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    study: StudyConfig = StudyConfig()
    space: dict[str, SpaceEntry] = {}  # dotted path (train.lr) -> distribution, or a list of branches
    baselines: list[dict[str, Any]] = []  # exact configurations enqueued before sampling

    def with_values(self, values: dict[str, Any]) -> "RunConfig":
        """A copy with dotted-path values set (sampled or baseline parameters), validated again. A rate given
        without its scale (`train.lr` alone) is taken as it is: the scale it would have been resolved from
        is cleared, not left to overwrite it."""
        raw = self.model_dump()
        for path, value in values.items():
            _set_path(raw, path, value)
        for value, scale in SCALED.items():
            if value in values and scale not in values:
                _set_path(raw, scale, None)
        return _validate(raw, "sampled values")

    def value(self, path: str) -> Any:
        """The value at a dotted path (`train.lr`)."""
        section, _, key = path.partition(".")
        return getattr(getattr(self, section), key)

    def flat(self) -> dict[str, Any]:
        """The training-relevant values as dotted keys (what is logged as run parameters)."""
        out: dict[str, Any] = {}
        for section in TRAINING_SECTIONS:
            for key, value in getattr(self, section).model_dump().items():
                out[f"{section}.{key}"] = value
        return out




def _valid_keys(model_type: type[BaseModel]) -> list[str]:
    return list(model_type.model_fields)


def _set_path(raw: dict, path: str, value: Any) -> None:
    node = raw
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("override", [f"{path}: {part} is not a section"])
    node[leaf] = value


def _relevant(err: dict, raw: dict) -> bool:
    """A space entry is one distribution or a list of branches: report the errors of the form it was written
    in, not pydantic's complaint that it is not the other form."""
    loc = err["loc"]
    if len(loc) < 3 or loc[0] != "space" or not isinstance(loc[2], str):
        return True
    entry = (raw.get("space") or {}).get(loc[1]) if isinstance(raw.get("space"), dict) else None
    if isinstance(entry, list):
        return loc[2].startswith("list[")
    if isinstance(entry, dict):
        return not loc[2].startswith("list[")
    return not loc[2].startswith("list[")  # neither: one line, from the single-distribution form


def _format_error(err: dict, raw: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    # Union members of the space entries add their tag to the location ("float"); drop it. A list of branches
    # adds its own ("list[...]") before the branch's index.
    if len(loc) >= 3 and loc[0] == "space":
        loc = loc[:2] + [p for p in loc[2:] if not p.startswith(("list[", "tagged-union["))]
        if len(loc) >= 3 and loc[2] in ("float", "int", "categorical"):
            loc.pop(2)
        elif len(loc) >= 4 and loc[2].isdigit() and loc[3] in ("float", "int", "categorical"):
            loc.pop(3)
            loc[2] = f"[{loc[2]}]"
    loc = [p for p in loc if not p.startswith("function-after")]
    path = ".".join(loc).replace(".[", "[") or "(top level)"
    if err["type"] == "extra_forbidden":
        parent_type = _type_at(loc[:-1], raw)
        valid = _valid_keys(parent_type) if parent_type else []
        hint = suggest_key(loc[-1], valid)
        return f"{path}: unknown key{hint}; valid keys here: {', '.join(valid)}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "too_short" and loc[0] == "space":
        return f"{path}: a list of branches needs two or more; write a single distribution as a mapping"
    if "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
        got = repr(err["input"])
        msg += f" (got {got if len(got) <= 120 else got[:100] + ' ... ' + got[-15:]})"  # one line, even for a list
    return f"{path}: {msg}"


_PARAM_TYPES = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}


def _type_at(loc: list[str], raw: dict) -> Optional[type[BaseModel]]:
    if not loc:
        return RunConfig
    if len(loc) == 1 and loc[0] in SECTION_TYPES:
        return SECTION_TYPES[loc[0]]
    if len(loc) == 1 and loc[0] == "study":
        return StudyConfig
    if len(loc) in (2, 3) and loc[0] == "space":  # the keys of the entry's own type, float's when it has none
        entry = (raw.get("space") or {}).get(loc[1])
        if len(loc) == 3 and isinstance(entry, list):  # a branch: space.<path>[i]
            index = int(loc[2].strip("[]")) if loc[2].strip("[]").isdigit() else -1
            entry = entry[index] if 0 <= index < len(entry) else None
        return _PARAM_TYPES.get(entry.get("type") if isinstance(entry, dict) else None, FloatParam)
    return None


def _validate(raw: Any, source: str) -> RunConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"(top level): expected a mapping of sections, got {type(raw).__name__}"])
    valid = list(RunConfig.model_fields)
    errors = [f"{key}: unknown section{suggest_key(str(key), valid)}; valid: {', '.join(valid)}"
              for key in raw if key not in valid]
    try:
        config = RunConfig.model_validate({k: v for k, v in raw.items() if k in valid})
    except ValidationError as exc:
        problems = [_format_error(e, raw) for e in exc.errors() if _relevant(e, raw)]
        raise ConfigError(source, errors + list(dict.fromkeys(problems))) from None
    errors += _check_space(config) + _check_baselines(config)
    if not errors:  # the combinations are only worth checking once each value is valid on its own
        errors += _check_combinations(config)
    if errors:
        raise ConfigError(source, errors)
    return config


# A value and the scale it is resolved from (rates.py): a config sets or samples one of them.
SCALED = {"train.lr": "train.lr_scale", "train.weight_decay": "train.weight_decay_scale"}


def resolved_rates(config: RunConfig) -> dict[str, Any]:
    """The rate and decay that the config's scales resolve to (rates.py): what trains, and what MLflow and the
    report show. Empty where both are given as raw values."""
    return {value: config.value(value) for value, scale in SCALED.items() if config.value(scale) is not None}


def _check_space(config: RunConfig) -> list[str]:
    errors = []
    try:
        ordered_params(config.space)
    except SpaceError as exc:
        errors += exc.errors
    if "model.logit_relu" in config.space:
        errors.append("space.model.logit_relu: a ReLU on the logits is the CIFAR-100 notebook's bug, there to replay "
                      "it (set it in a baseline); sampling it would spend trials on a network that can die")
    for value, scale in SCALED.items():
        if value in config.space and (scale in config.space or config.value(scale) is not None):
            errors.append(f"space.{value}: {scale} is set, and it resolves {value}, so a sampled {value} would be "
                          f"overwritten; sample {scale} instead, or set {scale}: null")
    return errors + space_problems(config.space)


def _given_twice(raw: dict) -> list[str]:
    """A YAML (with its --set overrides) that gives both a value and its scale, and they disagree: the scale
    would win silently. A config written by `dump_config` holds both, agreeing, and loads."""
    errors = []
    given = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    for value, scale in SCALED.items():
        key, scale_key = value.partition(".")[2], scale.partition(".")[2]
        if given.get(key) is None or given.get(scale_key) is None:
            continue
        try:
            resolved = getattr(TrainConfig.model_validate({k: v for k, v in given.items() if k != key}), key)
            if math.isclose(resolved, float(given[key]), rel_tol=1e-9):
                continue
        except (ValidationError, TypeError, ValueError):
            pass  # the section's own problems are reported with the rest
        errors.append(f"{value} and {scale}: give one; {scale} resolves {value} from its optimiser's reference "
                      f"(README, Learning rates); to train at a given {key}, add --set {scale}=null")
    return errors


def as_scales(values: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """A baseline's absolute `train.lr` and `train.weight_decay`, where this config resolves them from a scale
    (sampled or set, rates.py), turned into the scale that gives them with the baseline's optimiser and batch
    size: the baseline trains at the rate it names, and the sampler learns from it under the scale's name."""
    out, t = dict(values), config.train

    def get(key: str) -> Any:
        return out.get(f"train.{key}", getattr(t, key))

    for value, scale in SCALED.items():
        if value not in out or scale in out or not (scale in config.space or config.value(scale) is not None):
            continue
        if value == "train.lr":
            out[scale] = lr_scale_for(out.pop(value), get("optimizer"), get("batch_size"), t.lr_reference,
                                      t.lr_batch_scaling)
        else:
            out[scale] = weight_decay_scale_for(out.pop(value), get("optimizer"), t.weight_decay_reference)
    return out


def _check_baselines(config: RunConfig) -> list[str]:
    errors = []
    for i, baseline in enumerate(config.baselines):
        for path, value in baseline.items():
            if path == "name":
                continue
            if path == "reported":
                try:
                    ReportedFigures.model_validate(value)
                except ValidationError as exc:
                    errors += [f"baselines[{i}].reported.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                               for e in exc.errors()]
                continue
            problem = check_value(path, value)
            if problem:
                errors.append(f"baselines[{i}].{path}: {problem}")
        nested: dict[str, Any] = {}
        for path, value in baseline.items():
            if path.startswith("train."):
                _set_path(nested, path, value)
        errors += [f"baselines[{i}]: {e}" for e in _given_twice(nested)]
    return errors


def _values_of(config: RunConfig, path: str) -> list[Any]:
    """Every value `path` can take in this sweep: the space's choices or bounds, else the fixed value."""
    entry = config.space.get(path)
    if entry is not None:
        return [v for b in branches(entry) for v in (b.choices if isinstance(b, CategoricalParam) else [b.low, b.high])]
    return [config.value(path)]


def _check_combinations(config: RunConfig) -> list[str]:
    """Values valid on their own that cannot work together, found without training. Every trial of such a
    sweep would fail the same way, so it is refused with its path before any state is written."""
    errors = []
    for arch in _values_of(config, "model.arch"):
        for size in _values_of(config, "augment.input_size"):
            problem = input_size_problem(arch, size)
            if problem:
                where = "space.augment.input_size" if "augment.input_size" in config.space else "augment.input_size"
                errors.append(f"{where}: {problem}")
    errors += _crop_problems(config)
    for i, baseline in enumerate(config.baselines):
        arch = baseline.get("model.arch", config.model.arch)
        size = baseline.get("augment.input_size", config.augment.input_size)
        problem = input_size_problem(arch, size)
        if problem:
            errors.append(f"baselines[{i}]: {problem}")
        errors += _baseline_scale_problems(i, baseline, config)
    return errors + _warmup_problems(config)


STORED_SIDE = 32  # every dataset but imagefolder is stored at 32 x 32 (imagefolder: data.image_size)


def _crop_problems(config: RunConfig) -> list[str]:
    sides = _values_of(config, "data.image_size") if config.data.dataset == "imagefolder" else [STORED_SIDE]
    errors = []
    for crop in _values_of(config, "augment.crop_size"):
        if crop is not None and crop > min(sides):
            errors.append(f"augment.crop_size: {crop} px crops cannot be cut from {min(sides)} px images "
                          f"({'data.image_size' if config.data.dataset == 'imagefolder' else config.data.dataset}); "
                          f"use at most {min(sides)}")
    if True in _values_of(config, "augment.ten_crop") and None in _values_of(config, "augment.crop_size"):
        errors.append("augment.ten_crop: needs augment.crop_size (the side of the ten crops), smaller than the "
                      "stored images")
    return errors


def _baseline_scale_problems(i: int, baseline: dict[str, Any], config: RunConfig) -> list[str]:
    """A baseline's absolute rate whose scale (as_scales) the training config would refuse: said at load
    time with the key the user wrote, not as an `invalid` trial about a key they never saw."""
    errors = []
    converted = as_scales({k: v for k, v in baseline.items() if k not in ("name", "reported")}, config)
    for value, scale in SCALED.items():
        if value in baseline and scale in converted and scale not in baseline:
            context = {"optimizer": converted.get("train.optimizer", config.train.optimizer),
                       "batch_size": converted.get("train.batch_size", config.train.batch_size)}
            try:
                TrainConfig.model_validate({**context, scale.partition(".")[2]: converted[scale]})
            except ValidationError as exc:
                errors.append(f"baselines[{i}].{value}: {baseline[value]} is {scale} {converted[scale]:.4g} for "
                              f"{context['optimizer']} at batch {context['batch_size']}, which is refused ("
                              f"{exc.errors()[0]['msg'].removeprefix('Value error, ')})")
    return errors


def _warmup_problems(config: RunConfig) -> list[str]:
    """A learning-rate warm-up that some trials could not have: with onecycle (which rises by itself), or as long
    as a trial's epochs. Every such trial would be `invalid`, and taught to the sampler as a bad result."""
    entry = config.space.get("train.warmup_epochs")
    where = "space.train.warmup_epochs" if entry is not None else "train.warmup_epochs"
    errors = []
    most = max(_values_of(config, "train.warmup_epochs"))
    fewest = min(_values_of(config, "train.epochs"))
    if most >= fewest:
        errors.append(f"{where}: up to {most}, but trials may train only {fewest} epoch(s); a warm-up must end "
                      f"before the last epoch (--epochs N shortens it for you)")
    if "onecycle" in _values_of(config, "train.schedule"):
        # with onecycle: the fixed value, or the branches of the space's entry that a onecycle trial can take
        can_warm = (config.train.warmup_epochs > 0 if entry is None else any(
            b.high > 0 if not isinstance(b, CategoricalParam) else any(c for c in b.choices)
            for b in branches(entry) if "onecycle" in _allowed(b.when.get("train.schedule", "onecycle"))))
        if can_warm:
            errors.append(f"{where}: a onecycle trial could get a warm-up, which it refuses (it rises by itself over "
                          f"30% of its steps); add `when: {{train.schedule: [...]}}` without onecycle, or leave "
                          f"onecycle out of the space")
    return errors


def _allowed(wanted: Any) -> list:
    return wanted if isinstance(wanted, list) else [wanted]


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-3` -> ("train.lr", 0.001); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError("--set", [f"{text!r}: expected key=value, e.g. train.lr=0.01"])
    key, _, value = text.partition("=")
    return key.strip(), parse_yaml(value) if value.strip() else None


MAX_CONFIG_BYTES = 1_000_000  # the shipped spaces are 2-6 KB: a bigger file is the wrong file, not a config


def read_config_text(path: Path) -> str:
    """The file's text, refused before it is read into memory when it is too big, and with a clear message when
    it is not text (an image, an archive, another encoding)."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(str(path), [f"the file is {size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit for a "
                                      f"config (the shipped ones are a few KB): is it the right file?"])
    data = path.read_bytes()
    if b"\x00" in data:
        raise ConfigError(str(path), ["a binary file, not YAML text: pass a search space such as "
                                      "search_spaces/smoke.yaml"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): save "
                                      f"it as UTF-8"]) from None


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> RunConfig:
    """Read and validate a YAML config; `overrides` are `key=value` strings applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["no such file; the shipped configs are in search_spaces/"])
    try:
        raw = parse_yaml(read_config_text(path))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    if raw is None:  # an empty file (or only comments) would silently start a default 20-trial sweep
        raise ConfigError(str(path), ["the file is empty (or only comments): it needs at least a `study:` "
                                      "and a `space:` section; start from search_spaces/smoke.yaml"])
    raw = copy.deepcopy(raw)
    if not isinstance(raw, dict):
        raise ConfigError(str(path), [f"(top level): expected a mapping of sections, got {type(raw).__name__}"])
    for text in overrides or []:
        key, value = parse_override(text)
        _set_path(raw, key, value)
    twice = _given_twice(raw)
    if twice:
        raise ConfigError(str(path), twice)
    return _validate(raw, str(path))


def with_epochs_everywhere(config: RunConfig, epochs: int) -> RunConfig:
    """`--epochs N`: every trial trains N epochs, baselines with their own `train.epochs` and a space that
    samples epochs included (a quick look at a long sweep must shorten all of it, not only the sampled trials)."""
    raw = config.model_dump()
    raw["train"]["epochs"] = epochs
    raw["space"] = {p: e for p, e in raw["space"].items() if p != "train.epochs"}
    raw["baselines"] = [{k: v for k, v in b.items() if k != "train.epochs"} for b in raw["baselines"]]
    # A warm-up must end before the last epoch: shortened runs get a shortened warm-up range, not `invalid`
    # trials (--epochs 2 on a space sampling warmup_epochs 0..3).
    most = epochs - 1
    raw["train"]["warmup_epochs"] = min(raw["train"]["warmup_epochs"], most)
    warmup = raw["space"].get("train.warmup_epochs")
    if isinstance(warmup, dict) and warmup.get("type") == "int":
        if most <= warmup["low"]:
            del raw["space"]["train.warmup_epochs"]
            raw["train"]["warmup_epochs"] = min(warmup["low"], most)
        else:
            warmup["high"] = min(warmup["high"], most)
    for b in raw["baselines"]:
        if "train.warmup_epochs" in b:
            b["train.warmup_epochs"] = min(b["train.warmup_epochs"], most)
    return _validate(raw, "--epochs")


def config_from_dict(raw: dict, source: str = "config") -> RunConfig:
    return _validate(copy.deepcopy(raw), source)


# Keys of each dataset alone: with another dataset they do nothing.
_DATASET_KEYS = {"synthetic": ("synthetic_classes", "synthetic_train_size", "synthetic_test_size"),
                 "glyphs": ("glyph_classes", "glyph_train_per_class", "glyph_test_per_class"),
                 "imagefolder": ("image_size", "image_cache_dir", "bad_images", "test_fraction", "resident_gb")}


def inactive_paths(config: RunConfig) -> dict[str, str]:
    """The dotted keys whose value does nothing in this config, each with why: a trial's run does not log
    them as parameters (an Adam trial showed `train.momentum = 0.9` as if it were used), its config.yaml says so."""
    out: dict[str, str] = {}
    t, a, d = config.train, config.augment, config.data
    if t.optimizer != "sgd":
        out["train.momentum"] = out["train.nesterov"] = f"sgd only (optimizer {t.optimizer})"
    if not a.crop:
        out.update({f"augment.{k}": "crop: false" for k in ("crop_padding", "crop_size", "ten_crop")})
    elif a.crop_size is not None:
        out["augment.crop_padding"] = "crop_size crops are not padded"
    for dataset, keys in _DATASET_KEYS.items():
        if d.dataset != dataset:
            out.update({f"data.{k}": f"{dataset} only" for k in keys})
    if not d.dataset.startswith("cifar"):
        out["data.download"] = "cifar only"
    values = config.flat()
    for path, entry in config.space.items():
        if active_branch(entry, values) is None:  # a `when` branch the sampled values left out
            out[path] = "its space entry's condition (when) is not met"
    return out


def dump_config(config: RunConfig, sampled: Optional[Iterable[str]] = None,
                inactive: Optional[dict[str, str]] = None) -> str:
    """The config as YAML, with passwords in storage and tracking URLs masked: fit to log and store. A trial's
    (`sampled`, `inactive` given) opens with which values were sampled and which do nothing; the rest are fixed."""
    text = yaml.safe_dump(config.model_dump(), sort_keys=False)
    if sampled is not None or inactive:
        head = [f"# set by the study (sampled, or a baseline's or repeat's values): "
                f"{', '.join(sorted(sampled or [])) or 'none'}"]
        head += [f"# inactive: {path} ({why})" for path, why in sorted((inactive or {}).items())]
        text = "\n".join(head + ["# every other value is fixed (the YAML's, or its default)", text])
    return redact_text(text)
