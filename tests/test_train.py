import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from alexnet_exp.augment import BatchAugmenter, color_stats
from alexnet_exp.config import TrainConfig
from alexnet_exp.model import build_model
from alexnet_exp.run_parts import fit_settings
from alexnet_exp.stopping import at_chance, explosion, stall_count
from alexnet_exp.train import (
    EpochMetrics,
    Schedule,
    evaluate,
    fit,
    make_optimizer,
    resolve_device,
    steps_per_epoch,
    train_one_epoch,
)

CALLBACKS = ("on_epoch", "on_batch", "on_checkpoint", "resume")


def parts(data, **aug):
    # No augmentation unless a test asks for it (BatchAugmenter's defaults are the config's: crop and flip).
    augmenter = BatchAugmenter(stats=color_stats(data.train_x), input_size=32,
                               **{"crop_padding": 0, "flip": False, **aug})
    torch.manual_seed(0)
    model = build_model("alexnet_cifar", data.num_classes, norm="batchnorm", width=0.25, dropout=0.0)
    return model, augmenter


def settings(**kw):
    """The config's training settings (through the adapter the pipeline uses), with a test's changes."""
    base = fit_settings(TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, epochs=3,
                                    weight_decay=0.0))
    return replace(base, **kw)


def run(data, model, augmenter, **kw):
    callbacks = {k: kw.pop(k) for k in CALLBACKS if k in kw}
    return fit(model, data.train_x, data.train_y, data.val_x, data.val_y, augmenter, data.num_classes,
               settings(**kw), **callbacks)


def test_loss_decreases_and_accuracy_rises_above_chance(tiny_data):
    model, augmenter = parts(tiny_data)
    result = run(tiny_data, model, augmenter, epochs=4)
    assert result.status == "completed" and result.epochs_run == 4
    losses = [m.train_loss for m in result.history]
    assert losses[-1] < losses[0] * 0.8
    assert result.final.val_accuracy > 0.3  # chance is 0.1
    assert result.final.images_per_second > 0 and result.final.epoch_seconds > 0
    assert result.history[0].step_losses and all(math.isfinite(v) for _, v in result.history[0].step_losses)


def test_same_config_and_seed_give_the_same_metrics_on_cpu(tiny_data):
    histories = []
    for _ in range(2):
        model, augmenter = parts(tiny_data, crop_padding=4, flip=True, pca_sigma=0.1)
        result = run(tiny_data, model, augmenter, epochs=2)
        histories.append([(m.train_loss, m.val_loss, m.val_accuracy, m.val_macro_f1, m.step_losses)
                          for m in result.history])
    assert histories[0] == histories[1]
    model, augmenter = parts(tiny_data, crop_padding=4, flip=True, pca_sigma=0.1)
    other = run(tiny_data, model, augmenter, epochs=2, seed=1)
    assert [m.train_loss for m in other.history] != [h[0] for h in histories[0]]


def test_non_finite_loss_is_diverged(tiny_data):
    model, augmenter = parts(tiny_data)
    with torch.no_grad():
        model.classifier[-1].weight[0, 0] = float("inf")  # constructed: the loss cannot be finite
    result = run(tiny_data, model, augmenter)
    assert result.status == "diverged" and "epoch 1" in result.reason
    # the diverged epoch is kept, so the run's curves show where it went
    assert result.epochs_run == 1 and not math.isfinite(result.history[0].train_loss)


def test_huge_learning_rate_diverges(tiny_data):
    torch.manual_seed(0)
    model = build_model("alexnet_cifar", tiny_data.num_classes, norm="none", width=0.25)
    _, augmenter = parts(tiny_data)
    result = run(tiny_data, model, augmenter, lr=1e8, epochs=3)
    assert result.status == "diverged"


def test_run_at_chance_is_stalled(tiny_data):
    # Constructed: a zero linear model that cannot move (lr 0) predicts uniform probabilities, loss ln(C).
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, tiny_data.num_classes))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    _, augmenter = parts(tiny_data)
    seen = []
    result = run(tiny_data, model, augmenter, lr=0.0, epochs=10, stall_epochs=2, on_epoch=seen.append)
    # the stalled epoch is not handed to on_epoch (where a pruner could end it first, as `pruned`)
    assert result.status == "stalled" and result.epochs_run == 2 and len(seen) == 1
    assert result.final.val_loss == pytest.approx(math.log(10), rel=1e-6)
    assert "at chance and not improving for 2 epochs" in result.reason


