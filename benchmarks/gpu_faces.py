"""Real faces for the GPU check: copy a carry-sized subset of ``../shared/data/celeba-id``, read it back.

Run here (the machine with ``../shared``), before the device command:

    .venv/bin/python benchmarks/gpu_check.py --prepare data/gpu_faces

Layout written (``data/`` is git-ignored, so the folder never enters git; the device command names
it in ``carry``)::

    data/gpu_faces/train/<identity>/<file>.jpg   training and validation identities (the project's
                                                 split of the source, seed 0), identities.csv
    data/gpu_faces/test/<identity>/<file>.jpg    test identities only: Test-BN / Test-BNL are built
                                                 from these on the device, identities.csv
    data/gpu_faces/mobilefacenet.pt              the pretrained MobileFaceNet, when ../shared has it
    data/gpu_faces/prepared.json                 what was copied, from where, how many bytes

Files are copied unchanged (JPEG bytes), never re-encoded. The total stays under ``max_mib``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "celeba-id"
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models" / "mobilefacenet" / "mobilefacenet.pt"
WEIGHTS_NAME = "mobilefacenet.pt"


def _round_robin(groups: dict[str, list], limit: int) -> list:
    """Up to ``limit`` items taking one per group in turn (groups in sorted order)."""
    out, depth = [], 0
    while len(out) < limit and any(depth < len(v) for v in groups.values()):
        for key in sorted(groups):
            if depth < len(groups[key]) and len(out) < limit:
                out.append(groups[key][depth])
        depth += 1
    return out


def _write(records, source, dest: Path) -> int:
    """Copy ``records`` (FaceRecord of a FolderFaces ``source``) to ``dest`` with a manifest; bytes copied."""
    total = 0
    rows = []
    for rec in records:
        src = source.path(rec)
        rel = Path(rec.identity) / src.name
        (dest / rel.parent).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
        total += src.stat().st_size
        rows.append({"file": rel.as_posix(), "identity": rec.identity})
    with open(dest / "identities.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "identity"])
        w.writeheader()
        w.writerows(rows)
    return total


def prepare_faces(
    dest: str | Path,
    source: str | Path = DEFAULT_SOURCE,
    train_images: int = 3000,
    test_images: int = 100,
    max_mib: float = 48.0,
    seed: int = 0,
    weights: Optional[str | Path] = DEFAULT_WEIGHTS,
) -> dict:
    """Copy faces of ``source`` (a folder of identities) into ``dest`` for the GPU check (layout above).

    Identities are split as the project splits any face folder (``split_identities``, 10 % val,
    10 % test, ``seed``): train and val identities go to ``train/`` (at most ``train_images``
    images, drawn at random, identities left with one image dropped), test identities to ``test/``
    (``test_images`` images, one identity at a time in turn). Stops adding training images before
    the whole folder would pass ``max_mib``. Returns what ``prepared.json`` records.
    """
    from nasfe.config import DataConfig
    from nasfe.data.faces import FolderFaces
    from nasfe.data.splits import split_identities

    dest, source = Path(dest), Path(source)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest}: not empty; remove it first (the copy is made in one go)")
    faces = FolderFaces(source)
    splits = split_identities(faces, DataConfig(source="folder", root=str(source), seed=seed))
    budget = int(max_mib * 2**20)
    weights = Path(weights) if weights else None
    if weights is not None and weights.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, dest / WEIGHTS_NAME)
        budget -= weights.stat().st_size
    else:
        weights = None

    by_id: dict[str, list] = {}
    for rec in splits["test"]:
        by_id.setdefault(rec.identity, []).append(rec)
    test = _round_robin(by_id, test_images)
    test_bytes = _write(test, faces, dest / "test")
    budget -= test_bytes

    pool = splits["train"] + splits["val"]
    order = np.random.default_rng([seed, 11]).permutation(len(pool))
    chosen, used = [], 0
    for i in order[:train_images]:
        size = faces.path(pool[i]).stat().st_size
        if used + size > budget:
            break
        chosen.append(pool[i])
        used += size
    counts: dict[str, int] = {}
    for rec in chosen:
        counts[rec.identity] = counts.get(rec.identity, 0) + 1
    chosen = sorted((r for r in chosen if counts[r.identity] > 1), key=lambda r: (r.identity, r.key))
    train_bytes = _write(chosen, faces, dest / "train")
    info = {
        "source": str(source),
        "seed": seed,
        "train_images": len(chosen),
        "train_identities": len({r.identity for r in chosen}),
        "test_images": len(test),
        "test_identities": len({r.identity for r in test}),
        "weights": WEIGHTS_NAME if weights else None,
        "bytes": train_bytes + test_bytes + (weights.stat().st_size if weights else 0),
    }
    (dest / "prepared.json").write_text(json.dumps(info, indent=1))
    return info


def load_test_faces(root: str | Path, height: int, width: int, limit: int):
    """Up to ``limit`` clean test faces of ``root``/test as a (N, 3, height, width) float tensor in
    [0, 1], one identity at a time in turn, and the identities they belong to."""
    import torch

    from nasfe.data.faces import FolderFaces, fit_to_size
    from nasfe.imageio import to_tensor

    faces = FolderFaces(Path(root) / "test")
    recs = _round_robin(faces.by_identity(), limit)
    x = torch.stack([to_tensor(fit_to_size(faces.load(r), height, width)) for r in recs])
    return x, [r.identity for r in recs]
