"""The optimiser and the learning-rate schedule of a run, by name."""
from __future__ import annotations

import torch

# OneCycleLR's share of the steps spent warming up (PyTorch's default, set here so that the pruner's warm-up,
# pruning.py, reads the same figure).
ONECYCLE_PCT_START = 0.3


def make_optimizer(params, name: str, lr: float, *, momentum: float, nesterov: bool, weight_decay: float,
                   fused: bool) -> torch.optim.Optimizer:
    extra = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                               **extra)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **extra)
    raise ValueError(f"unknown optimizer {name!r}; valid: sgd, adam, adamw")


class Schedule:
    """One interface over the LR schedules: `after_step()` each batch, `after_epoch(val_error)` each epoch."""

    def __init__(self, optimizer, name: str, epochs: int, steps_per_epoch: int, lr: float,
                 step_epochs: int = 10, lr_factor: float = 0.1, plateau_patience: int = 2):
        total = epochs * steps_per_epoch
        self.per_step = name in ("cosine", "onecycle")
        sched = torch.optim.lr_scheduler
        if name == "none":
            self.impl = None
        elif name == "step":
            self.impl = sched.StepLR(optimizer, step_size=step_epochs, gamma=lr_factor)
        elif name == "plateau":  # the paper: divide by 10 when validation error stops improving
            self.impl = sched.ReduceLROnPlateau(optimizer, mode="min", factor=lr_factor, patience=plateau_patience)
        elif name == "cosine":
            self.impl = sched.CosineAnnealingLR(optimizer, T_max=total)
        elif name == "onecycle":
            self.impl = sched.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=ONECYCLE_PCT_START)
        else:
            raise ValueError(f"unknown schedule {name!r}; valid: none, step, plateau, cosine, onecycle")
        self.name = name

    def after_step(self) -> None:
        if self.per_step:
            self.impl.step()

    def state_dict(self) -> dict:
        return self.impl.state_dict() if self.impl is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.impl is not None:
            self.impl.load_state_dict(state)

    def after_epoch(self, val_error: float) -> None:
        if self.name == "plateau":
            self.impl.step(val_error)
        elif self.impl is not None and not self.per_step:
            self.impl.step()
