import pytest
import torch
import torch.nn as nn

from alexnet_exp.model import (
    ARCH_INPUT_SIZE,
    ChannelSumLRN,
    Dropout,
    _band,
    _inverse_power,
    _window_sum_conv,
    _window_sum_shifted,
    build_model,
)


@pytest.mark.parametrize("arch,width", [("alexnet", 0.125), ("alexnet_cifar", 0.25)])
@pytest.mark.parametrize("norm", ["lrn", "batchnorm", "none"])
@pytest.mark.parametrize("groups", [1, 2])
def test_output_shape_at_native_input_size(arch, width, norm, groups):
    model = build_model(arch, num_classes=13, norm=norm, groups=groups, width=width).eval()
    size = ARCH_INPUT_SIZE[arch]
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 13)


def test_paper_network_has_the_paper_shapes():
    model = build_model("alexnet", num_classes=1000, norm="lrn", groups=2)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.groups) for c in convs] == [
        (96, 11, 4, 1), (256, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 2), (256, 3, 1, 2)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(9216, 4096), (4096, 4096), (4096, 1000)]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all(p.kernel_size == 3 and p.stride == 2 for p in pools)  # overlapping
    assert sum(isinstance(m, ChannelSumLRN) for m in model.features) == 2
    n_params = sum(p.numel() for p in model.parameters())
    assert 58e6 < n_params < 62e6  # the paper's ~60 million (grouped)


def test_logits_are_not_rectified():
    model = build_model("alexnet_cifar", num_classes=10, width=0.25).eval()
    with torch.no_grad():
        out = model(torch.randn(64, 3, 32, 32))
    assert (out < 0).any()
    assert isinstance(model.classifier[-1], nn.Linear)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(4, 48, 9, 9), (2, 7, 5, 3), (3, 5, 4, 4)])
def test_channel_sum_lrn_matches_torch(shape, memory_format):
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 4).relu().contiguous(memory_format=memory_format).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ours = ChannelSumLRN(shape[1], size=5, alpha=1e-4, beta=0.75, k=2.0)
    reference = nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)  # torch divides alpha by size
    y, y_ref = ours(x), reference(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_lrn_with_strong_alpha_actually_normalises():
    x = torch.full((1, 5, 1, 1), 10.0)
    y = ChannelSumLRN(5, size=5, alpha=1.0, beta=1.0, k=0.0)(x)
    # middle channel sees all five: 10 / (5 * 100)
    assert y[0, 2, 0, 0].item() == pytest.approx(10 / 500)


def test_paper_init():
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=10, init="paper", width=0.25)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [float(c.bias.detach().mean()) for c in convs] == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert all(float(fc.bias.detach().mean()) == 1.0 for fc in linears)
    for layer in convs + linears:
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_kaiming_init_scales_with_fan_in():
    model = build_model("alexnet_cifar", num_classes=10, init="kaiming")
    conv2 = [m for m in model.features if isinstance(m, nn.Conv2d)][1]
    fan_in = conv2.weight[0].numel()
    assert conv2.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    assert float(conv2.bias.detach().abs().max()) == 0.0


def test_width_and_groups_round_channels():
    model = build_model("alexnet_cifar", num_classes=10, width=0.3, groups=2)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 2 == 0 for c in convs)
    assert convs[1].groups == 2 and convs[2].groups == 1


def test_batchnorm_variant_has_batchnorm_after_every_conv():
    model = build_model("alexnet_cifar", num_classes=10, norm="batchnorm", width=0.25)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.features) == 5
    assert not any(isinstance(m, ChannelSumLRN) for m in model.features)


def test_invalid_choices_list_valid_ones():
    with pytest.raises(ValueError, match="valid: alexnet, alexnet_cifar"):
        build_model("vgg", num_classes=10)
    with pytest.raises(ValueError, match="too small"):
        build_model("alexnet", num_classes=10, input_size=32)


def test_channel_sum_lrn_gradient_is_exact():
    # An asymmetric window (size 4) and strong alpha, so every term of the analytic backward matters.
    lrn = ChannelSumLRN(6, size=4, alpha=0.3, beta=0.75, k=1.0).double()
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lrn, (x,), eps=1e-6, atol=1e-7)


