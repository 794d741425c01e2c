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
interrupted at any point resumes where it stopped (images are written atomically; a finished one
is kept only when its sha256 is still the one recorded when it was written). Layout of ``--out``::

    build.json            settings of the build and the fingerprint of its input faces (a resume
                          with other settings or other faces is refused)
    kernels.pt            the 52 test kernels (weights-only loadable KernelBank)
    clean/0000.png ...    the clean faces
    Test-B/000000.png ... the degraded images
    .build/               per-job records of the files written and their sha256 (what a resume reuses)
    .nasfe.lock           while a build runs: a second build into the folder is refused
    manifest.json         every parameter and a sha256 per file; written last

``--verify`` recomputes every field of the manifest from the deterministic build and checks every
file's sha256. Unreadable face files are skipped and counted (``skipped_faces`` in the manifest).
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
from nasfe.errors import NasfeError, TestSetError
from nasfe.data.faces import FolderFaces, SyntheticFaces
from nasfe.imageio import ImageReadError
from nasfe.imageio import atomic_write_json, read_image, to_tensor, to_uint8, write_png_atomic
from nasfe.imageio import ensure_writable_dir
from nasfe.locks import FolderLock
from nasfe.imageio import refuse_inside
from tqdm import tqdm

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
    return KernelBank.build(
        MOTION_KERNELS, GAUSSIAN_KERNELS, KERNEL_SIZES, seed + TEST_BANK_SEED_OFFSET, mode=kernel_mode
    )


def _item_seed(seed: int, set_index: int, item: int) -> int:
    return int(np.random.SeedSequence([seed, 1 + set_index, item]).generate_state(1, np.uint64)[0] >> 1)


def _crf_ids(seed: int, set_index: int, n_items: int, n_curves: int) -> np.ndarray:
    return np.random.default_rng([seed, 1000 + set_index]).integers(0, n_curves, n_items)


def face_params(
    name: str, face: int, seed: int, bank: KernelBank, curves: ResponseCurves
) -> tuple[DegradeParams, list[int], list[Variant]]:
    """Parameters, per-item noise seeds and variants of every image of clean face ``face`` in set ``name``.

    Item index = face * len(variants) + variant index. The response curve and noise seed of an
    item depend only on (seed, set, item index).
    """
    grid = variants(name)
    si = TEST_SETS.index(name)
    first = face * len(grid)
    crf = _crf_ids(seed, si, first + len(grid), curves.count)[first:]
    crf = [int(c) if (v.r < 1 or v.sigma_s > 0 or v.sigma_c > 0) else -1 for c, v in zip(crf, grid)]
    params = DegradeParams.explicit(
        [v.kernel_id for v in grid],
        [v.r for v in grid],
        [v.sigma_s for v in grid],
        [v.sigma_c for v in grid],
        crf,
        bank=bank,
    )
    return params, [_item_seed(seed, si, first + i) for i in range(len(grid))], grid


def degrade_face(
    x: torch.Tensor,
    name: str,
    face: int,
    seed: int,
    bank: KernelBank,
    curves: ResponseCurves,
    only: Optional[Sequence[int]] = None,
    noise_model: str = "after-r",
) -> tuple[torch.Tensor, DegradeParams, list[Variant]]:
    """Degraded images (n, 3, H, W) float of one clean face ``x`` (3, H, W) for set ``name``.

    ``only``: variant indices to compute (default all); the result is identical per item either way.
    ``noise_model``: see :data:`nasfe.degrade.pipeline.NOISE_MODELS`.
    """
    params, seeds, grid = face_params(name, face, seed, bank, curves)
    idx = list(range(len(grid))) if only is None else list(only)
    p = params.subset(idx)
    h, w = x.shape[-2:]
    noise = torch.cat([torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(seeds[i])) for i in idx])
    y = degrade(
        x[None].expand(len(idx), -1, -1, -1).contiguous(), p, bank, curves, noise=noise, noise_model=noise_model
    )
    return y, p, [grid[i] for i in idx]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _faces_source(faces: Optional[str], images: int, seed: int):
    """A face source: a folder of <identity>/<image>, or synthetic faces (4 per identity) when None."""

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


