"""The NASFE test sets of Table 4: build (deterministic, resumable), verify, read.

For N clean faces (100 in the paper) the five sets hold, per clean face:

============ ====================================================================== =========
set          degradations per clean face                                             per face
============ ====================================================================== =========
Test-B       52 kernels (40 motion, sizes 13..27; 12 anisotropic Gaussians)         52
Test-N       sigma_s in {0.05, 0.10, 0.15} x sigma_c in {0.05, 0.10}                 6
Test-L       r in {0.10, ..., 0.35} (6) x sigma_s in {0.05, 0.10} x sigma_c in {0.05, 0.10}   24
Test-BN      52 kernels x (sigma_s 0.1, sigma_c 0.05) x 2 independent noise draws   104
Test-BNL     52 kernels x r in {0.15, 0.30} x (sigma_s 0.1, sigma_c 0.05)           104
============ ====================================================================== =========

which gives 5200, 600, 2400, 10400 and 10400 images for 100 faces. Readings of Table 4 are in
docs/DEGRADATION.md. Every noisy/low-light image uses a response curve drawn per image and its own
noise field, seeded from (seed, set, image index): any image can be rebuilt alone, so a build
interrupted at any point resumes where it stopped (images are written atomically, finished ones
are kept). Layout of ``--out``::

    build.json            settings of the build (a resume with other settings is refused)
    kernels.pt            the 52 test kernels (weights-only loadable KernelBank)
    clean/0000.png ...    the clean faces
    Test-B/000000.png ... the degraded images
    manifest.json         every parameter and a sha256 per file; written last
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from nasfe.degrade.camera import ResponseCurves
from nasfe.degrade.kernels import KERNEL_MODES, KernelBank
from nasfe.degrade.pipeline import NOISE_MODELS, DegradeParams, degrade

TEST_SETS = ("Test-B", "Test-N", "Test-L", "Test-BN", "Test-BNL")
MANIFEST_VERSION = 1
MOTION_KERNELS = 40
GAUSSIAN_KERNELS = 12
KERNEL_SIZES = (13, 15, 17, 19, 21, 23, 25, 27)
TEST_N_SIGMA_S = (0.05, 0.10, 0.15)  # Table 4 prints [0.05, 0.1, 0.05]: read as a typo for 0.15
TEST_N_SIGMA_C = (0.05, 0.10)
TEST_L_R = (0.10, 0.15, 0.20, 0.25, 0.30, 0.35)
TEST_L_SIGMA_S = (0.05, 0.10)
TEST_L_SIGMA_C = (0.05, 0.10)
BN_SIGMA_S, BN_SIGMA_C = 0.10, 0.05
BN_DRAWS = 2  # Test-BN: 52 kernels x 100 faces = 5200; two noise draws per pair give 10400
BNL_R = (0.15, 0.30)
TEST_BANK_SEED_OFFSET = 7919  # test kernels never coincide with a training bank of the same seed


class TestSetError(ValueError):
    """A test-set folder is inconsistent; the message names the file."""


@dataclass(frozen=True)
class Variant:
    """One degradation applied to a clean face: kernel (test-bank id or -1), r, sigma_s, sigma_c, draw."""

    kernel_id: int
    r: float
    sigma_s: float
    sigma_c: float
    draw: int = 0


def variants(name: str) -> list[Variant]:
    """The per-face degradation grid of test set ``name`` (Table 4), in a fixed order."""
    kernels = range(MOTION_KERNELS + GAUSSIAN_KERNELS)
    if name == "Test-B":
        return [Variant(k, 1.0, 0.0, 0.0) for k in kernels]
    if name == "Test-N":
        return [Variant(-1, 1.0, s, c) for s in TEST_N_SIGMA_S for c in TEST_N_SIGMA_C]
    if name == "Test-L":
        return [Variant(-1, r, s, c) for r in TEST_L_R for s in TEST_L_SIGMA_S for c in TEST_L_SIGMA_C]
    if name == "Test-BN":
        return [Variant(k, 1.0, BN_SIGMA_S, BN_SIGMA_C, d) for k in kernels for d in range(BN_DRAWS)]
    if name == "Test-BNL":
        return [Variant(k, r, BN_SIGMA_S, BN_SIGMA_C) for k in kernels for r in BNL_R]
    raise ValueError(f"unknown test set {name!r}; known: {list(TEST_SETS)}")


def test_bank(seed: int, kernel_mode: str = "centred") -> KernelBank:
    """The 52 test kernels (40 motion, 5 of each size 13..27, then 12 Gaussians with sigmas in [1, 3]).

    ``kernel_mode`` 'paper-compatible' places the same motion paths off-centre as the generator the
    paper cites does (docs/DEGRADATION.md); the default keeps them centred.
    """
    return KernelBank.build(MOTION_KERNELS, GAUSSIAN_KERNELS, KERNEL_SIZES, seed + TEST_BANK_SEED_OFFSET, mode=kernel_mode)


def _item_seed(seed: int, set_index: int, item: int) -> int:
    return int(np.random.SeedSequence([seed, 1 + set_index, item]).generate_state(1, np.uint64)[0] >> 1)


def _crf_ids(seed: int, set_index: int, n_items: int, n_curves: int) -> np.ndarray:
    return np.random.default_rng([seed, 1000 + set_index]).integers(0, n_curves, n_items)


def face_params(name: str, face: int, seed: int, bank: KernelBank, curves: ResponseCurves) -> tuple[DegradeParams, list[int], list[Variant]]:
    """Parameters, per-item noise seeds and variants of every image of clean face ``face`` in set ``name``.

    Item index = face * len(variants) + variant index. The response curve and noise seed of an
    item depend only on (seed, set, item index).
    """
    grid = variants(name)
    si = TEST_SETS.index(name)
    first = face * len(grid)
    crf = _crf_ids(seed, si, first + len(grid), curves.count)[first:]
    crf = [int(c) if (v.r < 1 or v.sigma_s > 0 or v.sigma_c > 0) else -1 for c, v in zip(crf, grid)]
    params = DegradeParams.explicit([v.kernel_id for v in grid], [v.r for v in grid], [v.sigma_s for v in grid],
                                    [v.sigma_c for v in grid], crf, bank=bank)
    return params, [_item_seed(seed, si, first + i) for i in range(len(grid))], grid


def degrade_face(x: torch.Tensor, name: str, face: int, seed: int, bank: KernelBank, curves: ResponseCurves,
                 only: Optional[Sequence[int]] = None,
                 noise_model: str = "after-r") -> tuple[torch.Tensor, DegradeParams, list[Variant]]:
    """Degraded images (n, 3, H, W) float of one clean face ``x`` (3, H, W) for set ``name``.

    ``only``: variant indices to compute (default all); the result is identical per item either way.
    ``noise_model``: see :data:`nasfe.degrade.pipeline.NOISE_MODELS`.
    """
    params, seeds, grid = face_params(name, face, seed, bank, curves)
    idx = list(range(len(grid))) if only is None else list(only)
    p = params.subset(idx)
    h, w = x.shape[-2:]
    noise = torch.cat([torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(seeds[i])) for i in idx])
    y = degrade(x[None].expand(len(idx), -1, -1, -1).contiguous(), p, bank, curves, noise=noise, noise_model=noise_model)
    return y, p, [grid[i] for i in idx]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _faces_source(faces: Optional[str], images: int, seed: int):
    """A face source: a folder of <identity>/<image>, or synthetic faces (4 per identity) when None."""
    from nasfe.data.faces import FolderFaces, SyntheticFaces

    if faces is None:
        return SyntheticFaces(identities=max(1, math.ceil(images / 4)), images_per_identity=4, seed=seed)
    return FolderFaces(faces)


def _choose(n_records: int, images: Optional[int], seed: int) -> list[int]:
    """Indices of the clean faces used, sorted: a seeded sample of ``images`` (all when None or larger)."""
    if images is None or images >= n_records:
        return list(range(n_records))
    if images < 1:
        raise ValueError(f"--images must be >= 1, got {images}")
    return sorted(np.random.default_rng([seed, 99]).choice(n_records, images, replace=False).tolist())


#: Protocol options recorded in build.json / the manifest; builds from before they existed used these.
PROTOCOL_DEFAULTS = {"noise_model": "after-r", "kernel_mode": "centred"}


def _settings(faces, images, seed, crf, sets, noise_model="after-r", kernel_mode="centred") -> dict:
    return {"version": MANIFEST_VERSION, "faces": str(faces) if faces else "synthetic", "images": images,
            "seed": int(seed), "crf": str(crf), "sets": list(sets), "noise_model": noise_model,
            "kernel_mode": kernel_mode}


# Worker state: one per process (or the main process when workers <= 1).
_STATE: dict = {}


def _init_worker(out: str, faces: Optional[str], images: int, seed: int, crf: str, noise_model: str = "after-r") -> None:
    torch.set_num_threads(1)
    _STATE.update(out=Path(out), source=_faces_source(faces, images, seed), seed=seed,
                  bank=KernelBank.load(Path(out) / "kernels.pt"), curves=ResponseCurves.from_spec(crf),
                  noise_model=noise_model)


def _set_file(name: str, item: int) -> str:
    return f"{name}/{item:06d}.png"


def _build_face(job: tuple[str, int, int]) -> list[tuple[str, str]]:
    """Write the missing images of one (set, clean face) job; returns [(relative file, sha256)]."""
    from nasfe.imageio import read_image, to_tensor, to_uint8, write_png_atomic

    name, face, rec_index = job
    out: Path = _STATE["out"]
    grid_len = len(variants(name))
    files = [_set_file(name, face * grid_len + i) for i in range(grid_len)]
    missing = [i for i, f in enumerate(files) if not (out / f).is_file()]
    if missing:
        x = to_tensor(read_image(out / "clean" / f"{face:04d}.png"))
        y, _, _ = degrade_face(x, name, face, _STATE["seed"], _STATE["bank"], _STATE["curves"], only=missing,
                               noise_model=_STATE["noise_model"])
        for j, i in enumerate(missing):
            write_png_atomic(out / files[i], to_uint8(y[j]))
    return [(f, _sha256(out / f)) for f in files]


def build_testsets(out: str | os.PathLike, faces: Optional[str] = None, sets: Sequence[str] = TEST_SETS,
                   seed: int = 0, images: Optional[int] = 100, crf: str = "parametric", workers: int = 0,
                   progress: bool = True, noise_model: str = "after-r", kernel_mode: str = "centred") -> dict:
    """Build (or resume) the test sets under ``out``; returns the manifest (also written to manifest.json).

    ``faces``: a face folder (``<identity>/<image>``), or None for synthetic faces. ``images``:
    clean faces used (a seeded subsample; None = all). ``crf``: 'parametric' or the DoRF folder.
    ``noise_model`` / ``kernel_mode``: protocol readings (docs/DEGRADATION.md), defaults unchanged.
    """
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"--noise-model must be one of {list(NOISE_MODELS)}, got {noise_model!r}")
    if kernel_mode not in KERNEL_MODES:
        raise ValueError(f"--kernel-mode must be one of {list(KERNEL_MODES)}, got {kernel_mode!r}")
    from tqdm import tqdm

    from nasfe.imageio import atomic_write_json, write_png_atomic

    for s in sets:
        if s not in TEST_SETS:
            raise ValueError(f"unknown test set {s!r}; known: {list(TEST_SETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(faces, images, seed, crf, sets, noise_model, kernel_mode)
    build_json = out / "build.json"
    if build_json.is_file():
        try:
            old = json.loads(build_json.read_text())
        except json.JSONDecodeError as exc:
            raise TestSetError(f"{build_json}: not valid JSON ({exc})") from None
        old = {**PROTOCOL_DEFAULTS, **old}
        if {k: v for k, v in old.items() if k != "sets"} != {k: v for k, v in settings.items() if k != "sets"}:
            raise TestSetError(f"{build_json}: {out} holds a build with other settings {old}; "
                               f"use another --out or delete it (asked for {settings})")
        settings["sets"] = sorted(set(old.get("sets", [])) | set(sets), key=TEST_SETS.index)
    atomic_write_json(build_json, settings)

    curves = ResponseCurves.from_spec(crf)
    bank_path = out / "kernels.pt"
    if not bank_path.is_file():
        test_bank(seed, kernel_mode).save(bank_path)
    bank = KernelBank.load(bank_path)

    source = _faces_source(faces, images or 100, seed)
    chosen = _choose(len(source.records), images, seed)
    clean = []
    for i, ri in enumerate(tqdm(chosen, desc="clean faces", disable=not progress)):
        rec = source.records[ri]
        path = out / "clean" / f"{i:04d}.png"
        if not path.is_file():
            write_png_atomic(path, np.ascontiguousarray(source.load(rec)))
        clean.append({"file": f"clean/{i:04d}.png", "identity": rec.identity, "key": rec.key, "sha256": _sha256(path)})

    manifest = {"version": MANIFEST_VERSION, "settings": settings, "kernels": "kernels.pt",
                "kernel_sizes": bank.sizes.tolist(), "clean": clean, "sets": {}}
    old_manifest = _read_json(out / "manifest.json") if (out / "manifest.json").is_file() else None
    if old_manifest:
        manifest["sets"].update({k: v for k, v in old_manifest.get("sets", {}).items() if k not in sets})
    jobs = [(name, face, ri) for name in sets for face, ri in enumerate(chosen)]
    init = (str(out), faces, images or 100, seed, crf, noise_model)
    results: dict[tuple[str, int], list] = {}
    bar = tqdm(total=len(jobs), desc="test sets", unit="face", disable=not progress)
    if workers and workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as pool:
            for job, res in zip(jobs, pool.map(_build_face, jobs, chunksize=4)):
                results[job[:2]] = res
                bar.update()
    else:
        _init_worker(*init)
        for job in jobs:
            results[job[:2]] = _build_face(job)
            bar.update()
    bar.close()

    for name in sets:
        rows = []
        for face in range(len(chosen)):
            params, _, grid = face_params(name, face, seed, bank, curves)
            for (f, sha), rec, v in zip(results[(name, face)], params.records(), grid):
                kid = rec["kernel_id"]
                rows.append({"file": f, "clean": face, "identity": clean[face]["identity"], **rec,
                             "kernel_size": int(bank.sizes[kid]) if kid >= 0 else 0, "draw": v.draw, "sha256": sha})
        manifest["sets"][name] = rows
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TestSetError(f"{path}: manifest not found (build the test sets first: nasfe testsets --out ...)") from None
    except json.JSONDecodeError as exc:
        raise TestSetError(f"{path}: manifest is not valid JSON ({exc})") from None


def load_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a built test-set folder; TestSetError naming the file when missing or malformed."""
    path = Path(root) / "manifest.json"
    m = _read_json(path)
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION or "sets" not in m or "clean" not in m:
        raise TestSetError(f"{path}: not a version-{MANIFEST_VERSION} test-set manifest")
    return m