def test_at_chance_matches_the_cifar100_document():
    assert at_chance(4.6052, 0.021, 100)  # SGD at lr 0.001: loss 4.60, 2% accuracy
    assert at_chance(4.605169773101807, 0.00998, 100)  # Adam at lr 0.005
    assert not at_chance(3.9, 0.139, 100)  # learning, slowly
    assert not at_chance(4.60, 0.20, 100)


def test_callback_sees_every_epoch_and_can_stop_the_run(tiny_data):
    class Stop(Exception):
        pass

    seen: list[EpochMetrics] = []

    def on_epoch(m):
        seen.append(m)
        if m.epoch == 2:
            raise Stop

    model, augmenter = parts(tiny_data)
    with pytest.raises(Stop):
        run(tiny_data, model, augmenter, epochs=5, on_epoch=on_epoch)
    assert [m.epoch for m in seen] == [1, 2]
    assert set(seen[0].scalars()) == {"train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr",
                                      "epoch_seconds", "images_per_second"}


@pytest.mark.parametrize("name", ["none", "step", "plateau", "cosine", "onecycle"])
def test_schedules_shape_the_learning_rate(name):
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = Schedule(opt, name, epochs=4, steps_per_epoch=5, lr=0.1, step_epochs=2, lr_factor=0.1,
                     plateau_patience=0)
    lrs = []
    for _ in range(4):
        for _ in range(5):
            opt.step()
            sched.after_step()
        sched.after_epoch(val_error=0.5)  # flat validation error
        lrs.append(opt.param_groups[0]["lr"])
    if name == "none":
        assert lrs == [0.1] * 4
    elif name == "step":
        assert lrs == pytest.approx([0.1, 0.01, 0.01, 0.001])
    elif name == "plateau":
        assert lrs[-1] < 0.1 * 0.1 ** 2  # divided by 10 each time the error did not improve
    else:
        assert lrs[-1] < 0.02 and lrs[0] > lrs[-1]  # annealed far below the peak of 0.1


def test_evaluate_returns_all_split_metrics(tiny_data):
    model, augmenter = parts(tiny_data)
    result = evaluate(model, tiny_data.val_x, tiny_data.val_y, augmenter, tiny_data.num_classes, batch_size=37)
    assert int(result.confusion.sum()) == len(tiny_data.val_y)
    assert len(result.per_class.f1) == tiny_data.num_classes
    assert result.per_class.support == torch.bincount(tiny_data.val_y, minlength=10).tolist()
    assert 0.0 <= result.accuracy <= 1.0 and result.loss > 0


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"  # the documented preference
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_path_bf16_channels_last(tiny_data):
    data = tiny_data.to(torch.device("cuda"))
    augmenter = BatchAugmenter(stats=color_stats(data.train_x), input_size=227, crop_padding=4, flip=True,
                               pca_sigma=0.1)
    model = build_model("alexnet", data.num_classes, norm="lrn", groups=2, width=0.25)
    result = fit(model, data.train_x, data.train_y, data.val_x, data.val_y, augmenter, data.num_classes,
                 settings(lr=0.01, momentum=0.9, weight_decay=5e-4, epochs=2))
    assert result.status in ("completed", "stalled")
    assert next(model.parameters()).is_cuda
    assert all(math.isfinite(m.train_loss) for m in result.history)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_result(tiny_data, tmp_path):
    model, augmenter = parts(tiny_data, crop_padding=4, flip=True, pca_sigma=0.1)
    full = run(tiny_data, model, augmenter, epochs=3, schedule="cosine")

    saved = {}

    def keep(state):
        path = tmp_path / f"epoch{state['epoch']}.pt"
        torch.save(state, path)  # round trip through the file format the sweep uses
        saved[state["epoch"]] = path

    model, augmenter = parts(tiny_data, crop_padding=4, flip=True, pca_sigma=0.1)
    run(tiny_data, model, augmenter, epochs=3, schedule="cosine", on_checkpoint=keep)
    state = torch.load(saved[1], weights_only=True)
    model, augmenter = parts(tiny_data, crop_padding=4, flip=True, pca_sigma=0.1)
    resumed = run(tiny_data, model, augmenter, epochs=3, schedule="cosine", resume=state)
    assert [m.epoch for m in resumed.history] == [1, 2, 3]
    assert [(m.train_loss, m.val_loss, m.val_accuracy) for m in resumed.history] == \
        [(m.train_loss, m.val_loss, m.val_accuracy) for m in full.history]


