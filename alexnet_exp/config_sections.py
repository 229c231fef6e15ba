"""The training sections of a config (`data`, `model`, `augment`, `train`): their schema, defaults and checks,
and `check_value`, which says whether one value validates at a dotted path. The search space (space_params.py)
and the whole file (config.py) are checked against these; nothing here knows of the sweep."""
from __future__ import annotations

import difflib
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from .choices import BATCH_SCALINGS, DATASETS, NORMALIZATIONS, OPTIMIZERS, SCHEDULES
from .rates import LR_BATCH_SCALING, LR_REFERENCE, WEIGHT_DECAY_REFERENCE, scaled_lr, scaled_weight_decay


class ConfigError(ValueError):
    """A configuration file or override is invalid. ``errors`` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} problem(s)\n" + "\n".join(f"  - {e}" for e in errors))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    dataset: Literal[DATASETS] = "synthetic"  # type: ignore[valid-type]
    # cifar: the folder holding cifar-10-batches-py/, cifar-100-python/ or their .tar.gz; imagefolder: the
    # folder of class folders (root/<class>/<image>), or of train/ with optional val/ and test/ beside it
    root: str = "data"
    download: bool = True  # fetch CIFAR with torchvision's downloader when missing
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # share of the training set held out for validation
    split_seed: int = 0  # seed of the stratified train/validation split
    max_train: Optional[int] = Field(None, ge=1)  # stratified subset of the training split (smoke runs)
    max_val: Optional[int] = Field(None, ge=1)  # stratified subset of the validation split
    synthetic_classes: int = Field(10, ge=2, le=1000)  # synthetic only: number of classes
    synthetic_train_size: int = Field(5000, ge=10)  # synthetic only: training images before the split
    synthetic_test_size: int = Field(1000, ge=10)  # synthetic only: held-out test images
    glyph_classes: int = Field(100, ge=2, le=100)  # glyphs only: number of classes (characters)
    glyph_train_per_class: int = Field(500, ge=2)  # glyphs only: images per class before the validation split
    glyph_test_per_class: int = Field(100, ge=1)  # glyphs only: held-out test images per class (other fonts)
    # imagefolder only: the side of the stored squares (shorter side resized to it, central square kept; the
    # paper: 256); the cache holds N x 3 x image_size^2 bytes
    image_size: int = Field(256, ge=16, le=1024)
    # imagefolder only: where the decoded cache goes (default: root/.alexnet_cache; the image folder may be read-only)
    image_cache_dir: Optional[str] = None
    # imagefolder only: a file that is not a readable image fails the build listing them all (error), or is left
    # out and counted (skip)
    bad_images: Literal["error", "skip"] = "error"
    # imagefolder without a test/ folder: the share of the images held out as the test split (stratified, with a
    # fixed seed, so every sweep on the folder tests on the same images)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # imagefolder only: the most GB of decoded images kept in the training device's memory; a larger cache is
    # streamed from its memory map (prefetched batches, bounded host memory). null: half the GPU's memory (half
    # the available RAM on the CPU); 0: always stream
    resident_gb: Optional[float] = Field(None, ge=0.0)


class ModelConfig(Section):
    arch: Literal["alexnet", "alexnet_cifar"] = "alexnet_cifar"  # alexnet = paper net at 227x227
    # lrn: after conv1/conv2 as in the paper; batchnorm: after every conv; conv1_batchnorm: after conv1 only (the
    # CIFAR-100 notebook's network)
    norm: Literal["lrn", "batchnorm", "conv1_batchnorm", "none"] = "lrn"
    groups: Literal[1, 2] = 1  # 2 reproduces the paper's two-GPU split with grouped convolutions
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    # fc_inputs: dropout on the inputs of the two hidden FC layers (paper, torchvision); fc_outputs: on their
    # outputs, after the ReLU (the CIFAR-100 notebook)
    dropout_at: Literal["fc_inputs", "fc_outputs"] = "fc_inputs"
    width: float = Field(1.0, gt=0.0, le=4.0)  # channel/unit multiplier; 0.25 makes CPU tests fast
    # paper: N(0, 0.01), bias 1 in conv2/4/5 and FC layers; kaiming: He-normal; pytorch: the layers' own default
    init: Literal["paper", "kaiming", "pytorch"] = "kaiming"
    # A ReLU on the logits: the CIFAR-100 notebook's bug (all logits <= 0 left its run 8 at loss ln 100 for good),
    # there only so that its replays train the network it trained; never sample it
    logit_relu: bool = False


class AugmentConfig(Section):
    crop: bool = True  # padded random crop at the stored resolution
    crop_padding: int = Field(4, ge=0, le=16)  # pixels of zero padding on each side before cropping
    flip: bool = True  # random horizontal flip, drawn per image
    pca_color: float = Field(0.0, ge=0.0, le=1.0)  # sigma of the paper's PCA colour noise (paper: 0.1); 0 = off
    # dataset: the training split's mean/std; cifar10_constants: the CIFAR-100 notebook's (0.4914, ...)/(0.2023, ...)
    normalize: Literal[NORMALIZATIONS] = "dataset"  # type: ignore[valid-type]
    input_size: Optional[int] = Field(None, ge=16, le=512)  # resize target; default: the architecture's own
    # resize to this side first, then to the input size (train and eval): the notebook's Resize(230), Resize(227)
    pre_resize: Optional[int] = Field(None, ge=16, le=512)
    # random crops of this side from the stored images, no padding (the paper: 224 of 256; crop_padding unused),
    # resized to the input size; evaluation on the central crop. null: the padded crop at the stored side
    crop_size: Optional[int] = Field(None, ge=8, le=1024)
    # evaluation (validation and test) on the paper's ten views: four corner crops and the central one of
    # crop_size, and their mirror images, softmax averaged. Ten times the evaluation cost
    ten_crop: bool = False

    # crop: false trains and evaluates on whole images, whatever crop_size and ten_crop say
    @property
    def eval_crop_size(self) -> Optional[int]:
        return self.crop_size if self.crop else None

    @property
    def ten_crop_on(self) -> bool:
        return self.ten_crop and self.eval_crop_size is not None

    @property
    def evaluation(self) -> str:
        """How validation and test figures are made, in words (the runs' `evaluation` tag, the report)."""
        if self.ten_crop_on:
            return f"ten crops of {self.crop_size} px (corners, centre, mirrored), softmax averaged"
        if self.eval_crop_size is not None:
            return f"the central crop of {self.crop_size} px"
        return "whole images"


_Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]


