"""The optimiser and the learning-rate schedule of a run, by name."""
from __future__ import annotations

import math

import torch

# OneCycleLR's share of the steps spent warming up (PyTorch's default, set here so that the pruner's warm-up,
# pruning.py, reads the same figure).
ONECYCLE_PCT_START = 0.3
# Each optimiser by name, with the settings only it takes (momentum and Nesterov: SGD's; Adam's betas stay
# PyTorch's defaults).
OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
_MOMENTUM_TAKERS = ("sgd",)


def make_optimizer(params, name: str, lr: float, *, momentum: float, nesterov: bool, weight_decay: float,
                   fused: bool) -> torch.optim.Optimizer:
    if name not in OPTIMIZER_CLASSES:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZER_CLASSES)}")
    extra = {"fused": True} if fused else {}
    if name in _MOMENTUM_TAKERS:
        extra.update(momentum=momentum, nesterov=nesterov)
    return OPTIMIZER_CLASSES[name](params, lr=lr, weight_decay=weight_decay, **extra)


def _warmed_up(factor, warmup_steps: int):
    """`factor(step)` after a linear warm-up: step k of the first `warmup_steps` trains at (k+1)/warmup_steps
    of the rate (never at 0: the first batch moves the weights too)."""
    def with_warmup(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return factor(step - warmup_steps)
    return with_warmup


def _reduce_on_plateau(optimizer, *, lr_factor, plateau_patience, **_):
    # the paper: divide by 10 when the validation error stops improving
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=lr_factor,
                                                      patience=plateau_patience)


# Each schedule by name, without a warm-up (Schedule builds the warmed-up ones): its PyTorch scheduler, or None.
_SCHEDULES = {
    "none": lambda optimizer, **_: None,
    "step": lambda optimizer, *, step_epochs, lr_factor, **_: torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=step_epochs, gamma=lr_factor),
    "plateau": _reduce_on_plateau,
    "cosine": lambda optimizer, *, total, **_: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total),
    "onecycle": lambda optimizer, *, total, lr, **_: torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total, pct_start=ONECYCLE_PCT_START, cycle_momentum=False),
}


class Schedule:
    """One interface over the LR schedules: `after_step()` each batch, `after_epoch(val_error)` each epoch.

    Only the learning rate is scheduled: OneCycleLR's default also cycles SGD's momentum (0.95 -> 0.85 -> 0.95)
    and Adam's beta1, which overwrote a sampled momentum from the moment the schedule was built, so a sweep
    credited momentum with effects it could not have. `warmup_epochs` rises linearly to the peak rate over its
    first epochs, then the schedule runs over the epochs left (cosine anneals over them, step and plateau divide
    after them); onecycle has its own rise (30% of its steps) and takes none.
    """

    def __init__(self, optimizer, name: str, epochs: int, steps_per_epoch: int, lr: float,
                 step_epochs: int = 10, lr_factor: float = 0.1, plateau_patience: int = 2, warmup_epochs: int = 0):
        if name not in _SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(_SCHEDULES)}")
        if warmup_epochs and name == "onecycle":
            raise ValueError("onecycle warms up by itself (30% of its steps): warmup_epochs must be 0")
        if warmup_epochs >= epochs and warmup_epochs:
            raise ValueError(f"warmup_epochs ({warmup_epochs}) must be fewer than the run's epochs ({epochs})")
        self.name = name
        self.warmup_steps = warmup_epochs * steps_per_epoch
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler
        self.plateau = None
        if self.warmup_steps:
            # One per-step multiplier of the peak rate: the warm-up, then the schedule over the remaining steps.
            after = total - self.warmup_steps
            factors = {
                "none": lambda s: 1.0,
                "plateau": lambda s: 1.0,  # divided by ReduceLROnPlateau once warmed up
                "step": lambda s: lr_factor ** (s // (step_epochs * steps_per_epoch)),
                "cosine": lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, after) / after)),
            }
            self.impl = sched.LambdaLR(optimizer, _warmed_up(factors[name], self.warmup_steps))
            self.per_step = True
            if name == "plateau":
                self.plateau = _reduce_on_plateau(optimizer, lr_factor=lr_factor, plateau_patience=plateau_patience)
            return
        self.per_step = name in ("cosine", "onecycle")
        self.impl = _SCHEDULES[name](optimizer, total=total, lr=lr, step_epochs=step_epochs, lr_factor=lr_factor,
                                     plateau_patience=plateau_patience)

    @property
    def warming_up(self) -> bool:
        # LambdaLR counts its steps in last_epoch; with plateau it stops stepping at the end of the warm-up
        return self.warmup_steps > 0 and self.impl.last_epoch < self.warmup_steps

    def after_step(self) -> None:
        # With a warm-up before plateau, the multiplier stops at the end of the warm-up: from then on the
        # rate is ReduceLROnPlateau's to divide.
        if self.per_step and (self.plateau is None or self.warming_up):
            self.impl.step()

    def state_dict(self) -> dict:
        state = self.impl.state_dict() if self.impl is not None else {}
        if self.warmup_steps:
            state = {"warmup": state, "plateau": self.plateau.state_dict() if self.plateau is not None else None}
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.warmup_steps:
            self.impl.load_state_dict(state["warmup"])
            if self.plateau is not None:
                self.plateau.load_state_dict(state["plateau"])
        elif self.impl is not None:
            self.impl.load_state_dict(state)

    def after_epoch(self, val_error: float) -> None:
        if self.name == "plateau":
            if not self.warming_up:
                (self.plateau or self.impl).step(val_error)
        elif self.impl is not None and not self.per_step:
            self.impl.step()
