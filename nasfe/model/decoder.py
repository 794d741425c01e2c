"""The decoder De: fused features at half resolution -> a residual image at full resolution.

Paper's design is in its supplement; ours: 3x3 conv C -> D, ``blocks`` residual blocks, a 3x3
conv to 4 * D/2 channels and a pixel shuffle (x2), ReLU, 3x3 conv to 3 channels. NASFE adds y to
the result (global residual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.model.encoders import ResBlock


class Decoder(nn.Module):
    """(N, C, H/2, W/2) -> (N, 3, H, W) residual."""

    def __init__(self, in_channels: int, width: int, blocks: int):
        super().__init__()
        half = max(1, width // 2)
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(width, 4 * half, 3, padding=1), nn.PixelShuffle(2))
        self.tail = nn.Conv2d(half, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(F.relu(self.head(x)))
        return self.tail(F.relu(self.up(x)))