def test_train_one_epoch_is_one_pass_over_the_training_split(tiny_data):
    model, augmenter = parts(tiny_data)
    opt = make_optimizer(model.parameters(), "sgd", 0.05, momentum=0.9, nesterov=False, weight_decay=0.0,
                         fused=False)
    sched = Schedule(opt, "cosine", epochs=2, steps_per_epoch=steps_per_epoch(600, 64), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    first = train_one_epoch(model, opt, sched, tiny_data.train_x, tiny_data.train_y, augmenter, generator,
                            batch_size=64, label_smoothing=0.0, loss_every_steps=4, global_step=0)
    steps = steps_per_epoch(len(tiny_data.train_y), 64)
    assert first.global_step == steps and first.images == len(tiny_data.train_y)
    assert [s for s, _ in first.step_losses] == [1] + list(range(4, steps + 1, 4))
    second = train_one_epoch(model, opt, sched, tiny_data.train_x, tiny_data.train_y, augmenter, generator,
                             batch_size=64, label_smoothing=0.0, loss_every_steps=4, global_step=first.global_step)
    assert second.global_step == 2 * steps and second.loss < first.loss
    assert opt.param_groups[0]["lr"] < 0.05 * 0.01  # the schedule was stepped per batch, to its end


def test_stall_rule_counts_only_flat_epochs_at_chance():
    ln100 = math.log(100)
    # The CIFAR-100 notebook's run 1 pattern: at chance, but its loss creeping down by more than 1e-3 ln C.
    count, best = 0, None
    for loss in (4.6052, 4.5990, 4.5930, 4.5870, 4.5810):
        count = stall_count(count, loss, 0.02, best, 100)
        best = loss if best is None else min(best, loss)
        assert count <= 1
    # A dead run: the same loss every epoch (or moving by less than the margin) counts every epoch.
    count, best = 0, None
    for loss in (ln100, ln100 - 1e-4, ln100 + 1e-4, ln100 - 2e-4):
        count = stall_count(count, loss, 0.01, best, 100)
        best = loss if best is None else min(best, loss)
    assert count == 4
    assert stall_count(5, 3.9, 0.139, 4.6, 100) == 0  # off chance: the count starts again


def test_explosion_names_the_numbers():
    ln10 = math.log(10)
    assert explosion(2.2, 2 * ln10, 2.3, 10) is None  # overfitting: validation loss twice ln C is not divergence
    assert "training loss exploded to 5e+15" in explosion(5e15, 2.3, 2.3, 10)
    assert "validation loss exploded to 40" in explosion(2.2, 40.0, 2.3, 10)
    assert "100x its first epoch's 0.01" in explosion(1.0, 1.5, 0.01, 10)  # from a small loss, on easy data
    assert explosion(float("nan"), float("nan"), 2.3, 10) == "validation loss became nan"


class Prior(nn.Module):
    """Learns only the class frequencies (a bias, whatever the image): its loss falls from ln C while its
    accuracy stays at the majority class's share, i.e. at chance."""

    def __init__(self, num_classes):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


def prior_data():
    def split(n):  # class 0 holds 2 of every 11 images (18%), the nine others 1 each
        labels = torch.arange(n) % 11
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
        return images, torch.where(labels == 10, 0, labels)
    return split(600), split(240)


@pytest.mark.parametrize("lr,status", [(0.08, "completed"), (0.0, "stalled")])
def test_at_chance_but_improving_is_not_stalled(lr, status):
    (tx, ty), (vx, vy) = prior_data()
    augmenter = BatchAugmenter(stats=color_stats(tx), input_size=32, crop_padding=0, flip=False)
    result = fit(Prior(10), tx, ty, vx, vy, augmenter, 10,
                 settings(lr=lr, momentum=0.0, epochs=4, stall_epochs=2))
    assert result.status == status, result.reason
    at = [at_chance(m.val_loss, m.val_accuracy, 10) for m in result.history]
    assert all(at)  # both at chance every epoch: only the falling loss tells them apart
    if status == "completed":
        losses = [m.val_loss for m in result.history]
        assert all(b < a - 1e-3 * math.log(10) for a, b in zip(losses, losses[1:]))


def test_a_resumed_run_stalls_where_the_uninterrupted_one_does(tiny_data, tmp_path):
    def dead():  # a zero linear model that cannot move: at chance and flat every epoch
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, tiny_data.num_classes))
        nn.init.zeros_(model[1].weight)
        nn.init.zeros_(model[1].bias)
        return model

    _, augmenter = parts(tiny_data)
    saved = {}
    full = run(tiny_data, dead(), augmenter, lr=0.0, epochs=10, stall_epochs=3,
               on_checkpoint=lambda state: saved.setdefault(state["epoch"], state))
    assert full.status == "stalled" and full.epochs_run == 3
    resumed = run(tiny_data, dead(), augmenter, lr=0.0, epochs=10, stall_epochs=3, resume=saved[2])
    assert resumed.status == "stalled" and resumed.epochs_run == 3  # its stall count came back with it


