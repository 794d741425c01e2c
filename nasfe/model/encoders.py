"""Task-specific encoders E_B (deblur), E_N (denoise), E_L (low light) and their pre-training heads.

The paper defers their design to its supplement; ours (documented in docs/MODEL.md): each
encoder sees y plus, when the classifier prior is on, three constant maps holding the predicted
degradation probabilities; a 3x3 conv to E/2 channels, ``blocks`` residual blocks at full
resolution, a stride-2 conv to E channels and ``blocks`` residual blocks at half resolution.
Output: (N, E, H/2, W/2), the resolution of fusion level 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: The three tasks, in the order of the class label c = (b, n, l).
TASKS = ("blur", "noise", "lowlight")


class ResBlock(nn.Module):
    """conv3x3, ReLU, conv3x3, plus the input (EDSR style, no normalisation)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def prior_maps(prior: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, 3) degradation probabilities -> (N, 3, h, w) constant maps; ``size`` is (h, w)."""
    return prior[:, :, None, None].expand(-1, -1, size[0], size[1])


class GlobalContext(nn.Module):
    """FiLM from the image-wide mean of the features: x * (1 + g) + b, (g, b) = MLP(mean_hw(x)).

    Starts as the identity (last layer zero), so adding it never changes an initial network's output.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, 2 * channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, b = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))).chunk(2, dim=1)
        return x * (1 + g[:, :, None, None]) + b[:, :, None, None]


class TaskEncoder(nn.Module):
    """One task encoder: (N, 3, H, W) [+ prior] -> (N, E, H/2, W/2)."""

    def __init__(self, channels: int, blocks: int, prior_channels: int = 3, global_context: bool = False):
        super().__init__()
        half = max(1, channels // 2)
        self.prior_channels = prior_channels
        self.head = nn.Conv2d(3 + prior_channels, half, 3, padding=1)
        # The prior enters at zero: pre-training feeds one-hot priors, so the weights of the other
        # tasks' channels get no gradient there. Left at random init, they would shift the
        # pre-trained features by a constant the moment joint training feeds all three.
        with torch.no_grad():
            self.head.weight[:, 3:].zero_()
        self.full = nn.Sequential(*[ResBlock(half) for _ in range(blocks)])
        self.down = nn.Conv2d(half, channels, 3, stride=2, padding=1)
        self.low = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.context = GlobalContext(channels) if global_context else None

    def forward(self, y: torch.Tensor, prior: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.prior_channels:
            if prior is None:
                raise ValueError("this encoder was built with the classifier prior: pass prior (N, 3)")
            y = torch.cat([y, prior_maps(prior.to(y.dtype), y.shape[-2:])], dim=1)
        x = self.full(F.relu(self.head(y)))
        x = self.low(F.relu(self.down(x)))
        return self.context(x) if self.context is not None else x


class PretrainHead(nn.Module):
    """Maps an encoder's output back to a residual image (N, 3, H, W) for single-task pre-training."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(feats))
