"""The AlexNet variants' geometry: layer shapes and input sizes, as plain arithmetic (no torch).

`model.py` builds the networks from it; `config.py` uses it to refuse, before anything runs, an input size
whose feature map would vanish inside the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

ARCH_INPUT_SIZE = {"alexnet": 227, "alexnet_cifar": 32}  # each network's own input side, in pixels
MAX_INPUT_SIZE = 512


@dataclass(frozen=True)
class ConvSpec:
    out: int
    kernel: int
    stride: int
    padding: int
    grouped: bool  # follows the paper's two-GPU split when groups=2
    lrn: bool  # LRN after the ReLU (when norm=lrn)
    pool: bool  # overlapping max-pool 3/2 after it
    bias_one: bool  # paper init: bias 1


# conv2, conv4 and conv5 see only the kernel maps on their own GPU in the paper; conv3 and the FC layers see all.
ARCHS = {
    "alexnet": ([ConvSpec(96, 11, 4, 0, False, True, True, False),
                 ConvSpec(256, 5, 1, 2, True, True, True, True),
                 ConvSpec(384, 3, 1, 1, False, False, False, False),
                 ConvSpec(384, 3, 1, 1, True, False, False, True),
                 ConvSpec(256, 3, 1, 1, True, False, True, True)], 4096),
    # The reduced CIFAR network of the first document (7x7 then 5x5 with LRN and pooling), with AlexNet's five
    # convolutions and a 2048-unit head: 32 -> 30 -> 14 -> 14 -> 6 -> 6 -> 2.
    "alexnet_cifar": ([ConvSpec(48, 7, 1, 2, False, True, True, False),
                       ConvSpec(128, 5, 1, 2, True, True, True, True),
                       ConvSpec(192, 3, 1, 1, False, False, False, False),
                       ConvSpec(192, 3, 1, 1, True, False, False, True),
                       ConvSpec(128, 3, 1, 1, True, False, True, True)], 2048),
}


def scaled_channels(n: int, width: float, groups: int) -> int:
    """Channel count times the width multiplier, rounded to a multiple of `groups`."""
    return max(groups, int(round(n * width / groups)) * groups)


def _side(size: int, specs: list[ConvSpec]) -> int:
    for s in specs:
        size = (size + 2 * s.padding - s.kernel) // s.stride + 1
        if s.pool:
            size = (size - 3) // 2 + 1
        if size < 1:
            return 0
    return size


def spatial_size(size: int, specs: list[ConvSpec]) -> int:
    """Side of the last feature map for a `size` x `size` input."""
    side = _side(size, specs)
    if side < 1:
        raise ValueError(f"input size {size} too small for this architecture (feature map vanished)")
    return side


@lru_cache(maxsize=None)
def min_input_size(arch: str) -> int:
    """The smallest input side whose feature map survives every layer of `arch`."""
    specs, _ = ARCHS[arch]
    return next(s for s in range(1, MAX_INPUT_SIZE + 1) if _side(s, specs) >= 1)


def input_size_problem(arch: str, input_size: Optional[int]) -> Optional[str]:
    """Why `input_size` cannot work with `arch`, or None when it can (None means the arch's own size)."""
    if input_size is None or arch not in ARCHS:
        return None
    smallest = min_input_size(arch)
    if input_size < smallest:
        return (f"{input_size} px is too small for model.arch {arch} (its feature map vanishes below "
                f"{smallest} px); use at least {smallest}, or leave augment.input_size unset for its "
                f"{ARCH_INPUT_SIZE[arch]} px")
    return None
