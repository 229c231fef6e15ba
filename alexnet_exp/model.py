"""AlexNet variants. The last layer outputs logits (no ReLU on them: that bug cost the CIFAR-100 notebook)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .architecture import ARCH_INPUT_SIZE, ARCHS, scaled_channels, spatial_size

NORMS = ("lrn", "batchnorm", "conv1_batchnorm", "none")
INITS = ("paper", "kaiming", "pytorch")


def _window(size: int) -> tuple[int, int]:
    """Channels before and after channel i in its window, as PyTorch's LRN has them: i - size//2 .. i + (size-1)//2."""
    return size // 2, (size - 1) // 2


def _window_sum_shifted(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """out[:, i] = sum of x[:, j] for i - before <= j <= i + after (zero outside): one shifted add per window
    position along the channel axis, which is the contiguous one in channels_last. O(window) per element where
    the 1x1 convolution is O(channels): 3x faster than it at 128 channels on a 2-core CPU, equal at 48."""
    n, c, h, w = x.shape
    padded = x.new_zeros(n, h, w, c + before + after)
    padded[..., before:before + c] = x.permute(0, 2, 3, 1)
    out = padded[..., 0:c] + padded[..., 1:1 + c] if before + after else padded[..., 0:c].clone()
    for i in range(2, before + after + 1):
        out += padded[..., i:i + c]
    return out.permute(0, 3, 1, 2)  # channels_last, as the convolutions around it want


def _window_sum_conv(x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """The same window sum as a 1x1 convolution with the banded 0/1 matrix: one GEMM (tensor cores on CUDA)."""
    return F.conv2d(x, band.to(x.dtype))


def _inverse_power(t: torch.Tensor, beta: float) -> torch.Tensor:
    """t ** -beta. On the CPU, torch's pow with a fractional exponent is scalar code (16 ms on 128x48x30x30 on
    2 cores); for the paper's beta = 0.75, t^-0.75 = rsqrt(t) * rsqrt(sqrt(t)) uses vectorised kernels (4 ms)."""
    if beta == 0.75 and t.device.type == "cpu":
        return t.rsqrt().mul_(t.sqrt().rsqrt_())
    return t.pow(-beta)


class _ChannelSumLRNFunction(torch.autograd.Function):
    """out = x * t ** -beta with t = k + alpha * W (x * x), W the banded channel-window matrix.

    The backward is written out, d out_i / d x_j = t_i^-beta [i = j] - 2 alpha beta x_i x_j t_i^(-beta-1)
    [j in window(i)], so it costs one more window sum (over the transposed window) instead of autograd's chain
    through every elementwise op. The window sum is shifted adds on the CPU and a 1x1 convolution on CUDA.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x, band, size, alpha, beta, k):
        before, after = _window(size)
        squares = x * x
        summed = _window_sum_conv(squares, band) if x.is_cuda else _window_sum_shifted(squares, before, after)
        t = summed.mul_(alpha).add_(k)
        scale = _inverse_power(t, beta)
        ctx.save_for_backward(x, band, t, scale)
        ctx.window, ctx.alpha, ctx.beta = (before, after), alpha, beta
        return x * scale

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        x, band, t, scale = ctx.saved_tensors
        before, after = ctx.window
        inner = (grad * x).mul_(scale).div_(t)
        # the transposed window: output i collects the j whose window contains i
        spread = (_window_sum_conv(inner, band.transpose(0, 1).contiguous()) if x.is_cuda
                  else _window_sum_shifted(inner, after, before))
        spread.mul_(2 * ctx.alpha * ctx.beta)
        return torch.addcmul(grad * scale, x, spread, value=-1), None, None, None, None, None


def _band(channels: int, size: int) -> torch.Tensor:
    """(C, C, 1, 1) 0/1 matrix: row i selects the channels in i's window, the same window as PyTorch's LRN."""
    idx = torch.arange(channels, device="cpu")  # not on the meta device: its first use imports for 1.8 s
    offset = idx[None, :] - idx[:, None]  # input channel - output channel
    before, after = _window(size)
    band = (offset >= -before) & (offset <= after)
    return band.float()[:, :, None, None]


class ChannelSumLRN(nn.Module):
    """Local response normalisation as in the paper: b = a / (k + alpha * sum_{window} a^2) ** beta.

    The backward is analytic (see `_ChannelSumLRNFunction`): on a 2-core CPU forward + backward runs 5-7x
    faster than `nn.LocalResponseNorm` at 128x48x30x30 (benchmarks/RESULTS.md). PyTorch's module divides alpha
    by `size`; this one does not, so it equals `nn.LocalResponseNorm(size, alpha * size, beta, k)`.
    """

    def __init__(self, channels: int, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.channels, self.size, self.alpha, self.beta, self.k = channels, size, alpha, beta, k
        self.register_buffer("band", torch.empty(channels, channels, 1, 1), persistent=False)  # CUDA's window
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fill the band; `build_model` calls it again after giving the meta-built model real storage."""
        with torch.no_grad():
            self.band.copy_(_band(self.channels, self.size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ChannelSumLRNFunction.apply(x, self.band, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Dropout(nn.Module):
    """`nn.Dropout` with its rate in a buffer. torch.compile treats buffers as inputs but bakes a float attribute
    into the graph, so with `nn.Dropout` every trial that samples a new rate recompiled, and after torch's
    limit of 8 the worker fell back to eager for good; with this one, trials of a worker share one graph."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout {p} must be in [0, 1)")
        self.rate = p
        self.register_buffer("p", torch.tensor(p), persistent=False)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.p.fill_(self.rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.rate}"


class AlexNet(nn.Module):
    def __init__(self, arch: str, num_classes: int, norm: str = "lrn", groups: int = 1, dropout: float = 0.5,
                 width: float = 1.0, input_size: int | None = None, dropout_at: str = "fc_inputs",
                 logit_relu: bool = False):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        if dropout_at not in ("fc_inputs", "fc_outputs"):
            raise ValueError(f"unknown dropout_at {dropout_at!r}; valid: fc_inputs, fc_outputs")
        specs, fc_units = ARCHS[arch]
        self.input_size = input_size or ARCH_INPUT_SIZE[arch]
        layers: list[nn.Module] = []
        self.bias_one: list[nn.Module] = []  # layers the paper initialises with bias 1
        in_ch = 3
        for i, spec in enumerate(specs):
            out_ch = scaled_channels(spec.out, width, groups)
            conv = nn.Conv2d(in_ch, out_ch, spec.kernel, spec.stride, spec.padding,
                             groups=groups if spec.grouped else 1, bias=norm != "batchnorm")
            layers.append(conv)
            if spec.bias_one:
                self.bias_one.append(conv)
            if norm == "batchnorm" or (norm == "conv1_batchnorm" and i == 0):
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            if norm == "lrn" and spec.lrn:
                layers.append(ChannelSumLRN(out_ch))
            if spec.pool:
                layers.append(nn.MaxPool2d(3, 2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        side = spatial_size(self.input_size, specs)
        hidden = scaled_channels(fc_units, width, 1)
        fc1, fc2 = nn.Linear(in_ch * side * side, hidden), nn.Linear(hidden, hidden)
        if dropout_at == "fc_inputs":  # the paper's and torchvision's: on the inputs of the two hidden layers
            head = [Dropout(dropout), fc1, nn.ReLU(inplace=True), Dropout(dropout), fc2, nn.ReLU(inplace=True)]
        else:  # the CIFAR-100 notebook's: on the outputs of the two hidden layers, after their ReLU
            head = [fc1, nn.ReLU(inplace=True), Dropout(dropout), fc2, nn.ReLU(inplace=True), Dropout(dropout)]
        # logit_relu: the CIFAR-100 notebook's network ends in a ReLU, a bug kept only to replay it: once every
        # logit is <= 0 the gradient through it is 0 and the loss stays at ln C for good (its run 8)
        tail = [nn.ReLU()] if logit_relu else []
        self.classifier = nn.Sequential(nn.Flatten(), *head, nn.Linear(hidden, num_classes), *tail)
        self.bias_one += [m for m in self.classifier if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def first_layer_kernels(self) -> torch.Tensor:
        return self.features[0].weight.detach()


def init_weights(model: AlexNet, scheme: str) -> None:
    """`paper`: weights N(0, 0.01), bias 1 in conv2/4/5 and the FC layers, 0 elsewhere.
    `kaiming`: He-normal for conv and hidden FC layers, N(0, 0.01) for the output layer, biases 0.
    `pytorch`: each layer's own default (Kaiming-uniform with a = sqrt(5)), as a model built with `nn.Conv2d`
    and `nn.Linear` and nothing else has it (the CIFAR-100 notebook's)."""
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; valid: {', '.join(INITS)}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if scheme == "pytorch":
        for m in layers:
            m.reset_parameters()
        return
    for m in layers:
        if scheme == "paper" or m is layers[-1]:
            nn.init.normal_(m.weight, 0.0, 0.01)
        else:
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if m.bias is not None:
            nn.init.constant_(m.bias, 1.0 if scheme == "paper" and m in model.bias_one else 0.0)


def build_model(arch: str, num_classes: int, norm: str = "lrn", groups: int = 1, dropout: float = 0.5,
                width: float = 1.0, init: str = "kaiming", input_size: int | None = None,
                dropout_at: str = "fc_inputs", logit_relu: bool = False) -> AlexNet:
    """The network on the default device (`with device:` picks it), initialised once by `init_weights`.

    It is built on the meta device and then materialised: the layers' own default initialisation, which
    `init_weights` would overwrite, took half of the paper net's 0.6 s build on a 2-core CPU.
    """
    device = torch.get_default_device()
    with torch.device("meta"):
        model = AlexNet(arch, num_classes, norm, groups, dropout, width, input_size, dropout_at, logit_relu)
    for module in model.modules():
        # Fresh storage per tensor; `Module.to_empty` would do the same through meta-device ops whose first use
        # imports sympy (0.5 s).
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device=device),
                                               param.requires_grad))
        for name, buffer in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.empty(buffer.shape, dtype=buffer.dtype, device=device))
        if not isinstance(module, (nn.Conv2d, nn.Linear)) and hasattr(module, "reset_parameters"):
            module.reset_parameters()  # BatchNorm's affine weights and running statistics, the LRN band
    init_weights(model, init)
    return model
