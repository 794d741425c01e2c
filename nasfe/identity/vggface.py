"""VGGFace (Parkhi et al., 2015) truncated at pool3, and the loader for ``vgg_face_dag.pth``.

VGG-16 layout: conv1_1, conv1_2, pool1, conv2_1, conv2_2, pool2, conv3_1, conv3_2, conv3_3, pool3
(3x3 convs, padding 1, ReLU after each; 2x2 max pools). pool3 has 256 channels at H/8 x W/8.
Layers after pool3 (conv4_*, conv5_*, fc6-fc8) are never built: the paper only uses pool3.

The widely used converted weights ``vgg_face_dag.pth`` are a state dict keyed ``conv1_1.weight``,
``conv1_1.bias`` ... ``fc8.bias`` and expect RGB input on 0-255 minus the mean
``VGGFACE_MEAN`` (no std division).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nasfe.identity.weights import check_state_dict, read_state_dict

#: (name, output channels) of the convs up to pool3; "pool" marks a 2x2 max pool.
VGG_POOL3_LAYOUT = (
    ("conv1_1", 64),
    ("conv1_2", 64),
    ("pool", 0),
    ("conv2_1", 128),
    ("conv2_2", 128),
    ("pool", 0),
    ("conv3_1", 256),
    ("conv3_2", 256),
    ("conv3_3", 256),
    ("pool", 0),
)
#: RGB mean of vgg_face_dag on the 0-255 scale.
VGGFACE_MEAN = (129.186, 104.762, 93.594)
#: Keys of vgg_face_dag.pth beyond pool3; present in the file and ignored.
VGG_IGNORED_LAYERS = ("conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7", "fc8")


class VGGFacePool3(nn.Module):
    """VGG-16 convs up to pool3 on mean-subtracted 0-255 RGB; ``width`` scales the channels."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        if width <= 0:
            raise ValueError(f"VGGFacePool3: width must be > 0, got {width}")
        cin = 3
        self.names: list[str] = []
        for name, c in VGG_POOL3_LAYOUT:
            if name == "pool":
                continue
            cout = max(1, int(round(c * width)))
            self.add_module(name, nn.Conv2d(cin, cout, 3, 1, 1))
            self.names.append(name)
            cin = cout
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """pool3 map (N, 256*width, floor(H/8), floor(W/8)) of a normalised input."""
        for name, _ in VGG_POOL3_LAYOUT:
            if name == "pool":
                x = nn.functional.max_pool2d(x, 2, 2)
            else:
                x = torch.relu(getattr(self, name)(x))
        return x

    def seeded_init(self, seed: int = 0) -> None:
        """Deterministic He-normal weights, zero biases (the built-in default without a file)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name in self.names:
                conv = getattr(self, name)
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()


def load_vggface_state(module: VGGFacePool3, path: str | Path) -> None:
    """Load the pool3 part of a ``vgg_face_dag.pth`` state dict into ``module`` by key name.

    conv4_* ... fc8 keys are ignored; a missing conv1_1 ... conv3_3 key, an unknown key or a shape
    that does not fit raises ``ValueError`` naming the file and the keys.
    """
    state = read_state_dict(path, "VGGFace")
    own = module.state_dict()
    check_state_dict(
        own, state, path, "a vgg_face_dag state dict for pool3", ignored=lambda k: k.split(".")[0] in VGG_IGNORED_LAYERS
    )
    module.load_state_dict({k: state[k] for k in own}, strict=True)