def test_adam_at_lr_10_is_diverged_not_complete(tiny_data):
    # The CIFAR-100 failure: a finite loss of 5e15 at accuracy exactly 1/C, once recorded COMPLETE.
    model, augmenter = parts(tiny_data)
    result = run(tiny_data, model, augmenter, optimizer="adam", lr=10.0, epochs=3)
    assert result.status == "diverged", result.reason
    assert "exploded" in result.reason and "ln C" in result.reason and "epoch 1" in result.reason
    assert result.epochs_run == 1 and math.isfinite(result.history[0].train_loss)  # the epoch is kept


def dead_linear(num_classes):
    """A zero linear model that cannot move (lr 0): uniform probabilities, loss ln C, every epoch."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    return model


def test_a_run_that_trained_every_epoch_completes_even_at_chance(tiny_data):
    """The stall rule ends a run to save the epochs it has left; at its last epoch there are none, and its
    result is a result (the pruner does the same: test_pruning.py)."""
    _, augmenter = parts(tiny_data)
    last = run(tiny_data, dead_linear(tiny_data.num_classes), augmenter, lr=0.0, epochs=2, stall_epochs=2)
    assert last.status == "completed" and last.epochs_run == 2
    # and the epochs of a warm-up do not count: the rate still rises, they are slow by design
    warming = run(tiny_data, dead_linear(tiny_data.num_classes), augmenter, lr=0.0, epochs=10, stall_epochs=2,
                  warmup_epochs=3)
    assert warming.status == "stalled" and warming.epochs_run == 5


@pytest.mark.parametrize("schedule", ["none", "step", "plateau", "cosine", "onecycle"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_the_optimiser_state_follows_the_sampled_values_under_every_schedule(schedule, optimizer):
    """OneCycleLR's default cycled SGD's momentum (0.95 -> 0.85) and Adam's beta1, overwriting what was sampled.
    Every step of a whole run keeps the configured momentum (SGD) or Adam's betas, and nesterov."""
    param = nn.Parameter(torch.zeros(1))
    sgd = optimizer == "sgd"
    opt = make_optimizer([param], optimizer, 0.1, momentum=0.3 if sgd else 0.0, nesterov=sgd, weight_decay=1e-4,
                         fused=False)
    sched = Schedule(opt, schedule, epochs=3, steps_per_epoch=4, lr=0.1, step_epochs=1, plateau_patience=0)
    seen = []
    for _ in range(3):
        for _ in range(4):
            opt.step()
            sched.after_step()
            group = opt.param_groups[0]
            seen.append((group["momentum"], group["nesterov"]) if sgd else group["betas"])
        sched.after_epoch(val_error=0.5)
    assert set(seen) == {(0.3, True) if sgd else (0.9, 0.999)}


def test_onecycle_trains_with_the_configured_momentum(tiny_data):
    """End to end: the optimiser state fit checkpoints after an epoch of onecycle has the momentum it was given."""
    model, augmenter = parts(tiny_data)
    states = []
    run(tiny_data, model, augmenter, schedule="onecycle", momentum=0.0, epochs=2, on_checkpoint=states.append)
    assert [s["optimizer"]["param_groups"][0]["momentum"] for s in states] == [0.0, 0.0]