def test_channel_sum_lrn_gradient_is_exact_for_any_beta():
    # beta != 0.75 takes the pow path instead of the rsqrt one
    lrn = ChannelSumLRN(7, size=3, alpha=0.5, beta=0.6, k=1.5).double()
    x = torch.randn(2, 7, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lrn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("channels,size", [(12, 5), (9, 4), (6, 1), (3, 7)])
def test_both_window_sums_agree(channels, size):
    # The CPU's shifted adds and CUDA's band convolution, forward window and transposed (backward) window.
    x = torch.randn(2, channels, 3, 4, dtype=torch.float64)
    band = _band(channels, size).double()
    before, after = size // 2, (size - 1) // 2
    torch.testing.assert_close(_window_sum_shifted(x, before, after), _window_sum_conv(x, band))
    torch.testing.assert_close(_window_sum_shifted(x, after, before), _window_sum_conv(x, band.transpose(0, 1)))
    if size == 4:  # asymmetric: the two directions differ, so a swapped window would be caught
        assert not torch.allclose(_window_sum_shifted(x, before, after), _window_sum_shifted(x, after, before))


def test_inverse_power_fast_path_matches_pow():
    t = torch.rand(1000, dtype=torch.float64) * 10 + 0.5
    torch.testing.assert_close(_inverse_power(t, 0.75), t.pow(-0.75))


def test_lrn_keeps_channels_last():
    # the convolutions around it run in channels_last; a layout change here would cost a copy per step
    x = torch.randn(2, 16, 5, 5).relu().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = ChannelSumLRN(16)(x)
    y.backward(torch.ones_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("norm", ["lrn", "batchnorm"])
def test_build_materialises_every_tensor(norm):
    # built on the meta device: every parameter and buffer must be real and initialised afterwards
    model = build_model("alexnet_cifar", num_classes=10, norm=norm, width=0.25)
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == "cpu" and torch.isfinite(t.float()).all() for t in tensors)
    if norm == "batchnorm":
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert bn.running_var.eq(1).all() and bn.weight.eq(1).all() and bn.running_mean.eq(0).all()
    else:
        lrn = next(m for m in model.modules() if isinstance(m, ChannelSumLRN))
        assert torch.equal(lrn.band, _band(lrn.channels, lrn.size))
        assert not any("band" in key for key in model.state_dict())  # derived, not saved in checkpoints


def test_build_is_seeded():
    torch.manual_seed(3)
    a = build_model("alexnet_cifar", num_classes=10, width=0.25)
    torch.manual_seed(3)
    b = build_model("alexnet_cifar", num_classes=10, width=0.25)
    torch.manual_seed(4)
    c = build_model("alexnet_cifar", num_classes=10, width=0.25)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)


def test_build_uses_the_default_device():
    with torch.device("meta"):
        model = build_model("alexnet_cifar", num_classes=10, width=0.25)
    assert {t.device.type for t in model.state_dict().values()} == {"meta"}


def test_dropout_drops_at_its_rate_and_keeps_the_expectation():
    torch.manual_seed(0)
    layer = Dropout(0.3)
    x = torch.ones(200, 500)
    y = layer.train()(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)  # kept units scaled by 1 / (1 - p)
    assert torch.equal(layer.eval()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


def test_trials_with_different_hyperparameters_share_one_compiled_graph():
    # A worker compiles each trial's model; dropout is sampled per trial. A rate baked into the graph meant one
    # recompilation per trial and eager after torch's limit of 8.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    x = torch.randn(4, 3, 32, 32)
    for trial in range(10):
        torch.manual_seed(trial)
        model = build_model("alexnet_cifar", num_classes=10, width=0.25, dropout=0.2 + 0.03 * trial)
        torch.compile(model, backend="eager")(x).sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_notebook_network_is_the_cifar100_notebooks_layers():
    """The CIFAR-100 notebook's AlexNet (seed document 003): BatchNorm after conv1 only, no LRN, dropout after
    the hidden FC layers' ReLUs, PyTorch's default init; not its ReLU on the logits."""
    from alexnet_exp.model import ChannelSumLRN, Dropout, build_model

    torch.manual_seed(0)
    model = build_model("alexnet", 100, norm="conv1_batchnorm", dropout=0.5, init="pytorch",
                        dropout_at="fc_outputs")
    kinds = [type(m).__name__ for m in model.features]
    assert kinds[:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert kinds.count("BatchNorm2d") == 1 and not any(isinstance(m, ChannelSumLRN) for m in model.modules())
    head = [type(m).__name__ for m in model.classifier]
    assert head == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    # the notebook's parameter count: conv 96/256/384/384/256 (11, 5, 3, 3, 3), BN(96), FC 9216-4096-4096-100
    convs = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    expected = sum(i * o * k * k + o for i, o, k in convs) + 2 * 96 + (9216 * 4096 + 4096) + (4096 * 4096 + 4096) \
        + (4096 * 100 + 100)
    assert sum(p.numel() for p in model.parameters()) == expected
    # PyTorch's default init: Kaiming-uniform (a = sqrt 5) bounds every weight by 1/sqrt(fan_in), biases too
    conv1 = model.features[0]
    bound = 1 / (3 * 11 * 11) ** 0.5
    assert conv1.weight.abs().max() <= bound and conv1.weight.abs().max() > 0.9 * bound
    assert conv1.bias.abs().max() <= bound and conv1.bias.abs().min() >= 0 and conv1.bias.abs().sum() > 0
    logits = model.eval()(torch.randn(2, 3, 227, 227))
    assert logits.shape == (2, 100) and (logits < 0).any()  # no ReLU on the logits
    assert isinstance(model.classifier[3], Dropout)
