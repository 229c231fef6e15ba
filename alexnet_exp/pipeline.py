"""From validated config sections to the parts of a run: data on the device, augmenter, model, fit.

Shared by the single-run CLI and the sweep's workers. A `DataCache` keeps datasets and their colour statistics
in memory so that a worker loads each dataset once, whatever number of trials it runs.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .augment import BatchAugmenter, ColorStats, color_stats
from .config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import ImageData, load_dataset
from .architecture import ARCH_INPUT_SIZE
from .model import AlexNet, build_model
from .train import EpochMetrics, FitResult, fit

FIT_KEYS = tuple(k for k in TrainConfig.model_fields if k != "device")


class DataCache:
    """Datasets on one device, keyed by their data config, each with its training split's colour stats."""

    def __init__(self, device: torch.device):
        self.device = device
        self._cache: dict[DataConfig, tuple[ImageData, ColorStats]] = {}

    def get(self, cfg: DataConfig) -> tuple[ImageData, ColorStats]:
        if cfg not in self._cache:
            data = load_dataset(**cfg.model_dump()).to(self.device)
            self._cache[cfg] = (data, color_stats(data.train_x))
        return self._cache[cfg]


def input_size(model_cfg: ModelConfig, augment_cfg: AugmentConfig) -> int:
    return augment_cfg.input_size or ARCH_INPUT_SIZE[model_cfg.arch]


def make_augmenter(cfg: AugmentConfig, stats: ColorStats, size: int) -> BatchAugmenter:
    return BatchAugmenter(stats=stats, input_size=size, crop_padding=cfg.crop_padding if cfg.crop else 0,
                          flip=cfg.flip, pca_sigma=cfg.pca_color, normalize=cfg.normalize)


def make_model(cfg: ModelConfig, num_classes: int, size: int, seed: int,
               device: torch.device = torch.device("cpu")) -> AlexNet:
    torch.manual_seed(seed)  # the same seed gives the same initial weights (per device type)
    with device:  # initialise where it trains: the paper net's 60M weights take 0.65 s on a 2-core CPU
        return build_model(cfg.arch, num_classes, norm=cfg.norm, groups=cfg.groups, dropout=cfg.dropout,
                           width=cfg.width, init=cfg.init, input_size=size)


def train_run(config: RunConfig, cache: DataCache, on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
              on_batch: Optional[Callable[[int, int], None]] = None,
              on_checkpoint: Optional[Callable[[dict], None]] = None,
              resume: Optional[dict] = None) -> tuple[AlexNet, FitResult]:
    data, stats = cache.get(config.data)
    size = input_size(config.model, config.augment)
    augmenter = make_augmenter(config.augment, stats, size)
    model = make_model(config.model, data.num_classes, size, config.train.seed, data.train_x.device)
    hp = {k: getattr(config.train, k) for k in FIT_KEYS}
    result = fit(model, data.train_x, data.train_y, data.val_x, data.val_y, augmenter, data.num_classes,
                 on_epoch=on_epoch, on_batch=on_batch, on_checkpoint=on_checkpoint, resume=resume, **hp)
    return model, result