def select_faces(source, images: Optional[int], seed: int) -> tuple[list[dict], list[str]]:
    """The clean faces of a build and the unreadable files passed over.

    Each face is ``{'index', 'identity', 'key', 'source_sha256'}`` (the sha256 of its decoded
    pixels: the build's fingerprint of its input). An unreadable face is skipped and counted, and
    a seeded draw from the rest of the folder takes its place, so one bad file neither stops a
    scan of thousands nor shrinks the set.
    """

    n = len(source.records)
    chosen = _choose(n, images, seed)
    taken = set(chosen)
    spares = (i for i in np.random.default_rng([seed, 98]).permutation(n).tolist() if i not in taken)
    queue, faces, bad = list(chosen), [], []
    while queue:
        ri = queue.pop(0)
        rec = source.records[ri]
        try:
            arr = np.ascontiguousarray(source.load(rec))
        except ImageReadError as exc:
            bad.append(str(exc))
            spare = next(spares, None)  # a seeded stand-in keeps the set at its size
            if spare is not None:
                queue.append(spare)
            continue
        faces.append(
            {
                "index": ri,
                "identity": rec.identity,
                "key": rec.key,
                "source_sha256": hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest(),
            }
        )
    if not faces:
        raise TestSetError(
            f"{getattr(source, 'root', source)}: none of {len(bad)} face file(s) could be read "
            f"(first: {bad[0] if bad else 'none found'})"
        )
    return sorted(faces, key=lambda f: f["index"]), bad


#: Protocol options recorded in build.json / the manifest; builds from before they existed used these.
PROTOCOL_DEFAULTS = {"noise_model": "after-r", "kernel_mode": "centred"}


def _settings(faces, images, seed, crf, sets, noise_model="after-r", kernel_mode="centred") -> dict:
    return {
        "version": MANIFEST_VERSION,
        "faces": str(faces) if faces else "synthetic",
        "images": images,
        "seed": int(seed),
        "crf": str(crf),
        "sets": list(sets),
        "noise_model": noise_model,
        "kernel_mode": kernel_mode,
    }


# Worker state: one per process (or the main process when workers <= 1).
_STATE: dict = {}
JOURNAL = ".build"  # per-job records of the files written and their sha256 (what a resume may reuse)


def _init_worker(out: str, seed: int, crf: str, noise_model: str = "after-r") -> None:
    torch.set_num_threads(1)
    _STATE.update(
        out=Path(out),
        seed=seed,
        bank=KernelBank.load(Path(out) / "kernels.pt"),
        curves=ResponseCurves.from_spec(crf),
        noise_model=noise_model,
    )


def _set_file(name: str, item: int) -> str:
    return f"{name}/{item:06d}.png"


def _reusable(out: Path, journal: Path) -> dict[str, str]:
    """Files a journal records whose content on disk still has the recorded sha256: {file: sha256}."""
    try:
        recorded = json.loads(journal.read_text())
    except (OSError, ValueError):
        return {}
    ok = {}
    for f, sha in recorded if isinstance(recorded, list) else []:
        if (out / f).is_file() and _sha256(out / f) == sha:
            ok[f] = sha
    return ok


def _build_face(job: tuple[str, int]) -> list[tuple[str, str]]:
    """Write the images of one (set, clean face) job that are missing or not as recorded; [(file, sha256)].

    A file is reused only when the job's journal records it with the sha256 it has on disk: a file
    half written by a crash, or changed since, is rebuilt, never re-hashed into the manifest.
    """

    name, face = job
    out: Path = _STATE["out"]
    grid_len = len(variants(name))
    files = [_set_file(name, face * grid_len + i) for i in range(grid_len)]
    journal = out / JOURNAL / name / f"{face:04d}.json"
    have = _reusable(out, journal)
    missing = [i for i, f in enumerate(files) if f not in have]
    if missing:
        x = to_tensor(read_image(out / "clean" / f"{face:04d}.png"))
        y, _, _ = degrade_face(
            x,
            name,
            face,
            _STATE["seed"],
            _STATE["bank"],
            _STATE["curves"],
            only=missing,
            noise_model=_STATE["noise_model"],
        )
        for j, i in enumerate(missing):
            write_png_atomic(out / files[i], to_uint8(y[j]))
            have[files[i]] = _sha256(out / files[i])
        atomic_write_json(journal, [[f, have[f]] for f in files])
    return [(f, have[f]) for f in files]


