"""The learning rate and the weight decay as unit-free scales of their optimiser's reference values.

Why: the rates that suit SGD and Adam lie two decades apart, so a space that samples `train.lr` needs a branch
per optimiser, and Optuna's multivariate TPE models a branch apart from every other parameter (its joint model
covers only the parameters every trial has). The couplings that decide AlexNet training (the rate with
batchnorm or not, with the batch size, Adam's rate with the input normalisation) were invisible to it. Sampled
as one unconditional `train.lr_scale`, the rate sits in the joint model beside `model.norm` and
`train.batch_size`; what trains, and what MLflow and the report show, is the rate it resolves to:

    lr = lr_reference[optimizer] x lr_scale x batch factor

where the batch factor follows the rule each optimiser's step obeys (`lr_batch_scaling`): `linear` for SGD
(batch_size / 256: the same progress per image, Goyal et al.'s rule), `sqrt` for Adam and AdamW
(sqrt(batch_size / 256): their steps are normalised by the gradient's scale, whose noise falls as the square
root of the batch), `none` to ignore the batch size. `weight_decay_scale` does the same for the decay (no batch
factor): L2 for SGD and Adam, decoupled for AdamW, whose useful range is a hundred times higher.

Pure arithmetic, no torch or pydantic: config.py resolves a section with it, space.py converts a baseline's
absolute rate into the scale that gives it.
"""
from __future__ import annotations

import math
from typing import Mapping

REFERENCE_BATCH = 256  # the batch size at which a reference rate applies as it is

# Rates at lr_scale 1 and batch 256: the paper's SGD 0.01 at batch 128 (momentum 0.9), and for Adam and AdamW
# the middle of their useful range on AlexNet-sized networks (1e-3, their default, is at its top without
# batchnorm; the CIFAR-100 notebook's Adam at 5e-3 never learned).
LR_REFERENCE = {"sgd": 0.02, "adam": 3e-4, "adamw": 3e-4}
LR_BATCH_SCALING = {"sgd": "linear", "adam": "sqrt", "adamw": "sqrt"}
# Decay at weight_decay_scale 1: the paper's 5e-4 as L2; AdamW's decoupled decay is multiplied by the rate, so
# the same effect takes about a hundred times more (its own default is 1e-2).
WEIGHT_DECAY_REFERENCE = {"sgd": 5e-4, "adam": 5e-4, "adamw": 5e-2}


# Each batch scaling by name: the factor a batch of `ratio` x REFERENCE_BATCH images puts on the rate.
BATCH_FACTORS = {"linear": lambda ratio: ratio, "sqrt": math.sqrt, "none": lambda ratio: 1.0}


def batch_factor(batch_size: int, scaling: str) -> float:
    if scaling not in BATCH_FACTORS:
        raise ValueError(f"unknown batch scaling {scaling!r}; valid: {', '.join(BATCH_FACTORS)}")
    return BATCH_FACTORS[scaling](batch_size / REFERENCE_BATCH)


def tidy(x: float) -> float:
    """12 significant digits, so that a rate and its scale convert back and forth exactly as written:
    0.1 x 0.4 x 0.125 is 0.005000000000000001 in floating point, and 0.005 / 0.0125 is 0.39999999999999997."""
    return float(f"{x:.12g}")


def scaled_lr(scale: float, optimizer: str, batch_size: int, reference: Mapping[str, float],
              scaling: Mapping[str, str]) -> float:
    """The learning rate that `lr_scale` = `scale` resolves to for this optimiser and batch size."""
    return tidy(reference[optimizer] * scale * batch_factor(batch_size, scaling[optimizer]))


def lr_scale_for(lr: float, optimizer: str, batch_size: int, reference: Mapping[str, float],
                 scaling: Mapping[str, str]) -> float:
    """The `lr_scale` that resolves to `lr` (a baseline written with an absolute rate)."""
    return tidy(lr / (reference[optimizer] * batch_factor(batch_size, scaling[optimizer])))


def scaled_weight_decay(scale: float, optimizer: str, reference: Mapping[str, float]) -> float:
    return tidy(reference[optimizer] * scale)


def weight_decay_scale_for(weight_decay: float, optimizer: str, reference: Mapping[str, float]) -> float:
    return tidy(weight_decay / reference[optimizer])
