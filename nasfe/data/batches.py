"""Training samples and batches: a clean face x, k reference faces of the same person, and the
degraded input y made on the device.

* :class:`FaceRefDataset`  item ``{'x': (3,H,W), 'refs': (k,3,H,W), 'identity': int, ...}``
* :class:`ShardSampler`    deterministic per-rank shard of a (shuffled) index list
* :class:`Batch`           ``(y, x, c, refs, params)`` of one step
* :class:`BatchMaker`      faces -> identity-disjoint split -> DataLoader over this rank's shard ->
                           x and refs to the device -> ``Degrader`` on the device -> :class:`Batch`
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from nasfe.config import SpaceConfig
from nasfe.data.faces import FaceRecord, FaceSource, fit_to_size, open_faces
from nasfe.data.splits import SPLITS, split_identities
from nasfe.imageio import ImageReadError, to_tensor
from nasfe.degrade.pipeline import Degrader

log = logging.getLogger(__name__)

_MAX_SUBSTITUTIONS = 50  # tries to find a readable sample before giving up


def image_key(record: FaceRecord, height: int, width: int) -> int:
    """A stable 63-bit key of one photo as the dataset serves it (record, size): the key under
    which the training loop keeps the frozen backbone's outputs of clean photos."""
    digest = hashlib.blake2b(f"{record.identity}\0{record.key}\0{height}x{width}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class FaceRefDataset(Dataset):
    """Clean faces with ``k`` reference photos of the same identity (paper section 3.2).

    Item ``i`` is ``{'x': float (3,H,W), 'refs': float (k,3,H,W), 'identity': int, 'record': int,
    'ref_records': int64 (k,), 'key': int, 'ref_keys': int64 (k,)}`` with values in [0, 1];
    ``record`` and ``ref_records`` index ``self.records`` (which files were used), ``key`` and
    ``ref_keys`` are their :func:`image_key`. ``refs`` are other records of the same identity than x (never x's own
    record), drawn without replacement when there are at least k others, with replacement
    otherwise. Draws depend only on (seed, epoch, i): call :meth:`set_epoch` for a new draw.

    Records of identities with a single record cannot have references; when ``k > 0`` they are
    left out (``skipped['single_image_identity']``). An unreadable image is skipped and counted
    (``skipped['unreadable']``, one warning per file): a bad reference is replaced by another
    reference, a bad x by another sample of the dataset. With DataLoader workers the counts live in
    the worker processes; ``skipped`` here then only reflects loads done in this process.
    ``identity`` is the position of the identity in ``identity_names`` (sorted).
    """

    def __init__(
        self,
        source: FaceSource,
        records: Sequence[FaceRecord],
        k: int,
        seed: int = 0,
        height: Optional[int] = None,
        width: Optional[int] = None,
    ):
        if k < 0:
            raise ValueError(f"FaceRefDataset: k must be >= 0, got {k}")
        self.source = source
        self.records = list(records)
        self.k = int(k)
        self.seed = int(seed)
        self.epoch = 0
        self.height = int(height or source.height)
        self.width = int(width or source.width)
        self.skipped: dict[str, int] = {}
        self._bad: set[int] = set()
        self.identity_names = sorted({r.identity for r in self.records})
        self._id_index = {name: n for n, name in enumerate(self.identity_names)}
        members: dict[str, list[int]] = defaultdict(list)
        for n, r in enumerate(self.records):
            members[r.identity].append(n)
        self._members = dict(members)
        self.items = [n for n, r in enumerate(self.records) if self.k == 0 or len(self._members[r.identity]) > 1]
        dropped = len(self.records) - len(self.items)
        if dropped:
            self.skipped["single_image_identity"] = dropped
        if not self.items:
            raise ValueError(
                f"FaceRefDataset: no usable record in {source.name!r} "
                f"({len(self.records)} records; every identity has a single image and k={k})"
            )

    def _key(self, rec_index: int) -> int:
        return image_key(self.records[rec_index], self.height, self.width)

    def set_epoch(self, epoch: int) -> None:
        """Change the reference draw (and substitution choices) to those of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, rec_index: int) -> Optional[torch.Tensor]:
        """The record as a (3,H,W) tensor, or None (counted, warned once) when it cannot be read."""
        if rec_index in self._bad:
            return None
        rec = self.records[rec_index]
        try:
            img = self.source.load(rec)
        except ImageReadError as exc:
            self._bad.add(rec_index)
            self.skipped["unreadable"] = self.skipped.get("unreadable", 0) + 1
            log.warning("skipping unreadable face: %s", exc)
            return None
        return to_tensor(fit_to_size(img, self.height, self.width))

    def _refs(self, rec_index: int, rng: np.random.Generator) -> Optional[tuple[torch.Tensor, list[int]]]:
        ident = self.records[rec_index].identity
        out: list[torch.Tensor] = []
        used: list[int] = []
        while len(out) < self.k:
            others = [m for m in self._members[ident] if m != rec_index and m not in self._bad]
            if not others:
                return None
            need = self.k - len(out)
            picks = rng.choice(others, size=need, replace=len(others) < need)
            for m in picks.tolist():
                t = self._load(m)
                if t is not None:
                    out.append(t)
                    used.append(m)
        if not out:
            return torch.zeros(0, 3, self.height, self.width), used
        return torch.stack(out), used

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Any]:
        # (epoch, i) overrides ``self.epoch``: persistent DataLoader workers hold their own copy of
        # the dataset, so the epoch travels with the index (see ``_EpochIndices``)
        epoch, i = (int(i[0]), int(i[1])) if isinstance(i, tuple) else (self.epoch, i)
        if not 0 <= i < len(self.items):
            raise IndexError(f"FaceRefDataset index {i} out of range ({len(self.items)})")
        rng = np.random.default_rng([self.seed, epoch, int(i)])
        candidate = i
        for _ in range(_MAX_SUBSTITUTIONS):
            rec_index = self.items[candidate]
            x = self._load(rec_index)
            got = self._refs(rec_index, rng) if x is not None else None
            if x is not None and got is not None:
                ident = self._id_index[self.records[rec_index].identity]
                return {
                    "x": x,
                    "refs": got[0],
                    "identity": ident,
                    "record": rec_index,
                    "ref_records": torch.tensor(got[1], dtype=torch.int64),
                    "key": self._key(rec_index),
                    "ref_keys": torch.tensor([self._key(m) for m in got[1]], dtype=torch.int64),
                }
            candidate = int(rng.integers(len(self.items)))
        raise RuntimeError(
            f"FaceRefDataset: gave up after {_MAX_SUBSTITUTIONS} unreadable samples near index {i} "
            f"of {self.source.name!r} (skipped: {self.skipped})"
        )


class ShardSampler(Sampler[int]):
    """Indices ``0..n-1`` for one rank of ``world_size``: shuffled by (seed, epoch) when ``shuffle``,
    then every ``world_size``-th index starting at ``rank``.

    With ``drop_last`` the tail is cut so every rank gets the same count (training); without it the
    shards differ by at most one and together cover every index exactly once (evaluation).
    """

    def __init__(
        self, n: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0, drop_last: bool = True
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch``."""
        self.epoch = int(epoch)

    def _all(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            order = order[: (self.n // self.world_size) * self.world_size]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._all()[self.rank :: self.world_size])

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))


class _EpochIndices(Sampler[tuple[int, int]]):
    """``(epoch, index)`` pairs from a :class:`ShardSampler` and the dataset's current epoch.

    Persistent workers keep the dataset object they were started with; the sampler runs in the
    main process, so the pair carries each epoch's reference draw to them.
    """

    def __init__(self, sampler: ShardSampler, dataset: FaceRefDataset):
        self.sampler, self.dataset = sampler, dataset

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.dataset.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


@dataclass
class Batch:
    """One step's data: degraded ``y`` (N,3,H,W), clean ``x`` (N,3,H,W), labels ``c`` (N,3) = (b, n, l),
    references ``refs`` (N,k,3,H,W) or None, the degradation ``params`` (a ``DegradeParams``, on
    CPU), ``identity`` (N,) int64 or None, and the photos' keys (:func:`image_key`, host lists:
    reading them costs no device sync): ``keys`` N of x's, ``ref_keys`` N lists of k, or None."""

    y: torch.Tensor
    x: torch.Tensor
    c: torch.Tensor
    refs: Optional[torch.Tensor]
    params: Any = None
    identity: Optional[torch.Tensor] = None
    keys: Optional[list[int]] = None
    ref_keys: Optional[list[list[int]]] = None

    def to(self, device: str | torch.device, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor field moved to ``device`` (``params`` stays as it is)."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            moved[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return Batch(**moved)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _mix(parts: Sequence[int]) -> int:
    """A 63-bit seed mixed from integers (stable across runs and machines)."""
    a, b = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32).tolist()
    return ((a << 32) | b) & ((1 << 63) - 1)


class BatchMaker:
    """Iterable of :class:`Batch` for one split and one rank.

    Faces come from ``faces`` or ``open_faces(space.data)``; records from
    ``split_identities(faces, space.data)[split]``; each item holds ``space.identity.refs``
    references, resized to ``space.data.height`` x ``space.data.width``. 'train' shuffles per epoch
    and drops the last partial batch (and the shard tail, so every rank has the same number of
    batches); 'val' and 'test' keep order, keep every sample once across ranks, and use the same
    references and degradations every epoch. Degradation runs on ``device`` with
    ``degrader(x, generator)`` (default ``nasfe.degrade.pipeline.Degrader(space.degrade)``) and a
    CPU generator seeded from (seed, epoch, rank, split).
    """

    def __init__(
        self,
        space: SpaceConfig,
        split: str,
        batch_size: int,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        faces: Optional[FaceSource] = None,
        degrader: Optional[Callable[[torch.Tensor, torch.Generator], tuple]] = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"BatchMaker: split must be one of {SPLITS}, got {split!r}")
        if batch_size < 1:
            raise ValueError(f"BatchMaker: batch_size must be >= 1, got {batch_size}")
        self.space = space
        self.split = split
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.train = split == "train"
        self.epoch = 0
        self.faces = faces if faces is not None else open_faces(space.data)
        self.splits = split_identities(self.faces, space.data)
        records = self.splits[split]
        if not records:
            raise ValueError(
                f"BatchMaker: split {split!r} of {self.faces.name!r} is empty (stats: {self.splits.stats})"
            )
        self.dataset = FaceRefDataset(
            self.faces, records, k=space.identity.refs, seed=seed, height=space.data.height, width=space.data.width
        )
        self.sampler = ShardSampler(
            len(self.dataset), rank, world_size, shuffle=self.train, seed=seed, drop_last=self.train
        )
        workers = space.data.workers
        # workers live as long as the maker (not re-spawned every pass; a search makes hundreds of
        # validation passes); pinned host memory makes the copies to the GPU asynchronous
        self.loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=_EpochIndices(self.sampler, self.dataset),
            drop_last=self.train,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
        )
        if len(self.loader) == 0:
            raise ValueError(
                f"BatchMaker: split {split!r} gives rank {rank} of {world_size} only "
                f"{len(self.sampler)} samples, fewer than batch_size={batch_size}"
            )
        self._degrader = degrader

    @property
    def degrader(self):
        """The degradation callable (built on first use so that tests can inject their own)."""
        if self._degrader is None:
            self._degrader = Degrader(self.space.degrade)
        return self._degrader

    def set_epoch(self, epoch: int) -> None:
        """Shuffle, references and degradations of ``epoch`` (training split only; others stay fixed)."""
        self.epoch = int(epoch) if self.train else 0
        self.sampler.set_epoch(self.epoch)
        self.dataset.set_epoch(self.epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(_mix([self.seed, self.epoch, self.rank, SPLITS.index(self.split)]))
        nb = self.device.type == "cuda"
        for item in self.loader:
            x = item["x"].to(self.device, non_blocking=nb)
            refs = item["refs"].to(self.device, non_blocking=nb) if self.dataset.k > 0 else None
            y, params = self.degrader(x, gen)
            c = params.labels().to(self.device)
            yield Batch(
                y=y,
                x=x,
                c=c,
                refs=refs,
                params=params,
                identity=item["identity"].to(self.device),
                keys=item["key"].tolist(),
                ref_keys=item["ref_keys"].tolist() if refs is not None else None,
            )


def cycle(maker) -> Iterator[Any]:
    """Endless batches from a batch maker, moving to its next epoch when one runs out."""
    epoch = 0
    while True:
        if hasattr(maker, "set_epoch"):
            maker.set_epoch(epoch)
        empty = True
        for batch in maker:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the batch source yields no batches (too few images for one batch?)")
        epoch += 1