def _set_rows(
    name: str,
    clean: list[dict],
    seed: int,
    bank: KernelBank,
    curves: ResponseCurves,
    shas: Optional[dict[int, list[tuple[str, str]]]] = None,
) -> list[dict]:
    """The manifest rows of set ``name``: every field follows from the build's settings (the same
    function writes them and ``--verify`` recomputes them); ``shas[face]``: [(file, sha256)]."""
    rows = []
    for face in range(len(clean)):
        params, _, grid = face_params(name, face, seed, bank, curves)
        for i, (rec, v) in enumerate(zip(params.records(), grid)):
            kid = rec["kernel_id"]
            row = {
                "file": _set_file(name, face * len(grid) + i),
                "clean": face,
                "identity": clean[face]["identity"],
                **rec,
                "kernel_size": int(bank.sizes[kid]) if kid >= 0 else 0,
                "draw": v.draw,
            }
            if shas is not None:
                row["sha256"] = shas[face][i][1]
            rows.append(row)
    return json.loads(json.dumps(rows))  # the form they have in manifest.json (lists, plain floats)


def build_testsets(
    out: str | os.PathLike,
    faces: Optional[str] = None,
    sets: Sequence[str] = TEST_SETS,
    seed: int = 0,
    images: Optional[int] = 100,
    crf: str = "parametric",
    workers: int = 0,
    progress: bool = True,
    noise_model: str = "after-r",
    kernel_mode: str = "centred",
) -> dict:
    """Build (or resume) the test sets under ``out``; returns the manifest (also written to manifest.json).

    ``faces``: a face folder (``<identity>/<image>``), or None for synthetic faces. ``images``:
    clean faces used (a seeded subsample; None = all; unreadable files are skipped and counted).
    ``crf``: 'parametric' or the DoRF folder. A resume re-verifies everything it reuses: the face
    folder must still hold the same faces (their fingerprint is in build.json), and every file must
    have the sha256 recorded when it was written, else it is rebuilt. Every set the folder was
    asked for so far is completed and listed. One build at a time per folder (a lock).
    ``noise_model`` / ``kernel_mode``: protocol readings (docs/DEGRADATION.md), defaults unchanged;
    recorded in build.json and the manifest's settings.
    """

    for s in sets:
        if s not in TEST_SETS:
            raise ValueError(f"unknown test set {s!r}; known: {list(TEST_SETS)}")
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"--noise-model must be one of {list(NOISE_MODELS)}, got {noise_model!r}")
    if kernel_mode not in KERNEL_MODES:
        raise ValueError(f"--kernel-mode must be one of {list(KERNEL_MODES)}, got {kernel_mode!r}")

    if faces is not None and "://" not in str(faces):
        refuse_inside(out, [("--faces", faces)])  # the sets' images would become faces of the folder
    out = ensure_writable_dir(out)
    with FolderLock(out, f"test-set folder {out}"):
        return _build_locked(out, faces, sets, seed, images, crf, workers, progress, noise_model, kernel_mode)