@pytest.mark.parametrize("name", ["none", "step", "plateau", "cosine"])
def test_warmup_rises_linearly_then_the_schedule_runs(name):
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = Schedule(opt, name, epochs=5, steps_per_epoch=4, lr=0.1, step_epochs=1, lr_factor=0.1,
                     plateau_patience=0, warmup_epochs=2)
    lrs = [opt.param_groups[0]["lr"]]  # the first batch's rate
    for _epoch in range(5):
        for _ in range(4):
            opt.step()
            sched.after_step()
            lrs.append(opt.param_groups[0]["lr"])
        sched.after_epoch(val_error=0.5)  # flat: plateau divides, once warmed up only
        lrs[-1] = opt.param_groups[0]["lr"]
    assert lrs[:8] == pytest.approx([0.1 * k / 8 for k in range(1, 9)])  # 8 warm-up steps from 0.1/8
    assert lrs[8] == pytest.approx(0.1)  # the peak, at the end of the warm-up
    after = lrs[9:]
    if name == "none":
        assert after == pytest.approx([0.1] * len(after))
    elif name == "cosine":
        assert all(b < a for a, b in zip(after, after[1:])) and after[-1] == pytest.approx(0.0, abs=1e-12)
    elif name == "step":  # divided every epoch (step_epochs 1), counted from the end of the warm-up
        assert after == pytest.approx([0.1] * 3 + [0.01] * 4 + [0.001] * 4 + [0.0001] * 1)
    else:  # plateau: the flat error divides at each epoch's end once warmed up, never during the warm-up
        assert lrs[4] == pytest.approx(0.1 * 5 / 8)  # the end of epoch 1: no division
        assert lrs[12] == pytest.approx(0.1 * 0.1) and lrs[16] == pytest.approx(0.1 * 0.01)


def test_a_warmup_resumes_where_it_stopped():
    def schedule():
        param = nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1)
        return opt, Schedule(opt, "plateau", epochs=4, steps_per_epoch=3, lr=0.1, warmup_epochs=2,
                             plateau_patience=0)

    def steps(opt, sched, n):
        out = []
        for i in range(n):
            opt.step()
            sched.after_step()
            if (i + 1) % 3 == 0:
                sched.after_epoch(0.5)
            out.append(opt.param_groups[0]["lr"])
        return out

    opt, sched = schedule()
    whole = steps(opt, sched, 12)
    opt, sched = schedule()
    first = steps(opt, sched, 3)
    state = sched.state_dict()
    opt2, sched2 = schedule()
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # the optimiser's own state comes back with it
    sched2.load_state_dict(state)
    assert first + steps(opt2, sched2, 9) == pytest.approx(whole)


def test_warmup_with_onecycle_is_refused():
    with pytest.raises(ValueError, match="onecycle warms up by itself"):
        Schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), "onecycle", epochs=4, steps_per_epoch=2,
                 lr=0.1, warmup_epochs=1)


@pytest.mark.parametrize("logit_relu", [True, False])
def test_the_logit_relu_reproduces_the_notebooks_dead_run(tiny_data, logit_relu):
    """The CIFAR-100 notebook's run 8 (its network with a ReLU on the logits, Adam at 5e-3) printed ln 100 at every
    step: all logits <= 0, no gradient through the ReLU. `model.logit_relu` trains that network; without it the
    same run still moves."""
    torch.manual_seed(0)
    model = build_model("alexnet_cifar", tiny_data.num_classes, norm="conv1_batchnorm", width=0.25, init="pytorch",
                        dropout=0.5, dropout_at="fc_outputs", logit_relu=logit_relu)
    augmenter = BatchAugmenter(stats=color_stats(tiny_data.train_x), input_size=32, crop_padding=0, flip=False,
                               normalize="none")
    result = run(tiny_data, model, augmenter, optimizer="adam", lr=5e-3, momentum=0.0, batch_size=32, epochs=2,
                 stall_epochs=10, loss_every_steps=1)
    spread = max(abs(v - math.log(tiny_data.num_classes)) for _, v in result.history[-1].step_losses)
    if logit_relu:  # every step of epoch 2 at ln C, to float32's precision
        assert spread < 1e-6 and result.history[-1].val_loss == pytest.approx(math.log(10), abs=1e-6)
    else:
        assert spread > 1e-3
