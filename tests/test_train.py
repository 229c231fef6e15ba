import math

import pytest
import torch
import torch.nn as nn

from alexnet_exp.augment import BatchAugmenter, color_stats
from alexnet_exp.model import build_model
from alexnet_exp.train import EpochMetrics, Schedule, at_chance, evaluate, fit, resolve_device


def parts(data, **aug):
    augmenter = BatchAugmenter(stats=color_stats(data.train_x), input_size=32, **aug)
    torch.manual_seed(0)
    model = build_model("alexnet_cifar", data.num_classes, norm="batchnorm", width=0.25, dropout=0.0)
    return model, augmenter


def run(data, model, augmenter, **kw):
    args = dict(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, epochs=3, weight_decay=0.0)
    args.update(kw)
    return fit(model, data.train_x, data.train_y, data.val_x, data.val_y, augmenter, data.num_classes, **args)


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
    assert result.status == "stalled" and result.epochs_run == 2 and len(seen) == 2
    assert result.final.val_loss == pytest.approx(math.log(10), rel=1e-6)
    assert "at chance for 2 epochs" in result.reason


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
                 optimizer="sgd", lr=0.01, batch_size=64, epochs=2)
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
