"""Fit and evaluate one model. Knows nothing of Optuna or MLflow: it reports each epoch through a callback,
which may raise to stop the run (the sweep raises `optuna.TrialPruned` there).

`python -m alexnet_exp.train CONFIG.yaml [--set key=value ...]` trains one configuration (see single_run.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import BatchAugmenter
from .host_memory import keep_freed_memory
from .metrics import PerClass, accuracy, confusion_matrix, macro_f1, per_class

# A run is "at chance" when its validation loss is within this fraction of ln(C) and its validation accuracy
# at most this multiple of 1/C. The CIFAR-100 notebook's dead runs sat at loss 4.6052 (ln 100 = 4.6052) with
# 1-2% accuracy.
STALL_LOSS_TOLERANCE = 0.01
STALL_ACCURACY_FACTOR = 2.5


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    epoch_seconds: float  # training + validation
    images_per_second: float  # training images / training seconds
    step_losses: list[tuple[int, float]] = field(default_factory=list)  # (global step, loss), sampled

    def scalars(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if k not in ("epoch", "step_losses")}


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    macro_f1: float
    confusion: torch.Tensor  # (C, C) on the CPU
    per_class: PerClass


@dataclass
class FitResult:
    status: str  # completed | diverged | stalled
    reason: str
    history: list[EpochMetrics]
    last_eval: Optional[EvalResult] = None  # the last epoch's validation pass, confusion matrix included

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def final(self) -> Optional[EpochMetrics]:
        return self.history[-1] if self.history else None


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here; use device: auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available here; use device: auto or cpu")
    return device


def make_optimizer(params, name: str, lr: float, momentum: float = 0.0, nesterov: bool = False,
                   weight_decay: float = 0.0, fused: bool = False) -> torch.optim.Optimizer:
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
            self.impl = sched.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
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


def _channels_last(device: torch.device) -> bool:
    # The layout cuDNN's and oneDNN's convolution kernels prefer (about 3% on a 2-core CPU).
    return device.type in ("cuda", "cpu")


def _autocast(device: torch.device):
    # bf16 on CUDA: same exponent range as fp32, so no loss scaling is needed.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, augmenter: BatchAugmenter,
             num_classes: int, batch_size: int = 1024) -> EvalResult:
    """Loss, accuracy, macro-F1, confusion matrix and per-class metrics of `model` on one split."""
    model.eval()
    device = images.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    channels_last = _channels_last(device)
    for start in range(0, len(labels), batch_size):
        x = augmenter.eval(images[start:start + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[start:start + batch_size]
        with _autocast(device):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        confusion += confusion_matrix(y, logits.argmax(dim=1), num_classes)
    n = max(len(labels), 1)
    cm = confusion.cpu()
    return EvalResult(float(loss_sum) / n, accuracy(cm), macro_f1(cm), cm, per_class(cm))


def at_chance(val_loss: float, val_accuracy: float, num_classes: int) -> bool:
    chance_loss = math.log(num_classes)
    return (abs(val_loss - chance_loss) <= STALL_LOSS_TOLERANCE * chance_loss
            and val_accuracy <= STALL_ACCURACY_FACTOR / num_classes)


def fit(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
        val_y: torch.Tensor, augmenter: BatchAugmenter, num_classes: int, *, optimizer: str = "sgd",
        lr: float = 0.01, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 5e-4,
        batch_size: int = 128, epochs: int = 10, schedule: str = "none", step_epochs: int = 10,
        lr_factor: float = 0.1, plateau_patience: int = 2, label_smoothing: float = 0.0, seed: int = 0,
        eval_batch_size: int = 1024, stall_epochs: int = 3, loss_every_steps: int = 10,
        compile: bool = False, on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
        on_batch: Optional[Callable[[int, int], None]] = None,
        on_checkpoint: Optional[Callable[[dict], None]] = None, resume: Optional[dict] = None) -> FitResult:
    """Train `model` on uint8 images held on the training device; validate after every epoch.

    Ends early with status `diverged` (non-finite loss) or `stalled` (at chance for `stall_epochs` epochs).
    `on_epoch` gets each epoch's metrics and may raise to stop; `on_batch(step, steps_per_epoch)` drives a
    progress bar. The loss is read back from the device once per epoch, not per step.
    `on_checkpoint` gets the full training state after each epoch (model, optimiser, schedule, RNG, history:
    tensors and plain types only); passing such a state as `resume` continues from the epoch after it, with
    the same results as an uninterrupted run.
    On the CPU, glibc's malloc is told to keep freed memory, process-wide (see host_memory.py).
    """
    device = train_x.device
    if device.type == "cpu":
        keep_freed_memory()  # otherwise every step's activations are page-faulted in afresh (host_memory.py)
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    channels_last = _channels_last(device)
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    step_model = torch.compile(model) if compile and device.type == "cuda" else model
    opt = make_optimizer(model.parameters(), optimizer, lr, momentum if optimizer == "sgd" else 0.0,
                         nesterov and optimizer == "sgd", weight_decay, fused=device.type == "cuda")
    n = len(train_y)
    # A trailing batch of one breaks BatchNorm in training mode; drop it (its image is drawn next epoch).
    steps_per_epoch = n // batch_size + (1 if n % batch_size > 1 else 0)
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} leaves no training batch of 2+ images from {n} images")
    sched = Schedule(opt, schedule, epochs, steps_per_epoch, lr, step_epochs, lr_factor, plateau_patience)
    history: list[EpochMetrics] = []
    stalled_for = 0
    global_step = 0
    first_epoch = 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["schedule"])
        torch.set_rng_state(resume["rng_cpu"])
        generator.set_state(resume["rng_generator"].to(generator.get_state().device))
        if device.type == "cuda" and resume.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(resume["rng_cuda"], device)
        history = [EpochMetrics(**m) for m in resume["history"]]
        stalled_for, global_step = resume["stalled_for"], resume["global_step"]
        first_epoch = resume["epoch"] + 1
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(n, device=device, generator=generator)
        loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        sampled: list[tuple[int, torch.Tensor]] = []
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = augmenter.train(train_x[idx], generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_y[idx]
            with _autocast(device):
                logits = step_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.after_step()
            loss_sum += loss.detach() * len(idx)
            global_step += 1
            if global_step % loss_every_steps == 0 or step == 0:
                sampled.append((global_step, loss.detach()))
            if on_batch is not None:
                on_batch(step + 1, steps_per_epoch)
        train_loss = float(loss_sum) / min(n, steps_per_epoch * batch_size)  # the one sync per epoch
        train_seconds = time.perf_counter() - started
        lr_now = opt.param_groups[0]["lr"]
        step_losses = list(zip([s for s, _ in sampled], torch.stack([v for _, v in sampled]).tolist()))
        if not math.isfinite(train_loss):  # its weights are no longer numbers: no validation pass, but the
            nan = float("nan")             # epoch is kept, so the run shows where and how it diverged
            history.append(EpochMetrics(epoch, train_loss, nan, nan, nan, lr_now, time.perf_counter() - started,
                                        min(n, steps_per_epoch * batch_size) / train_seconds, step_losses))
            return FitResult("diverged", f"training loss became {train_loss} in epoch {epoch}", history)
        val = evaluate(model, val_x, val_y, augmenter, num_classes, eval_batch_size)
        metrics = EpochMetrics(epoch, train_loss, val.loss, val.accuracy, val.macro_f1, lr_now,
                               time.perf_counter() - started, min(n, steps_per_epoch * batch_size) / train_seconds,
                               step_losses)
        history.append(metrics)
        if not math.isfinite(val.loss):
            return FitResult("diverged", f"validation loss became {val.loss} in epoch {epoch}", history)
        if on_epoch is not None:
            on_epoch(metrics)
        stalled_for = stalled_for + 1 if at_chance(val.loss, val.accuracy, num_classes) else 0
        if stalled_for >= stall_epochs:
            return FitResult("stalled", f"at chance for {stalled_for} epochs (val loss {val.loss:.4f}, "
                                        f"ln C = {math.log(num_classes):.4f}, val accuracy {val.accuracy:.3f})",
                             history)
        sched.after_epoch(1.0 - val.accuracy)
        if on_checkpoint is not None:
            on_checkpoint({
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
                "rng_generator": generator.get_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": [vars(m) for m in history], "stalled_for": stalled_for, "global_step": global_step})
    return FitResult("completed", "", history, val if epochs >= first_epoch else None)


if __name__ == "__main__":  # `python -m alexnet_exp.train`: the CLI lives with the code that builds a run
    from .single_run import main

    raise SystemExit(main())