def verify_testsets(root: str | os.PathLike, sets: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Check that every file the manifest lists exists and has its checksum; returns images per set.

    Raises TestSetError naming the first offending file (missing, or content not matching).
    """
    root = Path(root)
    m = load_manifest(root)
    entries = [("clean", e) for e in m["clean"]]
    for name in sets or list(m["sets"]):
        if name not in m["sets"]:
            raise TestSetError(f"{root / 'manifest.json'}: has no set {name!r} (has {sorted(m['sets'])})")
        entries += [(name, e) for e in m["sets"][name]]
    for _, e in entries:
        path = root / e["file"]
        if not path.is_file():
            raise TestSetError(f"{path}: listed in {root / 'manifest.json'} but missing")
        if _sha256(path) != e["sha256"]:
            raise TestSetError(f"{path}: checksum does not match {root / 'manifest.json'} (file changed or corrupt)")
    return {name: len(m["sets"][name]) for name in (sets or m["sets"])}


class TestSet(torch.utils.data.Dataset):
    """Read one built test set: item i is {'y', 'x': (3,H,W) float in [0,1], 'c': (3,) float, 'record': dict}.

    ``verify=True`` checks every file's checksum first (see :func:`verify_testsets`).
    """

    __test__ = False  # not a pytest class

    def __init__(self, root: str | os.PathLike, name: str, verify: bool = False):
        self.root = Path(root)
        m = load_manifest(self.root)
        if name not in m["sets"]:
            raise TestSetError(f"{self.root / 'manifest.json'}: has no set {name!r} (has {sorted(m['sets'])})")
        if verify:
            verify_testsets(self.root, [name])
        self.name = name
        self.records: list[dict] = m["sets"][name]
        self.clean: list[dict] = m["clean"]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        from nasfe.imageio import read_image, to_tensor

        rec = self.records[i]
        return {"y": to_tensor(read_image(self.root / rec["file"])),
                "x": to_tensor(read_image(self.root / self.clean[rec["clean"]]["file"])),
                "c": torch.tensor(rec["c"], dtype=torch.float32), "record": rec}

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]


def add_testsets_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``nasfe testsets`` (the lead's CLI calls this, then :func:`testsets_main`)."""
    parser.add_argument("--faces", default=None, help="face folder <identity>/<image> (default: synthetic faces)")
    parser.add_argument("--out", required=True, help="output folder (resumable: run again to finish a build)")
    parser.add_argument("--sets", nargs="+", default=list(TEST_SETS), choices=list(TEST_SETS), help="which sets")
    parser.add_argument("--seed", type=int, default=0, help="seed of kernels, curves, noise and face sample")
    parser.add_argument("--images", type=int, default=100, help="clean faces to use (seeded subsample; default 100)")
    parser.add_argument("--crf", default="parametric", help="'parametric' (built in) or the DoRF folder")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: in this process)")
    parser.add_argument("--noise-model", default="after-r",
                        choices=list(NOISE_MODELS),
                        help="where r and the noise act under low light (default after-r; docs/DEGRADATION.md)")
    parser.add_argument("--kernel-mode", default="centred", choices=list(KERNEL_MODES),
                        help="motion kernels centred (default) or off-centre like the generator the paper cites")
    parser.add_argument("--verify", action="store_true", help="only verify an existing build against its manifest")
    return parser


def testsets_main(args: argparse.Namespace) -> int:
    """Run ``nasfe testsets``: build/resume (or verify) and print the image count per set. Returns an exit code."""
    try:
        if getattr(args, "verify", False):
            counts = verify_testsets(args.out, None)
        else:
            m = build_testsets(args.out, args.faces, args.sets, args.seed, args.images, args.crf, args.workers,
                               noise_model=getattr(args, "noise_model", "after-r"),
                               kernel_mode=getattr(args, "kernel_mode", "centred"))
            counts = {k: len(v) for k, v in m["sets"].items()}
    except (TestSetError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"nasfe testsets: error: {exc}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{name}: {n} images")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0