class TrainConfig(Section):
    optimizer: _Optimizer = "sgd"
    lr: float = Field(0.01, gt=0.0, le=10.0)  # peak learning rate; resolved from lr_scale when that is set
    # The rate as a unit-free multiple of its optimiser's reference (rates.py): lr = lr_reference[optimizer] x
    # lr_scale x batch factor. What a space samples, so that TPE models the rate jointly with the batch size and
    # the normalisation; null: train.lr as given. Set one of lr and lr_scale.
    lr_scale: Optional[float] = Field(None, gt=0.0, le=1000.0)
    lr_reference: dict[_Optimizer, PositiveFloat] = LR_REFERENCE  # rate at lr_scale 1 and batch 256, per optimiser
    # how each optimiser's reference rate follows batch_size / 256: linear, sqrt or none
    lr_batch_scaling: dict[_Optimizer, Literal[BATCH_SCALINGS]] = LR_BATCH_SCALING  # type: ignore[valid-type]
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd only; 0 reproduces the CIFAR-100 document
    nesterov: bool = False  # sgd only; needs momentum > 0
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)  # L2 (sgd/adam) or decoupled (adamw)
    # weight_decay = weight_decay_reference[optimizer] x weight_decay_scale when set (null: weight_decay as given)
    weight_decay_scale: Optional[float] = Field(None, ge=0.0, le=1000.0)
    weight_decay_reference: dict[_Optimizer, PositiveFloat] = WEIGHT_DECAY_REFERENCE
    batch_size: int = Field(128, ge=1, le=65536)
    epochs: int = Field(10, ge=1, le=10000)
    schedule: Literal[SCHEDULES] = "none"  # type: ignore[valid-type]
    # epochs of linear rise to the peak rate before the schedule (large batches and high rates without batchnorm
    # need one); onecycle rises by itself over 30% of its steps and takes 0
    warmup_epochs: int = Field(0, ge=0, le=1000)
    step_epochs: int = Field(10, ge=1)  # step: epochs between divisions
    lr_factor: float = Field(0.1, gt=0.0, lt=1.0)  # step/plateau: multiplier at each division (paper: 0.1)
    plateau_patience: int = Field(2, ge=0)  # plateau: epochs without validation-error improvement
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0  # model init, shuffling and augmentation
    device: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps
    eval_batch_size: int = Field(1024, ge=1)
    stall_epochs: int = Field(3, ge=1)  # epochs at chance before a run is ended as `stalled`
    loss_every_steps: int = Field(10, ge=1)  # sample the per-step training loss every N steps
    compile: bool = False  # torch.compile the model (CUDA only; pays off on long trials)

    @model_validator(mode="before")
    @classmethod
    def _resolve_scales(cls, data: Any) -> Any:
        """lr and weight_decay from their scales, before the fields are checked (so that a resolved rate is
        checked like a given one). Partial reference tables keep the defaults of the optimisers they leave out."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("lr_reference", "lr_batch_scaling", "weight_decay_reference"):
            if isinstance(data.get(key), dict):
                data[key] = {**cls.model_fields[key].default, **data[key]}
        get = lambda key: data.get(key, cls.model_fields[key].default)  # noqa: E731
        try:
            if data.get("lr_scale") is not None:
                data["lr"] = scaled_lr(float(get("lr_scale")), get("optimizer"), int(get("batch_size")),
                                       get("lr_reference"), get("lr_batch_scaling"))
            if data.get("weight_decay_scale") is not None:
                data["weight_decay"] = scaled_weight_decay(float(get("weight_decay_scale")), get("optimizer"),
                                                           get("weight_decay_reference"))
        except (TypeError, ValueError, KeyError):
            pass  # a value that is not what its field takes: the field's own check names it
        for key, scale, limit in (("lr", "lr_scale", 10.0), ("weight_decay", "weight_decay_scale", 1.0)):
            if data.get(scale) is not None and isinstance(data.get(key), float) and data[key] > limit:
                raise ValueError(f"{scale} {data[scale]:g} resolves to {key} {data[key]:.4g} for "
                                 f"{get('optimizer')} at batch {get('batch_size')}, above {limit:g}; lower it")
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0 (set train.momentum or nesterov: false)")
        if self.warmup_epochs and self.schedule == "onecycle":
            raise ValueError("warmup_epochs: onecycle rises to its peak by itself (30% of its steps); set "
                             "warmup_epochs: 0 for it (in a space: `when: {train.schedule: [...]}` without onecycle)")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")
        if self.device != "auto" and not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        return self


class ReportedFigures(Section):
    """What a baseline's source document reported for it (`baselines[i].reported`), shown beside the replay."""

    accuracy: Optional[float] = Field(None, ge=0.0, le=1.0)
    macro_f1: Optional[float] = Field(None, ge=0.0, le=1.0)
    split: Literal["test", "validation", "train"] = "test"  # where the document measured it
    epoch: Optional[int] = Field(None, ge=1)  # after which epoch
    source: str = ""  # the document (and run) the figures come from
    note: str = ""  # how to read them (a stopped run, a miscounted denominator)


TRAINING_SECTIONS = ("data", "model", "augment", "train")
SECTION_TYPES: dict[str, type[BaseModel]] = {"data": DataConfig, "model": ModelConfig, "augment": AugmentConfig,
                                             "train": TrainConfig}


def suggest_key(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(path: str, value: Any) -> Optional[str]:
    """Does `value` validate at the dotted training-config `path`? Returns the problem or None."""
    section, _, key = path.partition(".")
    model_type = SECTION_TYPES.get(section)
    if model_type is None or key not in model_type.model_fields:
        options = [f"{s}.{k}" for s, t in SECTION_TYPES.items() for k in t.model_fields]
        return f"{path!r} is not a training parameter{suggest_key(path, options)}"
    try:
        model_type.model_validate({key: value})
    except ValidationError as exc:
        return exc.errors()[0]["msg"].removeprefix("Value error, ") + f" (got {value!r})"
    return None


