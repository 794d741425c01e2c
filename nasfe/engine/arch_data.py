"""The search's data: weights and architecture train on disjoint halves of the training identities.

DARTS trains the architecture on held-out training data, reshuffled, so that alpha and beta are
chosen for what generalises, not for a fixed set. Here the training identities are split (seeded,
identity-disjoint) into a weight part and an architecture part (``search.arch_fraction`` of them);
both are drawn like training data: reshuffled every pass, with fresh references and degradations
for every batch. The validation split stays for validation metrics only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from nasfe.config import SpaceConfig
from nasfe.data.faces import FaceSource
from nasfe.data.splits import split_identities


class SubsetFaces(FaceSource):
    """A face source showing only ``records`` of ``base`` (loads are the base's)."""

    def __init__(self, base: FaceSource, records, tag: str):
        super().__init__(base.height, base.width, base.min_size)
        self.base = base
        self.name = f"{base.name}[{tag}]"
        self.records = list(records)

    def describe(self, rec):
        return self.base.describe(rec)

    def load(self, rec):
        return self.base.load(rec)


def split_for_architecture(faces, space: SpaceConfig) -> tuple[Any, Any, dict[str, int]]:
    """(weight faces, architecture faces, counts): the training split's identities divided in two
    by ``search.arch_fraction`` (seeded by ``data.seed`` and ``search.seed``)."""

    train = split_identities(faces, space.data)["train"]
    idents = sorted({r.identity for r in train})
    if len(idents) < 2:
        raise ValueError(
            f"search.arch_fraction: the training split has {len(idents)} identity; the search needs "
            "at least two (one for the weights, one for the architecture)"
        )
    rng = np.random.default_rng([space.data.seed, space.search.seed, 7])
    order = [idents[i] for i in rng.permutation(len(idents))]
    n_arch = min(len(idents) - 1, max(1, int(round(space.search.arch_fraction * len(idents)))))
    arch_ids = set(order[:n_arch])
    w_faces = SubsetFaces(faces, [r for r in train if r.identity not in arch_ids], "weights")
    a_faces = SubsetFaces(faces, [r for r in train if r.identity in arch_ids], "architecture")
    counts = {
        "weight_identities": len(idents) - n_arch,
        "arch_identities": n_arch,
        "weight_images": len(w_faces.records),
        "arch_images": len(a_faces.records),
    }
    return w_faces, a_faces, counts


def whole_split_space(space: SpaceConfig) -> SpaceConfig:
    """``space`` whose data split puts every identity of a (subset) source into 'train'."""
    data = dataclasses.replace(space.data, val_fraction=0.0, test_fraction=0.0, max_images=None)
    return dataclasses.replace(space, data=data)


class ArchBatches:
    """Endless architecture batches with a position (pass, batch) that a checkpoint can restore,
    so a resumed search sees the same batches as one that never stopped."""

    def __init__(self, maker):
        self.maker = maker
        self.epoch = 0
        self.pos = 0
        self._it: Optional[Any] = None

    def state(self) -> list[int]:
        """``[pass, batch]`` of the next batch."""
        return [self.epoch, self.pos]

    def load_state(self, state) -> None:
        """Continue at ``[pass, batch]``."""
        self.epoch, self.pos = int(state[0]), int(state[1])
        self._it = None

    def _open(self):
        self.maker.set_epoch(self.epoch)
        self._it = iter(self.maker)
        for _ in range(self.pos):  # replay the skipped draws so the stream is the same
            next(self._it)

    def __next__(self):
        if self._it is None:
            self._open()
        batch = next(self._it, None)
        if batch is None:
            self.epoch, self.pos = self.epoch + 1, 0
            self._open()
            batch = next(self._it, None)
            if batch is None:
                raise RuntimeError("the architecture part of the training split yields no batch")
        self.pos += 1
        return batch
