"""The classification network CN: which of blur, noise and low light are present in y (multi-label).

The paper defers CN to its supplement; ours is small (about 60 k parameters): four stride-2
3x3 convs (16, 32, 64, 64 channels) with ReLU, global average pooling and a linear layer to
one logit per registered degradation (three: b, n, l). Trained with binary cross-entropy on the
labels c (``DegradeParams.labels``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.registry import DEGRADATIONS


class DegradationClassifier(nn.Module):
    """(N, 3, H, W) image -> (N, K) logits, one per registered degradation (K = 3: blur, noise, low light)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 64), classes: Optional[int] = None):
        super().__init__()
        self.classes = len(DEGRADATIONS) if classes is None else classes
        layers, cin = [], 3
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, self.classes)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(y).mean(dim=(2, 3)))


def classification_loss(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Multi-label binary cross-entropy between CN's logits (N, 3) and the labels c (N, 3) in {0, 1}."""
    logits = logits.float()  # fp32 under bf16 autocast
    return F.binary_cross_entropy_with_logits(logits, c.to(logits.dtype))
