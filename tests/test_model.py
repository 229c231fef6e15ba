import pytest
import torch
import torch.nn as nn

from alexnet_exp.model import ARCH_INPUT_SIZE, ChannelSumLRN, build_model


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
    assert [(l.in_features, l.out_features) for l in linears] == [(9216, 4096), (4096, 4096), (4096, 1000)]
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


@pytest.mark.parametrize("shape", [(4, 48, 9, 9), (2, 7, 5, 3), (3, 5, 4, 4)])
def test_channel_sum_lrn_matches_torch(shape):
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 4).relu().requires_grad_()
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
    assert all(float(l.bias.detach().mean()) == 1.0 for l in linears)
    for layer in convs + linears:
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_kaiming_init_scales_with_fan_in():
    model = build_model("alexnet_cifar", num_classes=10, init="kaiming")
    conv2 = [m for m in model.features if isinstance(m, nn.Conv2d)][1]
    fan_in = conv2.weight[0].numel()
    assert conv2.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    assert float(conv2.bias.abs().max()) == 0.0


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
