"""Augmentation and input normalisation as batched tensor ops on the training device.

Every random choice is drawn per image from a `torch.Generator`, so a seed fixes the whole stream. Crops and
flips run on uint8 at the stored resolution (cheap); colour noise, resizing and normalisation in float.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10's per-channel mean and the std constants copied widely from one tutorial (0.2023... is not CIFAR-10's
# pixel std, 0.247...): what the CIFAR-100 notebook normalised with.
CIFAR10_CONSTANTS_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_CONSTANTS_STD = (0.2023, 0.1994, 0.2010)
# Each input normalisation by name: the (mean, std) it takes, from the training split's stats or fixed;
# `none` leaves the pixels in [0, 1].
NORMALIZATIONS = {
    "none": lambda stats: (torch.zeros(3), torch.ones(3)),
    "dataset": lambda stats: (stats.mean, stats.std),
    "imagenet": lambda stats: (torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)),
    "cifar10_constants": lambda stats: (torch.tensor(CIFAR10_CONSTANTS_MEAN), torch.tensor(CIFAR10_CONSTANTS_STD)),
}


@dataclass(frozen=True)
class ColorStats:
    """Per-channel statistics of a training split, pixels scaled to [0, 1]."""

    mean: torch.Tensor  # (3,)
    std: torch.Tensor  # (3,)
    eigvals: torch.Tensor  # (3,) of the RGB covariance, ascending
    eigvecs: torch.Tensor  # (3, 3), columns are eigenvectors


STATS_MAX_IMAGES = 50_000  # more adds nothing to 3 means and a 3x3 covariance, and ImageNet has 1.28M


def color_stats(images, max_images: int = STATS_MAX_IMAGES, chunk: Optional[int] = None) -> ColorStats:
    """Mean, std and RGB principal components of uint8 images (N, 3, H, W), accumulated in float64 chunks of
    `chunk` images (default: about 16M values, 128 MB); over `max_images` evenly spaced images when there are
    more (resident or streamed alike: the same stats)."""
    n = len(images)
    chunk = chunk or max(1, (1 << 24) // max(1, int(np.prod(images.shape[1:]))))
    picked = None if n <= max_images else torch.linspace(0, n - 1, max_images).round().long()
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    outer = torch.zeros(3, 3, dtype=torch.float64, device=images.device)
    count = 0
    for start in range(0, n if picked is None else len(picked), chunk):
        batch = images[start:start + chunk] if picked is None else images[picked[start:start + chunk]]
        px = batch.to(torch.float64).div_(255).permute(1, 0, 2, 3).reshape(3, -1)
        total += px.sum(dim=1)
        outer += px @ px.T
        count += px.shape[1]
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    std = cov.diagonal().clamp_min(1e-12).sqrt()
    return ColorStats(mean.float(), std.float(), eigvals.clamp_min(0).float(), eigvecs.float())


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` and cut a crop of the original size at an independent offset per image."""
    if padding == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    rows = (torch.arange(h, device=images.device)[None] + dy[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w, device=images.device)[None] + dx[:, None])[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_sized_crop(images: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """A `side` x `side` crop at an independent offset per image, no padding: the paper's 224 of 256."""
    b, _, h, w = images.shape
    dy = torch.randint(0, h - side + 1, (b,), device=images.device, generator=generator)
    dx = torch.randint(0, w - side + 1, (b,), device=images.device, generator=generator)
    rows = (torch.arange(side, device=images.device)[None] + dy[:, None])[:, :, None]
    cols = (torch.arange(side, device=images.device)[None] + dx[:, None])[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def center_crop(images: torch.Tensor, side: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top:top + side, left:left + side]


def ten_crops(images: torch.Tensor, side: int) -> list[torch.Tensor]:
    """The paper's test-time views: the four corner crops and the central one, and their mirror images."""
    h, w = images.shape[-2:]
    corners = [images[..., :side, :side], images[..., :side, w - side:], images[..., h - side:, :side],
               images[..., h - side:, w - side:], center_crop(images, side)]
    return corners + [c.flip(-1) for c in corners]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2, drawn per image."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def pca_color(images: torch.Tensor, stats: ColorStats, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """The paper's colour augmentation: add sum_i alpha_i * lambda_i * p_i to every pixel, alpha ~ N(0, sigma)
    drawn per image. `images` are floats in [0, 1]."""
    alpha = torch.randn(images.shape[0], 3, device=images.device, generator=generator) * sigma
    shift = (alpha * stats.eigvals.to(images.device)) @ stats.eigvecs.to(images.device).T  # (B, 3)
    return images + shift[:, :, None, None]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased when shrinking, as torchvision's Resize of a PIL image."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)


class BatchAugmenter:
    """Turns uint8 batches into model inputs: augmented for training, resized and normalised only for eval."""

    def __init__(self, *, stats: ColorStats, input_size: int, crop_padding: int = 4, flip: bool = True,
                 pca_sigma: float = 0.0, normalize: str = "dataset", pre_resize: Optional[int] = None,
                 crop_size: Optional[int] = None, ten_crop: bool = False):
        """`crop_size`: train on random crops of that side (no padding), evaluate on the central one, or with
        `ten_crop` on the paper's ten views; None: the padded crop (`crop_padding`) at the stored side."""
        if ten_crop and crop_size is None:
            raise ValueError("ten_crop needs a crop_size smaller than the stored images")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize={normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
        self.stats = stats
        self.input_size = input_size
        self.crop_padding = crop_padding
        self.flip = flip
        self.pca_sigma = pca_sigma
        self.normalize = normalize
        self.pre_resize = pre_resize
        self.crop_size = crop_size
        self.ten_crop = ten_crop
        mean, std = NORMALIZATIONS[normalize](stats)
        self._mean = mean.view(1, 3, 1, 1)
        self._std = std.view(1, 3, 1, 1)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_resize is not None:  # the notebook's Resize(230) then Resize(227): two resizes, no crop
            x = _resize(x, self.pre_resize)
        x = _resize(x, self.input_size)
        if self.normalize != "none":
            x = (x - self._mean.to(x.device)) / self._std.to(x.device)
        return x

    def train(self, images: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if self.crop_size is not None:
            images = random_sized_crop(images, self.crop_size, generator)
        elif self.crop_padding:
            images = random_crop(images, self.crop_padding, generator)
        if self.flip:
            images = random_flip(images, generator)
        x = images.float().div_(255)
        if self.pca_sigma > 0:
            x = pca_color(x, self.stats, self.pca_sigma, generator)
        return self._finish(x)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """The one view evaluated without `ten_crop`: the central crop, or the whole stored image."""
        if self.crop_size is not None:
            images = center_crop(images, self.crop_size)
        return self._finish(images.float().div_(255))

    def eval_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every view whose predictions evaluation averages: ten with `ten_crop`, else the one of `eval`."""
        if not self.ten_crop:
            return [self.eval(images)]
        return [self._finish(view.float().div_(255)) for view in ten_crops(images, self.crop_size)]