def _build_locked(out: Path, faces, sets, seed, images, crf, workers, progress, noise_model, kernel_mode) -> dict:
    settings = _settings(faces, images, seed, crf, sets, noise_model, kernel_mode)
    build_json = out / "build.json"
    old = None
    if build_json.is_file():
        try:
            old = json.loads(build_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TestSetError(f"{build_json}: not valid JSON ({exc})") from None
        old = {**PROTOCOL_DEFAULTS, **old}
        if {k: v for k, v in old.items() if k not in ("sets", "inputs")} != {
            k: v for k, v in settings.items() if k != "sets"
        }:
            raise TestSetError(
                f"{build_json}: {out} holds a build with other settings {old}; "
                f"use another --out or delete it (asked for {settings})"
            )
        settings["sets"] = sorted(set(old.get("sets", [])) | set(sets), key=TEST_SETS.index)
    curves = ResponseCurves.from_spec(crf)
    source = _faces_source(faces, images or 100, seed)
    chosen, skipped = select_faces(source, images, seed)
    if skipped:
        print(f"nasfe testsets: skipped {len(skipped)} unreadable face file(s); first: {skipped[0]}", file=sys.stderr)
    inputs = [{k: f[k] for k in ("identity", "key", "source_sha256")} for f in chosen]
    settings["inputs"] = _digest(inputs)
    if old is not None and old.get("inputs") != settings["inputs"]:
        raise TestSetError(
            f"{build_json}: the faces differ from those {out} was built from "
            f"({'the face folder changed' if old.get('inputs') else 'built without a fingerprint'}); "
            "its clean images would get other identities: use another --out"
        )
    atomic_write_json(build_json, settings)

    bank = test_bank(seed, kernel_mode)
    bank_path = out / "kernels.pt"
    try:
        same = torch.equal(KernelBank.load(bank_path).kernels, bank.kernels) if bank_path.is_file() else False
    except ValueError:
        same = False
    if not same:
        bank.save(bank_path)

    clean_journal = out / JOURNAL / "clean.json"
    have = _reusable(out, clean_journal)
    clean = []
    for i, face in enumerate(tqdm(chosen, desc="clean faces", disable=not progress)):
        rel = f"clean/{i:04d}.png"
        if rel not in have:
            write_png_atomic(out / rel, np.ascontiguousarray(source.load(source.records[face["index"]])))
            have[rel] = _sha256(out / rel)
        clean.append(
            {
                "file": rel,
                "identity": face["identity"],
                "key": face["key"],
                "source_sha256": face["source_sha256"],
                "sha256": have[rel],
            }
        )
    atomic_write_json(clean_journal, [[c["file"], c["sha256"]] for c in clean])

    manifest = {
        "version": MANIFEST_VERSION,
        "settings": settings,
        "kernels": "kernels.pt",
        "kernel_sizes": bank.sizes.tolist(),
        "clean": clean,
        "sets": {},
        "skipped_faces": skipped,
    }
    names = settings["sets"]
    jobs = [(name, face) for name in names for face in range(len(chosen))]
    init = (str(out), seed, crf, noise_model)
    results: dict[str, dict[int, list]] = {name: {} for name in names}
    bar = tqdm(total=len(jobs), desc="test sets", unit="face", disable=not progress)
    if workers and workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init) as pool:
            for job, res in zip(jobs, pool.map(_build_face, jobs, chunksize=4)):
                results[job[0]][job[1]] = res
                bar.update()
    else:
        _init_worker(*init)
        for job in jobs:
            results[job[0]][job[1]] = _build_face(job)
            bar.update()
    bar.close()
    for name in names:
        manifest["sets"][name] = _set_rows(name, clean, seed, bank, curves, results[name])
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TestSetError(
            f"{path}: manifest not found (build the test sets first: nasfe testsets --out ...)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TestSetError(f"{path}: manifest is not valid JSON ({exc})") from None


def load_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a built test-set folder; TestSetError naming the file when missing or malformed."""
    path = Path(root) / "manifest.json"
    m = _read_json(path)
    if not isinstance(m, dict) or m.get("version") != MANIFEST_VERSION or "sets" not in m or "clean" not in m:
        raise TestSetError(f"{path}: not a version-{MANIFEST_VERSION} test-set manifest")
    return m


def _check_fields(where: Path, what: str, rows: list[dict], expected: list[dict]) -> None:
    """Every row must hold exactly the fields the build gives it (sha256 is checked against the file)."""
    if len(rows) != len(expected):
        raise TestSetError(f"{where}: {what} lists {len(rows)} images, the build gives {len(expected)}")
    for i, (row, exp) in enumerate(zip(rows, expected)):
        got = {k: v for k, v in row.items() if k != "sha256"} if isinstance(row, dict) else {}
        if got != exp:
            key = next(
                (k for k in sorted(set(got) | set(exp)) if got.get(k, "<absent>") != exp.get(k, "<absent>")), "?"
            )
            raise TestSetError(
                f"{where}: {what} entry {i} ({exp.get('file')}): {key} is {got.get(key, '<absent>')!r}, "
                f"the build gives {exp.get(key, '<absent>')!r} (manifest edited or corrupt)"
            )


def check_files(root: str | os.PathLike, sets: Optional[Sequence[str]] = None, m: Optional[dict] = None) -> None:
    """Every file the manifest lists for ``sets`` (default all) and every clean face exists and has
    the sha256 the manifest records (a quick check, no recomputation: what ``evaluate`` runs before
    it scores). Raises TestSetError naming the first offending file."""
    root = Path(root)
    where = root / "manifest.json"
    m = m if m is not None else load_manifest(root)
    entries = list(m["clean"])
    for name in sets or list(m["sets"]):
        if name not in m["sets"]:
            raise TestSetError(f"{where}: has no set {name!r} (has {sorted(m['sets'])})")
        entries += m["sets"][name]
    for e in entries:
        path = root / e["file"]
        if not path.is_file():
            raise TestSetError(f"{path}: listed in {where} but missing")
        if _sha256(path) != e.get("sha256"):
            raise TestSetError(f"{path}: checksum does not match {where} (file changed or corrupt)")


#: largest difference (in uint8 steps) between a degraded image on disk and its re-creation: the
#: build and the check run the same float32 code in one thread, but a value that lands within float
#: rounding of .5 before uint8 rounding may go either way once, never by more
RECREATE_TOLERANCE = 1


def verify_testsets(root: str | os.PathLike, sets: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Check every field of the manifest and every file, by content; returns images per set.

    The degradation fields of each row (kernel, r, sigma_s, sigma_c, curve, label, identity ...)
    are recomputed from the deterministic build and must match; the clean faces must match the
    build's input fingerprint (build.json) and their pixels the ``source_sha256`` of each row;
    ``kernels.pt`` must hold the test kernels of the build's seed; every listed file must exist
    with its sha256; and every degraded image is re-created from its clean face and must equal the
    file (within :data:`RECREATE_TOLERANCE`), so a file swapped for another with its checksum
    updated is found. Raises TestSetError naming the first offending file or field.
    """
    root = Path(root)
    where = root / "manifest.json"
    m = load_manifest(root)
    s = m.get("settings") or {}
    try:
        seed, curves = int(s["seed"]), ResponseCurves.from_spec(s["crf"])
        bank = test_bank(seed, s.get("kernel_mode", PROTOCOL_DEFAULTS["kernel_mode"]))
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise TestSetError(
            f"{where}: cannot rebuild the settings to check against ({type(exc).__name__}: {exc})"
        ) from None
    if m.get("kernel_sizes") != bank.sizes.tolist():
        raise TestSetError(f"{where}: kernel_sizes differ from the build's test kernels (seed {seed})")
    kernels_pt = root / str(m.get("kernels") or "kernels.pt")
    try:
        on_disk = KernelBank.load(kernels_pt)
    except (OSError, ValueError) as exc:
        raise TestSetError(f"{kernels_pt}: cannot read the test kernels ({exc})") from None
    if (
        on_disk.kernels.shape != bank.kernels.shape
        or not torch.equal(on_disk.kernels, bank.kernels)
        or not torch.equal(on_disk.sizes, bank.sizes)
    ):
        raise TestSetError(f"{kernels_pt}: not the test kernels of this build (seed {seed}); file replaced or corrupt")
    clean = m["clean"]
    expected_clean = [
        {"file": f"clean/{i:04d}.png", **{k: c.get(k) for k in ("identity", "key", "source_sha256")}}
        for i, c in enumerate(clean)
    ]
    _check_fields(where, "clean", clean, expected_clean)
    if "inputs" in s:
        inputs = [{k: c[k] for k in ("identity", "key", "source_sha256")} for c in clean]
        build = _read_json(root / "build.json") if (root / "build.json").is_file() else s
        if _digest(inputs) != s["inputs"] or build.get("inputs") != s["inputs"]:
            raise TestSetError(
                f"{where}: the clean faces (identity, key) differ from the build's input fingerprint "
                "(manifest edited or corrupt)"
            )
    names = list(sets or m["sets"])
    for name in names:
        if name not in m["sets"]:
            raise TestSetError(f"{where}: has no set {name!r} (has {sorted(m['sets'])})")
        _check_fields(where, name, m["sets"][name], _set_rows(name, clean, seed, bank, curves))
    check_files(root, names, m)
    _recreate_and_compare(root, m, names, seed, bank, curves, s.get("noise_model", PROTOCOL_DEFAULTS["noise_model"]))
    return {name: len(m["sets"][name]) for name in names}


def _recreate_and_compare(
    root: Path, m: dict, names: Sequence[str], seed: int, bank: KernelBank, curves: ResponseCurves, noise_model: str
) -> None:
    """Each clean face's pixels against its ``source_sha256``, and each degraded image against its
    deterministic re-creation from that face (one thread, as the build's workers)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for face, c in enumerate(m["clean"]):
            path = root / c["file"]
            arr = np.ascontiguousarray(read_image(path))
            if (
                c.get("source_sha256")
                and hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest() != c["source_sha256"]
            ):
                raise TestSetError(
                    f"{path}: its pixels are not the face the build took ({c.get('key')}); file replaced"
                )
            x = to_tensor(arr)
            for name in names:
                rows = [r for r in m["sets"][name] if r.get("clean") == face]
                if not rows:
                    continue
                y, _, _ = degrade_face(x, name, face, seed, bank, curves, noise_model=noise_model)
                grid = len(variants(name))
                for row in rows:
                    item = int(Path(row["file"]).stem) - face * grid
                    got = read_image(root / row["file"]).astype(np.int16)
                    want = to_uint8(y[item]).astype(np.int16)
                    if got.shape != want.shape or np.abs(got - want).max() > RECREATE_TOLERANCE:
                        raise TestSetError(
                            f"{root / row['file']}: not the image the build makes for {name} item "
                            f"{face * grid + item} (re-created from {c['file']}); file replaced"
                        )
    finally:
        torch.set_num_threads(threads)


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
        rec = self.records[i]
        return {
            "y": to_tensor(read_image(self.root / rec["file"])),
            "x": to_tensor(read_image(self.root / self.clean[rec["clean"]]["file"])),
            "c": torch.tensor(rec["c"], dtype=torch.float32),
            "record": rec,
        }

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
    parser.add_argument(
        "--noise-model",
        default="after-r",
        choices=list(NOISE_MODELS),
        help="where r and the noise act under low light (default after-r; docs/DEGRADATION.md)",
    )
    parser.add_argument(
        "--kernel-mode",
        default="centred",
        choices=list(KERNEL_MODES),
        help="motion kernels centred (default) or as the generator the paper cites (off-centre, "
        "zero padding, min-max rescaling)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="only verify an existing build: every manifest field and every file's checksum",
    )
    return parser


def testsets_main(args: argparse.Namespace) -> int:
    """Run ``nasfe testsets``: build/resume (or verify) and print the image count per set. Returns an exit code."""
    try:
        if getattr(args, "verify", False):
            counts = verify_testsets(args.out, None)
        else:
            m = build_testsets(
                args.out,
                args.faces,
                args.sets,
                args.seed,
                args.images,
                args.crf,
                args.workers,
                noise_model=getattr(args, "noise_model", "after-r"),
                kernel_mode=getattr(args, "kernel_mode", "centred"),
            )
            counts = {k: len(v) for k, v in m["sets"].items()}
    except (NasfeError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"nasfe testsets: error: {exc}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{name}: {n} images")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0
