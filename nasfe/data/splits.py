"""Identity-disjoint train / validation / test splits of a face source.

Rules (see docs/DATA.md):

* No identity appears in two splits.
* Identities are shuffled with ``numpy.random.default_rng(cfg.seed)`` after sorting, then the
  first ``round(test_fraction * n)`` go to 'test', the next ``round(val_fraction * n)`` to 'val'
  and the rest to 'train' (a positive fraction gets at least one identity while at least one
  identity is left for 'train'). The same source and config always give the same split.
* An identity with a single image cannot supply reference photos, so it is dropped from 'train'
  and 'val' (counted in ``stats['single_image_identities_dropped']``); it may stay in 'test'.
* CelebA (:class:`CelebAFaces`, whose ``partition_of`` maps keys to partitions) keeps its
  official partition: each identity goes to the partition that holds most of its images and the
  fractions are ignored (``stats['partition_conflicts']`` counts identities found in several).
* ``cfg.max_images`` subsamples 'train' (seeded); identities left with one image are then dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from nasfe.config import DataConfig
from nasfe.data.faces import CelebAFaces, FaceRecord, FaceSource

SPLITS = ("train", "val", "test")


class Splits(dict):
    """``{'train': [...], 'val': [...], 'test': [...]}`` of :class:`FaceRecord`, with ``.stats``."""

    stats: dict[str, int]


def _assign_by_fraction(identities: list[str], cfg: DataConfig) -> dict[str, str]:
    order = sorted(identities)
    perm = np.random.default_rng(cfg.seed).permutation(len(order))
    shuffled = [order[i] for i in perm]
    n = len(shuffled)

    def count(frac: float) -> int:
        return max(1, int(round(frac * n))) if frac > 0 else 0

    n_test, n_val = count(cfg.test_fraction), count(cfg.val_fraction)
    if n_test + n_val >= n:
        raise ValueError(
            f"split_identities: {n} identities cannot give val_fraction={cfg.val_fraction}, "
            f"test_fraction={cfg.test_fraction} and still leave one for 'train'"
        )
    where = {}
    for k, ident in enumerate(shuffled):
        where[ident] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
    return where


def _assign_by_partition(source: FaceSource, stats: Counter) -> dict[str, str]:
    votes: dict[str, Counter] = defaultdict(Counter)
    for r in source.records:
        votes[r.identity][source.partition_of[r.key]] += 1
    where = {}
    for ident, c in votes.items():
        if len(c) > 1:
            stats["partition_conflicts"] += 1
        # Majority partition; ties broken in the order train, val, test.
        where[ident] = max(SPLITS, key=lambda s: (c[s], -SPLITS.index(s)))
    return where


def split_identities(source: FaceSource, cfg: DataConfig) -> Splits:
    """Split ``source.records`` into identity-disjoint 'train', 'val' and 'test' lists (rules above).

    Returns a :class:`Splits` dict; its ``.stats`` counts identities and images per split and
    what was dropped.
    """
    if not source.records:
        raise ValueError(f"split_identities: source {source.name!r} has no records")
    stats: Counter = Counter()
    groups: dict[str, list[FaceRecord]] = defaultdict(list)
    for r in source.records:
        groups[r.identity].append(r)
    if isinstance(source, CelebAFaces):
        where = _assign_by_partition(source, stats)
    else:
        where = _assign_by_fraction(list(groups), cfg)
    out = Splits({s: [] for s in SPLITS})
    for ident in sorted(groups):
        split = where[ident]
        recs = groups[ident]
        if len(recs) < 2 and split != "test":
            stats["single_image_identities_dropped"] += 1
            continue
        out[split].extend(recs)
    if cfg.max_images is not None and len(out["train"]) > cfg.max_images:
        rng = np.random.default_rng([cfg.seed, 1])
        keep = sorted(rng.choice(len(out["train"]), size=cfg.max_images, replace=False).tolist())
        chosen = [out["train"][i] for i in keep]
        per_id = Counter(r.identity for r in chosen)
        out["train"] = [r for r in chosen if per_id[r.identity] >= 2]
        stats["max_images_singletons_dropped"] = len(chosen) - len(out["train"])
    for s in SPLITS:
        stats[f"{s}_images"] = len(out[s])
        stats[f"{s}_identities"] = len({r.identity for r in out[s]})
    if not out["train"]:
        raise ValueError(
            f"split_identities: no training identity with at least two images in {source.name!r} (stats: {dict(stats)})"
        )
    out.stats = dict(stats)
    return out
