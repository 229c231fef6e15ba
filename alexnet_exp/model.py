"""AlexNet variants. The last layer outputs logits (no ReLU on them: that bug cost the CIFAR-100 notebook)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCH_INPUT_SIZE = {"alexnet": 227, "alexnet_cifar": 32}


class _ChannelSumLRNFunction(torch.autograd.Function):
    """out = x * t ** -beta with t = k + alpha * W (x * x), W the banded channel-window matrix.

    The backward is written out, d out_i / d x_j = t_i^-beta [i = j] - 2 alpha beta x_i x_j t_i^(-beta-1)
    [j in window(i)], so it costs one more window sum instead of autograd's chain through every elementwise op:
    forward + backward about 1.5x faster on a 2-core CPU (48x30x30, batch 128).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, band, alpha, beta, k):
        band = band.to(x.dtype)
        t = F.conv2d(x * x, band).mul_(alpha).add_(k)
        scale = t.pow(-beta)
        ctx.save_for_backward(x, band, t, scale)
        ctx.alpha, ctx.beta = alpha, beta
        return x * scale

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        x, band, t, scale = ctx.saved_tensors
        inner = grad * x * scale / t
        spread = F.conv2d(inner, band.transpose(0, 1))  # the transposed window: sums over i with j in window(i)
        return grad * scale - (2 * ctx.alpha * ctx.beta) * x * spread, None, None, None, None


class ChannelSumLRN(nn.Module):
    """Local response normalisation as in the paper: b = a / (k + alpha * sum_{window} a^2) ** beta.

    The window sum over neighbouring channels is a 1x1 convolution with a fixed banded matrix, and the
    backward is analytic (see `_ChannelSumLRNFunction`): on a 2-core CPU this runs forward + backward about 2.5x
    faster than `nn.LocalResponseNorm`. PyTorch's module divides alpha by `size`; this one does not, so it
    equals `nn.LocalResponseNorm(size, alpha * size, beta, k)`.
    """

    def __init__(self, channels: int, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        idx = torch.arange(channels)
        offset = idx[None, :] - idx[:, None]  # input channel - output channel
        band = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)  # the same window as PyTorch's
        self.register_buffer("band", band.float()[:, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ChannelSumLRNFunction.apply(x, self.band, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


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


def _scaled(n: int, width: float, groups: int) -> int:
    """Channel count times the width multiplier, rounded to a multiple of `groups`."""
    return max(groups, int(round(n * width / groups)) * groups)


def _spatial(size: int, specs: list[ConvSpec]) -> int:
    for s in specs:
        size = (size + 2 * s.padding - s.kernel) // s.stride + 1
        if s.pool:
            size = (size - 3) // 2 + 1
        if size < 1:
            raise ValueError(f"input size too small for this architecture (feature map vanished)")
    return size


class AlexNet(nn.Module):
    def __init__(self, arch: str, num_classes: int, norm: str = "lrn", groups: int = 1, dropout: float = 0.5,
                 width: float = 1.0, input_size: int | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
        if norm not in ("lrn", "batchnorm", "none"):
            raise ValueError(f"unknown norm {norm!r}; valid: lrn, batchnorm, none")
        specs, fc_units = ARCHS[arch]
        self.input_size = input_size or ARCH_INPUT_SIZE[arch]
        layers: list[nn.Module] = []
        self.bias_one: list[nn.Module] = []  # layers the paper initialises with bias 1
        in_ch = 3
        for spec in specs:
            out_ch = _scaled(spec.out, width, groups)
            conv = nn.Conv2d(in_ch, out_ch, spec.kernel, spec.stride, spec.padding,
                             groups=groups if spec.grouped else 1, bias=norm != "batchnorm")
            layers.append(conv)
            if spec.bias_one:
                self.bias_one.append(conv)
            if norm == "batchnorm":
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            if norm == "lrn" and spec.lrn:
                layers.append(ChannelSumLRN(out_ch))
            if spec.pool:
                layers.append(nn.MaxPool2d(3, 2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = _spatial(self.input_size, specs)
        hidden = _scaled(fc_units, width, 1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes))
        self.bias_one += [m for m in self.classifier if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def first_layer_kernels(self) -> torch.Tensor:
        return self.features[0].weight.detach()


def init_weights(model: AlexNet, scheme: str) -> None:
    """`paper`: weights N(0, 0.01), bias 1 in conv2/4/5 and the FC layers, 0 elsewhere.
    `kaiming`: He-normal for conv and hidden FC layers, N(0, 0.01) for the output layer, biases 0."""
    if scheme not in ("paper", "kaiming"):
        raise ValueError(f"unknown init {scheme!r}; valid: paper, kaiming")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        if scheme == "paper" or m is layers[-1]:
            nn.init.normal_(m.weight, 0.0, 0.01)
        else:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if m.bias is not None:
            nn.init.constant_(m.bias, 1.0 if scheme == "paper" and m in model.bias_one else 0.0)


def build_model(arch: str, num_classes: int, norm: str = "lrn", groups: int = 1, dropout: float = 0.5,
                width: float = 1.0, init: str = "kaiming", input_size: int | None = None) -> AlexNet:
    model = AlexNet(arch, num_classes, norm, groups, dropout, width, input_size)
    init_weights(model, init)
    return model
