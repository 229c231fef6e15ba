"""Fit and evaluate one model: `train_one_epoch` (one pass over the training split) and `evaluate` (one pass over
a split), and `fit`, the loop over epochs that calls them, checkpoints, resumes and ends hopeless runs early.
Knows nothing of Optuna or MLflow: it reports each epoch through a callback, which may raise to stop the run
(the sweep raises `optuna.TrialPruned` there), and imports nothing of the command lines.

A package (with the optimiser and schedule in optim.py) so that `python -m alexnet_exp.train CONFIG.yaml` runs
`__main__.py`, the single-run command of single_run.py, without this module importing the command that imports
it: a `__main__` block in a train.py was an import cycle (train -> single_run -> pipeline -> train), and ran
train.py twice (as `__main__` and as `alexnet_exp.train`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import BatchAugmenter
from ..host_memory import keep_freed_memory
from ..metrics import PerClass, accuracy, confusion_matrix, macro_f1, per_class
from ..stopping import explosion, stall_count
from ..streaming import epoch_batches
from .optim import Schedule, make_optimizer


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


@dataclass(frozen=True)
class FitSettings:
    """What `fit` needs to know besides the model and the data: the `train:` section less `device` (the data is
    on its device already). No defaults: the config holds them, and `run_parts.fit_settings` copies them across."""

    optimizer: str  # sgd | adam | adamw
    lr: float  # peak learning rate
    momentum: float  # sgd only
    nesterov: bool  # sgd only
    weight_decay: float
    batch_size: int
    epochs: int
    schedule: str  # none | step | plateau | cosine | onecycle
    warmup_epochs: int  # epochs of linear rise to the peak rate before the schedule (not onecycle)
    step_epochs: int  # step: epochs between divisions
    lr_factor: float  # step/plateau: multiplier at each division
    plateau_patience: int  # plateau: epochs without improvement
    label_smoothing: float
    seed: int  # model init is the caller's; this seeds shuffling and augmentation
    eval_batch_size: int
    stall_epochs: int  # epochs at chance and not improving before the run ends as stalled
    loss_every_steps: int  # the per-step training loss is sampled every N steps
    compile: bool  # torch.compile the model (CUDA only)


@dataclass
class EpochTraining:
    """What one pass over the training split measured."""

    loss: float  # mean training loss over the images trained on
    images: int
    seconds: float
    step_losses: list[tuple[int, float]]  # (global step, loss), sampled
    global_step: int  # steps taken since the run began, this epoch's included


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
        views = augmenter.eval_views(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        log_probs = []
        for x in views:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                log_probs.append(F.log_softmax(model(x).float(), dim=1))
        # Several views (ten_crop): the mean of their softmax is the prediction, as in the paper; one view: its
        # own log-softmax (the same loss as cross-entropy on the logits).
        log_p = log_probs[0] if len(log_probs) == 1 else torch.logsumexp(torch.stack(log_probs), 0) - math.log(
            len(log_probs))
        loss_sum += F.nll_loss(log_p, y, reduction="sum")
        confusion += confusion_matrix(y, log_p.argmax(dim=1), num_classes)
    n = max(len(labels), 1)
    cm = confusion.cpu()
    return EvalResult(float(loss_sum) / n, accuracy(cm), macro_f1(cm), cm, per_class(cm))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one epoch of `n` images: a trailing batch of one breaks BatchNorm in training mode, so it is
    dropped (its image is drawn again next epoch)."""
    steps = n // batch_size + (1 if n % batch_size > 1 else 0)
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} leaves no training batch of 2+ images from {n} images")
    return steps


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, images: torch.Tensor,
                    labels: torch.Tensor, augmenter: BatchAugmenter, generator: torch.Generator, *, batch_size: int,
                    label_smoothing: float, loss_every_steps: int, global_step: int,
                    on_batch: Optional[Callable[[int, int], None]] = None) -> EpochTraining:
    """One pass over uint8 training images in an order drawn from `generator`, stepping `schedule` per batch.
    `global_step` counts the steps of earlier epochs (it numbers the sampled step losses). The loss is read
    back from the device once, at the end, not per step."""
    model.train()
    started = time.perf_counter()
    device = images.device
    n = len(labels)
    steps = steps_per_epoch(n, batch_size)
    channels_last = _channels_last(device)
    order = torch.randperm(n, device=device, generator=generator)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    sampled: list[tuple[int, torch.Tensor]] = []
    for step, batch in enumerate(epoch_batches(images, order, batch_size, steps)):
        idx = order[step * batch_size:(step + 1) * batch_size]
        x = augmenter.train(batch, generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels[idx], label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.after_step()
        loss_sum += loss.detach() * len(idx)
        global_step += 1
        if global_step % loss_every_steps == 0 or step == 0:
            sampled.append((global_step, loss.detach()))
        if on_batch is not None:
            on_batch(step + 1, steps)
    trained = min(n, steps * batch_size)
    mean_loss = float(loss_sum) / trained  # the one sync per epoch
    step_losses = list(zip([s for s, _ in sampled], torch.stack([v for _, v in sampled]).tolist()))
    return EpochTraining(mean_loss, trained, time.perf_counter() - started, step_losses, global_step)


def fit(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
        val_y: torch.Tensor, augmenter: BatchAugmenter, num_classes: int, settings: FitSettings, *,
        on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
        on_batch: Optional[Callable[[int, int], None]] = None,
        on_checkpoint: Optional[Callable[[dict], None]] = None, resume: Optional[dict] = None) -> FitResult:
    """Train `model` on uint8 images held on the training device; validate after every epoch.

    Ends early with status `diverged` (a loss that is not finite or exploded, see stopping.py) or `stalled`
    (at chance and not improving for `settings.stall_epochs` epochs in a row; never at the last epoch nor during
    the learning-rate warm-up). `on_epoch` gets each epoch's
    metrics and may raise to stop; `on_batch(step, steps_per_epoch)` drives a progress bar.
    `on_checkpoint` gets the full training state after each epoch (model, optimiser, schedule, RNG, history:
    tensors and plain types only); passing such a state as `resume` continues from the epoch after it, with
    the same results as an uninterrupted run.
    On the CPU, glibc's malloc is told to keep freed memory, process-wide (see host_memory.py).
    """
    s = settings
    device = train_x.device
    if device.type == "cpu":
        keep_freed_memory()  # otherwise every step's activations are page-faulted in afresh (host_memory.py)
    torch.manual_seed(s.seed)
    generator = torch.Generator(device=device).manual_seed(s.seed)
    model = model.to(device, memory_format=torch.channels_last) if _channels_last(device) else model.to(device)
    step_model = torch.compile(model) if s.compile and device.type == "cuda" else model
    sgd = s.optimizer == "sgd"
    opt = make_optimizer(model.parameters(), s.optimizer, s.lr, momentum=s.momentum if sgd else 0.0,
                         nesterov=s.nesterov and sgd, weight_decay=s.weight_decay, fused=device.type == "cuda")
    sched = Schedule(opt, s.schedule, s.epochs, steps_per_epoch(len(train_y), s.batch_size), s.lr, s.step_epochs,
                     s.lr_factor, s.plateau_patience, s.warmup_epochs)
    history: list[EpochMetrics] = []
    stalled_for = global_step = 0
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
    val = None
    for epoch in range(first_epoch, s.epochs + 1):
        started = time.perf_counter()
        trained = train_one_epoch(step_model, opt, sched, train_x, train_y, augmenter, generator,
                                  batch_size=s.batch_size, label_smoothing=s.label_smoothing,
                                  loss_every_steps=s.loss_every_steps, global_step=global_step, on_batch=on_batch)
        global_step = trained.global_step
        lr_now = opt.param_groups[0]["lr"]
        rate = trained.images / trained.seconds
        if not math.isfinite(trained.loss):  # its weights are no longer numbers: no validation pass, but the
            nan = float("nan")               # epoch is kept, so the run shows where and how it diverged
            history.append(EpochMetrics(epoch, trained.loss, nan, nan, nan, lr_now, time.perf_counter() - started,
                                        rate, trained.step_losses))
            return FitResult("diverged", f"training loss became {trained.loss} in epoch {epoch}", history)
        val = evaluate(model, val_x, val_y, augmenter, num_classes, s.eval_batch_size)
        metrics = EpochMetrics(epoch, trained.loss, val.loss, val.accuracy, val.macro_f1, lr_now,
                               time.perf_counter() - started, rate, trained.step_losses)
        earlier = history  # the epochs before this one (restored ones included, so a resume decides alike)
        history = [*history, metrics]
        exploded = explosion(trained.loss, val.loss, earlier[0].train_loss if earlier else trained.loss,
                             num_classes)
        if exploded is not None:  # before on_epoch: a pruner must not record a diverged run as pruned
            return FitResult("diverged", f"{exploded} in epoch {epoch}", history)
        # Epochs of a warm-up do not count: the rate still rises, and they train slowly by design.
        stalled_for = 0 if epoch <= s.warmup_epochs else stall_count(
            stalled_for, val.loss, val.accuracy, min((m.val_loss for m in earlier), default=None), num_classes)
        # Before on_epoch too: a dead run is `stalled`, not pruned. Never at the last epoch: a run that trained
        # every epoch has spent its budget, and its result, at chance or not, is a result.
        if stalled_for >= s.stall_epochs and epoch < s.epochs:
            return FitResult("stalled", f"at chance and not improving for {stalled_for} epochs (val loss "
                                        f"{val.loss:.4f}, ln C = {math.log(num_classes):.4f}, val accuracy "
                                        f"{val.accuracy:.3f})", history)
        if on_epoch is not None:
            on_epoch(metrics)
        sched.after_epoch(1.0 - val.accuracy)
        if on_checkpoint is not None:
            on_checkpoint({
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(), "rng_cpu": torch.get_rng_state(),
                "rng_generator": generator.get_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": [vars(m) for m in history], "stalled_for": stalled_for, "global_step": global_step})
    return FitResult("completed", "", history, val)
