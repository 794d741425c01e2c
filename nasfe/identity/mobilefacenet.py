"""MobileFaceNet (Chen et al., 2018), laid out to load ``mobilefacenet.pt`` key for key.

Layout read off the state dict (and checked against the ONNX export of the same weights):

=================  =========================================================  =========
module             layers                                                     output
=================  =========================================================  =========
conv1              conv3x3 s2 (3->64), BN, ReLU6                              64 @ 1/2
dw_conv            depthwise 3x3, bn1, ReLU, pointwise 1x1, bn2, ReLU         64 @ 1/2
features.0         bottleneck expand 128, s2 (64->64)                         64 @ 1/4
features.1-4       bottleneck expand 128, s1, residual                        64 @ 1/4
features.5         bottleneck expand 256, s2 (64->128)                        128 @ 1/8
features.6-11      bottleneck expand 256, s1, residual                        128 @ 1/8
features.12        bottleneck expand 512, s2 (128->128)                       128 @ 1/16
features.13-14     bottleneck expand 256, s1, residual                        128 @ 1/16
conv2              conv1x1 (128->512), BN, ReLU6                              512 @ 1/16
gdconv             global depthwise 7x7 (no padding), BN (linear)             512 @ 1x1
conv3, bn          conv1x1 (512->128, bias), BN (linear)                      128
=================  =========================================================  =========

A bottleneck (``features.i.conv``) is: 0 = [conv1x1 expand, BN, ReLU6], 1 = [depthwise 3x3
(stride), BN, ReLU6], 2 = conv1x1 project, 3 = BN; the input is added when stride is 1 and the
channel count is unchanged. The embedding needs a 112x112 input (7x7 before ``gdconv``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.identity.weights import check_state_dict, read_state_dict

#: (expanded channels, output channels, stride) of features.0 ... features.14.
BOTTLENECKS = (
    [(128, 64, 2)] + [(128, 64, 1)] * 4 + [(256, 128, 2)] + [(256, 128, 1)] * 6 + [(512, 128, 2)] + [(256, 128, 1)] * 2
)
STEM_CHANNELS = 64
HEAD_CHANNELS = 512
EMBEDDING_DIM = 128
#: index in ``features`` after which the map is at 1/8 resolution (the last stride-8 block).
FEATURE_STAGE = 11


def conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn(conv(x))``; in eval mode as one convolution with the BN folded into its weight and bias.

    The backbone is frozen in eval mode, where BN is a fixed per-channel affine map: folding it
    skips BN's forward and backward passes (about a sixth of a MobileFaceNet step on a CPU). The
    weights are folded at each call, so the state dict keeps the file's layout. A BN whose ``fold``
    attribute is False runs as it is (``MobileFaceNet.fold_bn``; benchmarks compare both).
    """
    if bn.training or not getattr(bn, "fold", True):
        return bn(conv(x))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class _ConvBN(nn.Sequential):
    """0 = conv, 1 = BN, 2 = ReLU6 (the file's layout), run through :func:`conv_bn`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[2](conv_bn(self[0], self[1], x))


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return _ConvBN(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=False),
    )


class _DepthwiseSeparable(nn.Module):
    """dw_conv: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.pointwise = nn.Conv2d(c, c, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(conv_bn(self.depthwise, self.bn1, x))
        return self.relu(conv_bn(self.pointwise, self.bn2, x))


class _Bottleneck(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, linear project 1x1."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv_bn(cin, hidden, 1, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = conv_bn(c[2], c[3], c[1](c[0](x)))
        return x + y if self.residual else y


class _GlobalDepthwise(nn.Module):
    """gdconv: 7x7 depthwise without padding (a learned weighted global pool), BN, no activation."""

    def __init__(self, c: int, k: int = 7):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, k, 1, 0, groups=c, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_bn(self.depthwise, self.bn, x)


def _scaled(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class MobileFaceNetNet(nn.Module):
    """The bare MobileFaceNet network on normalised 112x112 input (no alignment, no freezing).

    ``width`` scales every channel count except the embedding size (1.0 loads the shared weights).
    """

    def __init__(self, width: float = 1.0, embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        stem = _scaled(STEM_CHANNELS, width)
        self.conv1 = _conv_bn(3, stem, 3, 2)
        self.dw_conv = _DepthwiseSeparable(stem)
        blocks, cin = [], stem
        for hidden, cout, stride in BOTTLENECKS:
            hidden, cout = _scaled(hidden, width), _scaled(cout, width)
            blocks.append(_Bottleneck(cin, hidden, cout, stride))
            cin = cout
        self.features = nn.Sequential(*blocks)
        head = _scaled(HEAD_CHANNELS, width)
        self.conv2 = _conv_bn(cin, head, 1, 1)
        self.gdconv = _GlobalDepthwise(head)
        self.conv3 = nn.Conv2d(head, embedding_dim, 1, bias=True)
        self.bn = nn.BatchNorm2d(embedding_dim)
        self.feature_channels = self.features[FEATURE_STAGE].conv[3].num_features

    def seeded_init(self, seed: int = 0) -> None:
        """Deterministic He-normal conv weights (own generator, never the global RNG); BN left at identity."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    if m.bias is not None:
                        m.bias.zero_()

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map after ``features.11``: (N, 128*width, H/8, W/8), any input size."""
        x = self.dw_conv(self.conv1(x))
        return self.features[: FEATURE_STAGE + 1](x)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """Embedding (N, 128) from the trunk map of a 112x112 input (14x14)."""
        x = self.conv2(self.features[FEATURE_STAGE + 1 :](f))
        if x.shape[-2:] != (7, 7):
            raise ValueError(
                f"MobileFaceNet: the embedding needs a 112x112 input (7x7 map before gdconv), got a {tuple(x.shape[-2:])} map"
            )
        return conv_bn(self.conv3, self.bn, self.gdconv(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised 128-d embedding of normalised 112x112 faces."""
        return self.head(self.trunk(x))


def load_mobilefacenet_state(net: MobileFaceNetNet, path) -> None:
    """Load ``mobilefacenet.pt`` strictly; a file that does not fit raises ``ValueError`` naming it and the keys."""
    state = read_state_dict(path, "MobileFaceNet")
    check_state_dict(net.state_dict(), state, path, "a MobileFaceNet state dict")
    net.load_state_dict(state, strict=True)
