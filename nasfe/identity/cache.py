"""Frozen-backbone outputs of clean photos, kept by image key across training steps.

A training step runs the frozen face backbone over photos that never change: the clean target x
(the perceptual loss's F^x) and the k clean references (I_iden's F(C_i) and L_iden's embeddings).
The data pipeline applies no augmentation to them, so each photo's outputs are a fixed function of
the photo: computed once and reused whenever the photo comes back as a target or a reference.
Degraded inputs and restored images always go through the backbone.

Keys are 63-bit integers the dataset gives each photo (``nasfe.data.batches.image_key``); an entry
is also keyed by what was computed (feature map or embedding at a size) and the compute dtype
(float32, or bf16 under autocast), so a float32 pass never reads a bf16 entry. The cache is a
least-recently-used store bounded in bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Sequence

import torch


class CleanImageCache:
    """LRU store of per-photo backbone outputs, at most ``max_bytes`` of tensors.

    ``lookup(kind, keys, compute)`` returns the outputs of the photos ``keys`` stacked in order:
    entries present are reused, the missing ones come from ``compute(positions)`` (the positions in
    ``keys`` still to compute, returning one row per position) and are stored. ``hits`` and
    ``misses`` count photos.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"CleanImageCache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def _put(self, key: Hashable, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        old = self._store.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        while self._store and self.bytes + size > self.max_bytes:
            _, gone = self._store.popitem(last=False)
            self.bytes -= gone.numel() * gone.element_size()
        self._store[key] = value
        self.bytes += size

    def lookup(self, kind: Hashable, keys: Sequence[int], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Outputs of ``keys`` stacked along a new first dimension (see the class doc)."""
        rows: list = [None] * len(keys)
        missing: list[int] = []
        for pos, key in enumerate(keys):
            hit = self._store.get((kind, key))
            if hit is None:
                missing.append(pos)
            else:
                self._store.move_to_end((kind, key))
                rows[pos] = hit
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = compute(missing)
            for pos, row in zip(missing, fresh):
                row = row.clone()  # its own storage: a view would keep the whole batch alive
                rows[pos] = row
                self._put((kind, keys[pos]), row)
        return torch.stack(rows)
