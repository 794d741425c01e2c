"""The candidate operators of a fusion-cell edge (section 3.1) and the ``OPS`` name table.

Every operator maps a (N, C, H, W) feature map to a (N, C, H, W) feature map. ``OPS`` (the
operator registry ``nasfe.registry.OPERATORS``) maps each name to a constructor ``(C) -> nn.Module``,
as DARTS does; it holds the paper's operators (``nasfe.config.PAPER_OPERATORS``) and any operator
added with :func:`register_operator`.
No normalisation layers: restoration networks lose accuracy with batch statistics (EDSR), and
the mixed operation is already a convex combination (softmax weights sum to one).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.registry import OPERATORS

#: Wiener regulariser of the FFT operator (the paper's epsilon, "inverse of the SNR").
FFT_EPS = 0.01


class Zero(nn.Module):
    """No connection: all zeros of the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class Identity(nn.Module):
    """Skip connection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Float32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs in float32 under autocast (float64 stays float64); as ``nn.Conv2d`` otherwise.

    For the depthwise dilated convolution of :class:`DilConv`: the CPU's bf16 backward of that
    convolution in channels_last layout (oneDNN, from 32 x 32 pixels up) returns a weight gradient
    read from uninitialised memory (NaN or values near 1e33). Float32 is correct on every device,
    and a depthwise convolution is a small share of a step's work.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        wide = torch.promote_types(x.dtype, torch.float32)
        bias = None if self.bias is None else self.bias.to(wide)
        with torch.autocast(x.device.type, enabled=False):
            return self._conv_forward(x.to(wide), self.weight.to(wide), bias)


class DilConv(nn.Module):
    """ReLU, depthwise k x k convolution with dilation 2, pointwise 1 x 1 (DARTS' dil_conv).

    The depthwise convolution runs in float32 under autocast (:class:`Float32Conv2d`).
    """

    def __init__(self, c: int, k: int, dilation: int = 2):
        super().__init__()
        pad = dilation * (k - 1) // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            Float32Conv2d(c, c, k, padding=pad, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU, depthwise k x k, pointwise 1 x 1) units (DARTS' sep_conv)."""

    def __init__(self, c: int, k: int):
        super().__init__()
        pad = (k - 1) // 2
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, padding=pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=True),
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, padding=pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Res2Block(nn.Module):
    """Res2Net block (Gao et al.): 1x1, hierarchical 3x3 over ``scale`` channel groups, 1x1, + x.

    The inner width is ``scale * ceil(C / scale)`` so any C works (partial-channel mode gives
    small C).
    """

    def __init__(self, c: int, scale: int = 4):
        super().__init__()
        self.scale = max(1, min(scale, c))
        self.width = -(-c // self.scale)
        inner = self.width * self.scale
        self.reduce = nn.Conv2d(c, inner, 1, bias=True)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, padding=1, bias=True) for _ in range(self.scale - 1)
        )
        self.expand = nn.Conv2d(inner, c, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(F.relu(self.reduce(x)), self.width, dim=1)
        outs = [parts[0]]
        prev = None
        for conv, part in zip(self.convs, parts[1:]):
            prev = F.relu(conv(part if prev is None else part + prev))
            outs.append(prev)
        return x + self.expand(torch.cat(outs, dim=1))


#: Head size the fused CUDA attention kernels accept for every dtype: the memory-efficient kernel
#: needs a multiple of 4 (fp32) or 8 (fp16/bf16), flash and cuDNN equal q/k/v sizes in fp16/bf16.
ATTN_HEAD_MULTIPLE = 8


def attention_head_size(c: int) -> int:
    """The padded head size ``SelfAttention`` passes to ``scaled_dot_product_attention`` at width ``c``."""
    return -(-max(c, 1) // ATTN_HEAD_MULTIPLE) * ATTN_HEAD_MULTIPLE


class SelfAttention(nn.Module):
    """SAGAN self-attention: x + gamma * softmax(q k^T) v, with gamma initialised to 0.

    Keys and values are 2x2 max-pooled as in the SAGAN/BigGAN reference code, and the product is
    computed with ``scaled_dot_product_attention`` (logits scaled by 1/sqrt(d), unlike SAGAN).
    q, k and v are zero-padded to one head size, a multiple of 8 (``attention_head_size``): zeros
    leave q.k and the first C output channels unchanged, and every fused CUDA kernel then accepts
    the call (memory-efficient in fp32, flash/cuDNN in bf16), so the (HW x HW/4) matrix is never
    stored. Without padding, C/K = 6 channels (paper space, K = 4) fall back to the math kernel:
    about 40 MB per image per edge at level 0.
    """

    def __init__(self, c: int):
        super().__init__()
        d = max(1, c // 8)
        self.q = nn.Conv2d(c, d, 1, bias=False)
        self.k = nn.Conv2d(c, d, 1, bias=False)
        self.v = nn.Conv2d(c, c, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)  # (N, HW, d)
        k, v = self.k(x), self.v(x)
        if h >= 2 and w >= 2:
            k, v = F.max_pool2d(k, 2), F.max_pool2d(v, 2)
        k = k.flatten(2).transpose(1, 2)
        v = v.flatten(2).transpose(1, 2)
        d = q.shape[-1]
        e = attention_head_size(c)
        # fused kernels also need the last stride 1 (the transposes above leave it at HW)
        q, k, v = (F.pad(t, (0, e - t.shape[-1])).contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=d**-0.5).squeeze(1)[
            ..., :c
        ]
        return x + self.gamma * out.transpose(1, 2).reshape(n, c, h, w)


class ResidualOp(nn.Module):
    """Residual operator (Fig. 4a): estimate the noise in the features and subtract it."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.conv2(F.relu(self.conv1(x)))


def wiener_deconvolve(x1: torch.Tensor, x2: torch.Tensor, eps: float = FFT_EPS) -> torch.Tensor:
    """Eq. 2 read as a Wiener deconvolution of x1 by the "kernel" x2, per channel.

    X_out = conj(X2) X1 / (|X2|^2 + eps), with orthonormal real 2-D FFTs so that eps does not
    depend on the image size. The paper prints X2 X1 (the conjugate is lost in typesetting: the
    Wiener filter is conj(K) / (|K|^2 + 1/SNR)). Computed in float32 at least (FFTs under bf16
    autocast are unsupported/inaccurate); float64 inputs stay float64.
    """
    h, w = x1.shape[-2:]
    wide = torch.promote_types(x1.dtype, torch.float32)
    X1 = torch.fft.rfft2(x1.to(wide), norm="ortho")
    X2 = torch.fft.rfft2(x2.to(wide), norm="ortho")
    X = torch.conj(X2) * X1 / (X2.real.square() + X2.imag.square() + eps)
    return torch.fft.irfft2(X, s=(h, w), norm="ortho").to(x1.dtype)


class FFTOp(nn.Module):
    """FFT operator (Fig. 4b): split channels in halves, 3x3 conv each, Wiener-deconvolve, 1x1 back to C."""

    def __init__(self, c: int, eps: float = FFT_EPS):
        super().__init__()
        self.c1 = c // 2 if c > 1 else 1
        c2 = c - self.c1 if c > 1 else 1
        half = max(1, -(-c // 2))
        self.eps = eps
        self.conv1 = nn.Conv2d(self.c1, half, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(c2, half, 3, padding=1, bias=True)
        self.out = nn.Conv2d(half, c, 1, bias=True)
        self._single = c == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._single:  # one channel cannot be split: both branches see it
            a, b = x, x
        else:
            a, b = x[:, : self.c1], x[:, self.c1 :]
        return self.out(wiener_deconvolve(self.conv1(a), self.conv2(b), self.eps))


class DeveilOp(nn.Module):
    """Deveiling operator (Fig. 4c): x_out = A * x_in with a learned mask A = 1 + f(x), f = conv2(relu(conv1(x))).

    The "1 +" starts the operator near identity. ``bounded`` (``model.stable_cells``): A = 1 + tanh(f),
    a gain in (0, 2). Unbounded, A grows with x, so the operator is quadratic in its input and a chain
    of them squares the scale at every step (non-finite outputs of a 12-block cell at initialisation).
    """

    def __init__(self, c: int, bounded: bool = False):
        super().__init__()
        self.bounded = bounded
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv2(F.relu(self.conv1(x)))
        return (1.0 + (torch.tanh(f) if self.bounded else f)) * x


def built_param_count(constructor: Callable[[int], nn.Module], c: int) -> int:
    """Learnable parameters of ``constructor(c)``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return sum(p.numel() for p in constructor(c).parameters() if p.requires_grad)


def register_operator(
    name: str,
    constructor: Optional[Callable[[int], nn.Module]] = None,
    *,
    param_count: Optional[Callable[[int], int]] = None,
):
    """Add an edge operator: ``constructor(C)`` returns a module mapping (N, C, H, W) to (N, C, H, W).

    ``param_count(C)``, optional, gives its learnable parameters by formula (else
    :func:`op_param_count` builds it on the meta device). The ``param_free`` flag (what
    ``nasfe.genotype.param_free_share`` counts as a collapse) is measured here. Usable as a decorator.
    """
    if constructor is None:
        return lambda ctor: register_operator(name, ctor, param_count=param_count)
    OPERATORS.register(name, constructor, param_count=param_count, param_free=built_param_count(constructor, 8) == 0)
    return constructor


#: name -> constructor (C) -> module: the operator registry, the paper's operators first.
OPS = OPERATORS

for _name, _constructor in {
    "dil_conv_3x3": lambda c: DilConv(c, 3),
    "dil_conv_5x5": lambda c: DilConv(c, 5),
    "sep_conv_3x3": lambda c: SepConv(c, 3),
    "sep_conv_5x5": lambda c: SepConv(c, 5),
    "res2block": lambda c: Res2Block(c),
    "self_attn": lambda c: SelfAttention(c),
    "res_op": lambda c: ResidualOp(c),
    "fft_op": lambda c: FFTOp(c),
    "deveil_op": lambda c: DeveilOp(c),
    "skip_connect": lambda c: Identity(),
    "zero": lambda c: Zero(),
}.items():
    register_operator(_name, _constructor)
del _name, _constructor


def build_op(name: str, c: int, stable: bool = False) -> nn.Module:
    """Operator ``name`` at width ``c``; ``stable`` (``model.stable_cells``) bounds deveil's gain."""
    if stable and name == "deveil_op":
        return DeveilOp(c, bounded=True)
    return OPS[name](c)


def op_param_count(name: str, c: int) -> int:
    """Learnable parameters of operator ``name`` at width ``c``, from its formula (not by building it).

    Used to size search spaces and, in tests, as an independent check of the built modules. An
    operator registered without a formula is counted by building it on the meta device.
    """
    formula = OPERATORS.meta(name).get("param_count") if name in OPERATORS else None
    if formula is not None:
        return int(formula(c))

    def conv(cin: int, cout: int, k: int, bias: bool = True, groups: int = 1) -> int:
        return cout * (cin // groups) * k * k + (cout if bias else 0)

    if name in ("skip_connect", "zero"):
        return 0
    if name.startswith("dil_conv_"):
        k = int(name[-1])
        return conv(c, c, k, bias=False, groups=c) + conv(c, c, 1)
    if name.startswith("sep_conv_"):
        k = int(name[-1])
        return 2 * (conv(c, c, k, bias=False, groups=c) + conv(c, c, 1))
    if name == "res2block":
        s = max(1, min(4, c))
        w = -(-c // s)
        return conv(c, s * w, 1) + (s - 1) * conv(w, w, 3) + conv(s * w, c, 1)
    if name == "self_attn":
        d = max(1, c // 8)
        return 2 * conv(c, d, 1, bias=False) + conv(c, c, 1, bias=False) + 1
    if name in ("res_op", "deveil_op"):
        return 2 * conv(c, c, 3)
    if name == "fft_op":
        c1 = c // 2 if c > 1 else 1
        c2 = c - c1 if c > 1 else 1
        half = max(1, -(-c // 2))
        return conv(c1, half, 3) + conv(c2, half, 3) + conv(half, c, 1)
    if name in OPERATORS:
        return built_param_count(OPERATORS[name], c)
    raise KeyError(f"unknown operator {name!r}; known: {sorted(OPS)}")
