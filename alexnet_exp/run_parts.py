"""From validated config sections to the parts of a run: data on the device, augmenter, model, fit, evaluation.

One explicit adapter per section (`dataset_kwargs`, `make_augmenter`, `make_model`, `fit_settings`) names every
key it passes on, so that a config key reaches the core only where it is wired, and a new key that is not
wired fails the tests (tests/test_run_parts.py) instead of being dropped or passed on by name.

Shared by the single-run CLI and the sweep's workers. A `DataCache` keeps datasets and their colour statistics
in memory so that a worker loads each dataset once, whatever number of trials it runs.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .architecture import ARCH_INPUT_SIZE
from .augment import BatchAugmenter, ColorStats, color_stats
from .config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import ImageData, load_dataset
from .model import AlexNet, build_model
from .train import EpochMetrics, EvalResult, FitResult, FitSettings, evaluate, fit


def dataset_kwargs(cfg: DataConfig) -> dict:
    """`load_dataset`'s arguments from the `data:` section."""
    return dict(dataset=cfg.dataset, root=cfg.root, download=cfg.download, val_fraction=cfg.val_fraction,
                split_seed=cfg.split_seed, max_train=cfg.max_train, max_val=cfg.max_val,
                synthetic_classes=cfg.synthetic_classes, synthetic_train_size=cfg.synthetic_train_size,
                synthetic_test_size=cfg.synthetic_test_size, glyph_classes=cfg.glyph_classes,
                glyph_train_per_class=cfg.glyph_train_per_class, glyph_test_per_class=cfg.glyph_test_per_class,
                image_size=cfg.image_size, image_cache_dir=cfg.image_cache_dir, bad_images=cfg.bad_images,
                test_fraction=cfg.test_fraction, resident_gb=cfg.resident_gb)


# Keys of the `train:` section that reach `fit` through the value they resolve (config.py, rates.py).
RESOLVED_TRAIN_KEYS = {"lr_scale": "lr", "lr_reference": "lr", "lr_batch_scaling": "lr",
                       "weight_decay_scale": "weight_decay", "weight_decay_reference": "weight_decay"}


def fit_settings(cfg: TrainConfig) -> FitSettings:
    """`fit`'s settings from the `train:` section; `device` is not among them: the data is moved there first.
    The scales and their references arrive resolved, in `lr` and `weight_decay`."""
    return FitSettings(optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                       weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, epochs=cfg.epochs,
                       schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs, step_epochs=cfg.step_epochs,
                       lr_factor=cfg.lr_factor,
                       plateau_patience=cfg.plateau_patience, label_smoothing=cfg.label_smoothing, seed=cfg.seed,
                       eval_batch_size=cfg.eval_batch_size, stall_epochs=cfg.stall_epochs,
                       loss_every_steps=cfg.loss_every_steps, compile=cfg.compile)


class DataCache:
    """Datasets on one device, keyed by their data config, each with its training split's colour stats."""

    def __init__(self, device: torch.device):
        self.device = device
        self._cache: dict[DataConfig, tuple[ImageData, ColorStats]] = {}

    def get(self, cfg: DataConfig) -> tuple[ImageData, ColorStats]:
        if cfg not in self._cache:
            data = load_dataset(**dataset_kwargs(cfg), device=self.device).to(self.device)
            self._cache[cfg] = (data, color_stats(data.train_x))
        return self._cache[cfg]

    def __len__(self) -> int:
        return len(self._cache)

    def release(self) -> None:
        """Let every dataset go, device memory included; a later `get` loads it again."""
        self._cache.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def input_size(model_cfg: ModelConfig, augment_cfg: AugmentConfig) -> int:
    return augment_cfg.input_size or ARCH_INPUT_SIZE[model_cfg.arch]


def make_augmenter(cfg: AugmentConfig, stats: ColorStats, size: int) -> BatchAugmenter:
    return BatchAugmenter(stats=stats, input_size=size, crop_padding=cfg.crop_padding if cfg.crop else 0,
                          flip=cfg.flip, pca_sigma=cfg.pca_color, normalize=cfg.normalize,
                          pre_resize=cfg.pre_resize, crop_size=cfg.eval_crop_size, ten_crop=cfg.ten_crop_on)


def make_model(cfg: ModelConfig, num_classes: int, size: int, seed: int,
               device: torch.device = torch.device("cpu")) -> AlexNet:
    torch.manual_seed(seed)  # the same seed gives the same initial weights (per device type)
    with device:  # initialise where it trains: the paper net's 60M weights take 0.65 s on a 2-core CPU
        return build_model(cfg.arch, num_classes, norm=cfg.norm, groups=cfg.groups, dropout=cfg.dropout,
                           width=cfg.width, init=cfg.init, input_size=size, dropout_at=cfg.dropout_at,
                           logit_relu=cfg.logit_relu)


@dataclass
class RunParts:
    """What one configuration trains or evaluates: its data (from the cache), augmenter and freshly built model."""
    data: ImageData
    augmenter: BatchAugmenter
    model: AlexNet


def build_parts(config: RunConfig, cache: DataCache) -> RunParts:
    """The one place a run's parts are made from its config, for training and for every evaluation."""
    data, stats = cache.get(config.data)
    size = input_size(config.model, config.augment)
    return RunParts(data, make_augmenter(config.augment, stats, size),
                    make_model(config.model, data.num_classes, size, config.train.seed, data.train_x.device))


def evaluate_split(parts: RunParts, split: str, batch_size: int) -> EvalResult:
    """The model's figures on one split (`train`, `val` or `test`) with the evaluation transform."""
    images, labels = parts.data.split(split)
    return evaluate(parts.model, images, labels, parts.augmenter, parts.data.num_classes, batch_size)


def evaluate_weights(config: RunConfig, cache: DataCache, weights: Path,
                     split: str = "test") -> tuple[RunParts, EvalResult]:
    """Saved weights of `config`'s model evaluated on one split (the test split: only ever for the chosen best)."""
    parts = build_parts(config, cache)
    parts.model.load_state_dict(torch.load(weights, map_location=parts.data.train_x.device, weights_only=True))
    return parts, evaluate_split(parts, split, config.train.eval_batch_size)


def train_run(config: RunConfig, cache: DataCache, on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
              on_batch: Optional[Callable[[int, int], None]] = None,
              on_checkpoint: Optional[Callable[[dict], None]] = None,
              resume: Optional[dict] = None) -> tuple[RunParts, FitResult]:
    parts = build_parts(config, cache)
    data = parts.data
    result = fit(parts.model, data.train_x, data.train_y, data.val_x, data.val_y, parts.augmenter, data.num_classes,
                 fit_settings(config.train), on_epoch=on_epoch, on_batch=on_batch, on_checkpoint=on_checkpoint,
                 resume=resume)
    return parts, result
