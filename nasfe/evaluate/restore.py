"""``nasfe restore``: restore your own photos (files or folders, any size) with a trained network.

How images of any size are handled:

* The network pads its input internally (replicate) to the multiple its trellis needs and crops
  the result, so any height and width runs whole. Images smaller than ``MIN_SIDE`` on a side are
  padded up to it here first (the classifier and the identity backbone downsample 8-16 times).
* Images larger than ``--tile`` pixels on a side (default 512; 0 = never) are cut into
  ``tile`` x ``tile`` tiles overlapping by ``--overlap`` pixels, restored in batches, and blended
  with linear ramps over the overlaps, so memory stays bounded and no seam shows. Each tile gets
  its own degradation estimate from CN and its own identity information: tiling is meant for
  large photos; a face crop framed like the training faces (e.g. 176x144) gives the best result.
* Images of the same size that follow each other are batched (``--batch-size``); a change of size
  starts a new batch.
* Optional ``--refs`` (files or folders): clean photos of the same person, resized to the
  network's training size, given to every image as identity references. Without them the
  network restores without identity information.

Unreadable files are reported by name on stderr and the rest go on; folders list their non-image
files as a count. The run ends with one summary line; the exit status is 1 when any file failed.
An output that would land on an input file (``-o`` equal to an input folder, links) is refused
before any work: your originals are never overwritten. Nor is any other file already in the
output folder: ``restore`` keeps a record of what it wrote there (``OUT/.nasfe-restore.json``,
each output's sha256) and replaces only its own earlier outputs that are unchanged; any other
existing file at an output's path is refused (one line, before any work), never renamed around.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nasfe.imageio import ImageReadError, ensure_writable_dir, read_image, to_tensor, to_uint8, write_png_atomic
from nasfe.errors import CommandError
import json
import hashlib
from nasfe.imageio import atomic_write_json
from nasfe.data.faces import fit_to_size
from tqdm import tqdm
from nasfe.evaluate.model_io import add_model_arguments
from nasfe.evaluate.model_io import load_from_args, model_kind, resolve_device
from nasfe.imageio import refuse_inside

log = logging.getLogger("nasfe.evaluate")

#: file endings treated as images when scanning folders (files named explicitly are always tried)
#: restore's record of its outputs in the output folder: {"outputs": {relative path: sha256 or null}}
RECORD = ".nasfe-restore.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: smaller images are padded up to this many pixels per side before the network sees them
MIN_SIDE = 32
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


# ---- tensors in, tensors out -------------------------------------------------------------------------
@torch.no_grad()
def run_network(model, y: torch.Tensor, refs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``model(y, refs).restored`` clamped to [0, 1], with tiny images padded to ``MIN_SIDE``.

    ``refs`` (k,3,h,w) is shared by every image of ``y`` (N,3,H,W), or (N,k,3,h,w) per image.
    """
    n, _, h, w = y.shape
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    if ph or pw:
        y = F.pad(y, (0, pw, 0, ph), mode="replicate")
    if refs is not None and refs.dim() == 4:
        refs = refs.unsqueeze(0).expand(n, *refs.shape)
    out = model(y, refs=refs).restored
    return out[..., :h, :w].float().clamp(0.0, 1.0)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: step tile - overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(size: int, tile: int, overlap: int, start: int) -> torch.Tensor:
    """1-D blending weight of one tile: linear ramps over the overlaps, 1 elsewhere, never 0."""
    wgt = torch.ones(tile)
    if overlap > 0:
        r = torch.linspace(0.0, 1.0, overlap + 2)[1:-1]  # strictly inside (0, 1)
        if start > 0:
            wgt[:overlap] = r
        if start + tile < size:
            wgt[-overlap:] = r.flip(0)
    return wgt


@torch.no_grad()
def restore_tiled(
    model,
    y: torch.Tensor,
    refs: Optional[torch.Tensor] = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
) -> torch.Tensor:
    """Restore (N,3,H,W) images, tiling those larger than ``tile`` (see the module docstring).

    ``refs`` (k,3,h,w), if given, is shared by every image and tile.
    """
    n, c, h, w = y.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return run_network(model, y, refs)
    overlap = min(overlap, tile // 2)
    th, tw = min(tile, h), min(tile, w)
    boxes = [(t, l) for t in _starts(h, th, overlap) for l in _starts(w, tw, overlap)]
    out = torch.zeros(n, c, h, w)
    norm = torch.zeros(1, 1, h, w)
    for i in range(n):
        for j in range(0, len(boxes), batch_size):
            chunk = boxes[j : j + batch_size]
            tiles = torch.cat([y[i : i + 1, :, t : t + th, l : l + tw] for t, l in chunk])
            res = run_network(model, tiles, refs).cpu()
            for (t, l), r in zip(chunk, res):
                wgt = _ramp(h, th, overlap, t)[:, None] * _ramp(w, tw, overlap, l)[None, :]
                out[i, :, t : t + th, l : l + tw] += r * wgt
                if i == 0:
                    norm[0, 0, t : t + th, l : l + tw] += wgt
    return (out / norm).to(y.device)


# ---- files ------------------------------------------------------------------------------------------
def _is_image_name(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES


def collect_images(
    inputs: Sequence[str | Path], recursive: bool = False
) -> tuple[list[tuple[Path, Path]], dict[str, int]]:
    """(file, path relative to its input root) of every image named or found, and counts of what
    was left out (non-image files in folders). Missing inputs raise ``FileNotFoundError``."""
    found: list[tuple[Path, Path]] = []
    left_out = {"not_an_image": 0}
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(q for q in (p.rglob("*") if recursive else p.iterdir()) if q.is_file())
            for q in files:
                if _is_image_name(q):
                    found.append((q, q.relative_to(p)))
                elif not q.name.startswith("."):
                    left_out["not_an_image"] += 1
        elif p.exists():
            found.append((p, Path(p.name)))  # named explicitly: always tried, whatever its ending
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return found, left_out


def output_names(rels: Sequence[Path]) -> list[Path]:
    """PNG output paths (relative) for input paths, all distinct: ``a.jpg`` and ``a.png`` in one
    folder become ``a_jpg.png`` and ``a_png.png``; any remaining clash (the same name from two
    input folders) gets ``_2``, ``_3`` ... instead of overwriting."""
    stems = [r.with_suffix(".png") for r in rels]
    counts: dict[Path, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    out: list[Path] = []
    taken: set[Path] = set()
    for r, s in zip(rels, stems):
        if counts[s] > 1:
            s = r.with_name(f"{r.stem}_{r.suffix.lstrip('.').lower() or 'noext'}.png")
        base, i = s, 2
        while s in taken:
            s = base.with_name(f"{base.stem}_{i}.png")
            i += 1
        taken.add(s)
        out.append(s)
    return out


def plan_outputs(
    inputs: Sequence[str | Path], out_dir: str | Path, recursive: bool = False, compare: bool = False
) -> tuple[list[tuple[Path, Path]], dict[str, int]]:
    """(input file, output path relative to ``out_dir``) of every image, and the left-out counts.

    Refuses (:class:`~nasfe.errors.CommandError`) an ``out_dir`` that is one of the input folders,
    any output that would land on an input file (the same path, a link to it, or a hard link), and
    any output path already holding a file that is not one of restore's own earlier outputs
    (:data:`RECORD`): restoring never overwrites a file of the user's.
    """

    out_dir = Path(out_dir).expanduser()
    out_real = out_dir.resolve()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir() and p.resolve() == out_real:
            raise CommandError(
                f"--out {out_dir} is the input folder {item}: restored images would replace or mix "
                "with your originals; choose another --out"
            )
    files, left_out = collect_images(inputs, recursive)
    outs = output_names([rel for _, rel in files])
    originals = {p.resolve(): p for p, _ in files}
    inodes = {(s.st_dev, s.st_ino): p for p, _ in files if (s := p.stat())}
    record = read_record(out_dir)
    for rel in outs:
        for target in [out_dir / rel] + ([out_dir / "compare" / rel] if compare else []):
            hit = originals.get(target.resolve())
            if hit is None and target.exists():
                s = target.stat()
                hit = inodes.get((s.st_dev, s.st_ino))
            if hit is not None:
                raise CommandError(
                    f"--out {out_dir}: writing {target} would overwrite the input {hit}; choose another --out"
                )
            if (target.exists() or target.is_symlink()) and not _own_output(record, out_dir, target):
                raise CommandError(
                    f"--out {out_dir}: {target} already exists and is not an unchanged output of an "
                    "earlier nasfe restore; move it away or choose another --out"
                )
    return list(zip((p for p, _ in files), outs)), left_out


def read_record(out_dir: Path) -> dict[str, Optional[str]]:
    """restore's record of its outputs in ``out_dir`` (relative POSIX path -> sha256, or None for an
    output planned by a run that stopped before writing it); empty when absent or unreadable."""

    try:
        data = json.loads((Path(out_dir) / RECORD).read_text())
        outputs = data.get("outputs", {}) if isinstance(data, dict) else {}
        return {str(k): v for k, v in outputs.items()} if isinstance(outputs, dict) else {}
    except (OSError, ValueError):
        return {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _own_output(record: dict[str, Optional[str]], out_dir: Path, target: Path) -> bool:
    """True when ``target`` is a plain file restore wrote (its recorded sha256 still matches) or
    planned and may have written before it stopped (recorded without a hash)."""
    rel = target.relative_to(out_dir).as_posix()
    if rel not in record or target.is_symlink() or not target.is_file():
        return False
    want = record[rel]
    return want is None or _sha256(target) == want


def _write_record(out_dir: Path, record: dict[str, Optional[str]]) -> None:
    atomic_write_json(Path(out_dir) / RECORD, {"outputs": dict(sorted(record.items()))})


def load_refs(items: Sequence[str | Path], height: int, width: int) -> tuple[Optional[torch.Tensor], list[str]]:
    """Reference photos as (k,3,height,width) (fitted to the training size) and the unreadable ones."""

    files, _ = collect_images(items)
    refs, bad = [], []
    for path, _rel in files:
        try:
            refs.append(to_tensor(fit_to_size(read_image(path), height, width)))
        except ImageReadError as exc:
            bad.append(str(exc))
    return (torch.stack(refs) if refs else None), bad


def _same_size_runs(files: Iterable[tuple[Path, Path]], batch_size: int, errors: list[str]) -> Iterator[list]:
    """Batches of consecutive readable images of the same size: [(path, out_rel, HxWx3 uint8)]."""
    run: list = []
    for path, rel in files:
        try:
            img = read_image(path)
        except ImageReadError as exc:
            errors.append(str(exc))

            tqdm.write(f"nasfe restore: skipped {exc}", file=sys.stderr)  # keeps the progress bar intact
            continue
        if run and (img.shape != run[0][2].shape or len(run) >= batch_size):
            yield run
            run = []
        run.append((path, rel, img))
    if run:
        yield run


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Two HxWx3 uint8 images next to each other with a white gap."""
    h = max(left.shape[0], right.shape[0])

    def pad(a):
        return np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255)

    return np.concatenate([pad(left), np.full((h, gap, 3), 255, np.uint8), pad(right)], axis=1)


def restore_files(
    model,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    refs: Optional[torch.Tensor] = None,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    compare: bool = False,
    recursive: bool = False,
    progress: bool = True,
) -> dict:
    """Restore every image of ``inputs`` into ``out_dir`` as PNG (same relative layout).

    Returns ``{'restored': n, 'failed': [messages], 'not_an_image': n, 'outputs': [paths], 'seconds': s}``.
    """

    out_dir = Path(out_dir).expanduser()
    jobs, left_out = plan_outputs(inputs, out_dir, recursive, compare)
    # planned outputs go into the record (without a hash) before any is written, so that a run cut
    # short can be re-run into the same folder; each written file's hash follows its batch
    record = read_record(out_dir)
    targets = [rel for _, rel in jobs] + ([Path("compare") / rel for _, rel in jobs] if compare else [])
    for rel in targets:
        record.setdefault(rel.as_posix(), None)
    _write_record(out_dir, record)
    ref_t = refs.to(device) if refs is not None else None
    errors: list[str] = []
    written: list[str] = []
    t0 = time.time()
    bar = tqdm(total=len(jobs), desc="restore", unit="img", disable=not progress, file=sys.stderr)
    for run in _same_size_runs(jobs, batch_size, errors):
        y = torch.stack([to_tensor(img) for _, _, img in run]).to(device)
        restored = restore_tiled(model, y, ref_t, tile=tile, overlap=overlap, batch_size=batch_size).cpu()
        for (_, rel, img), r in zip(run, restored):
            u8 = to_uint8(r)
            target = out_dir / rel
            write_png_atomic(target, u8)
            written.append(str(target))
            record[rel.as_posix()] = _sha256(target)
            if compare:
                write_png_atomic(out_dir / "compare" / rel, side_by_side(img, u8))
                record[(Path("compare") / rel).as_posix()] = _sha256(out_dir / "compare" / rel)
        _write_record(out_dir, record)
        bar.update(len(run))
    bar.update(len(errors))
    bar.close()
    return {
        "restored": len(written),
        "failed": errors,
        "not_an_image": left_out["not_an_image"],
        "outputs": written,
        "seconds": round(time.time() - t0, 2),
    }


# ---- command ---------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """Arguments of ``nasfe restore``."""

    add_model_arguments(parser)
    parser.add_argument("--input", "-i", nargs="+", required=True, help="image files and/or folders to restore")
    parser.add_argument("--out", "-o", required=True, help="output folder (PNG files, same relative layout)")
    parser.add_argument(
        "--refs",
        nargs="+",
        default=None,
        help="clean reference photos of the same person (files or folders), used for every input",
    )
    parser.add_argument("--recursive", action="store_true", help="look into sub-folders of input folders")
    parser.add_argument("--batch-size", type=int, default=4, help="images (or tiles) per forward pass")
    parser.add_argument(
        "--tile",
        type=int,
        default=DEFAULT_TILE,
        help=f"tile images larger than this on a side (default {DEFAULT_TILE}; 0 = never)",
    )
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="tile overlap in pixels")
    parser.add_argument(
        "--compare", action="store_true", help="also write input | restored side by side to OUT/compare/"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    """``nasfe restore``: 0 when every image was restored, 1 when some could not be read."""

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.tile < 0 or args.overlap < 0 or (args.tile and args.tile < MIN_SIDE):
        raise CommandError(f"--tile must be 0 or >= {MIN_SIDE} and --overlap >= 0, got {args.tile} and {args.overlap}")
    if args.recursive:  # outputs inside a folder scanned recursively would be read as inputs next time
        refuse_inside(args.out, [("--input", p) for p in args.input if Path(p).expanduser().is_dir()])
    plan_outputs(args.input, args.out, args.recursive, args.compare)  # refuse to overwrite inputs before any work
    ensure_writable_dir(args.out)
    device = resolve_device(args.device)
    model, space, genotype = load_from_args(args, device)
    kind = model_kind(space, genotype)
    refs = None
    if args.refs:
        if not space.model.use_identity:
            raise CommandError("--refs: this network does not use identity information (model.use_identity: false)")
        if not getattr(model, "refs_usable", True):
            raise CommandError(
                f"--refs: the face backbone weights (identity.weights: {space.identity.weights}) are "
                "not on this machine; this model restores without reference photos"
            )
        refs, bad = load_refs(args.refs, space.data.height, space.data.width)
        for msg in bad:
            print(f"nasfe restore: reference skipped: {msg}", file=sys.stderr)
        if refs is None:
            raise CommandError(f"--refs: none of {len(bad)} reference file(s) could be read")
        print(f"using {len(refs)} reference photo(s)", file=sys.stderr)
    result = restore_files(
        model,
        args.input,
        args.out,
        refs=refs,
        device=device,
        batch_size=args.batch_size,
        tile=args.tile,
        overlap=args.overlap,
        compare=args.compare,
        recursive=args.recursive,
        progress=not args.quiet,
    )
    if result["restored"] == 0 and not result["failed"]:
        raise CommandError(
            f"no images found in {' '.join(args.input)}"
            + (f" ({result['not_an_image']} non-image file(s))" if result["not_an_image"] else "")
        )
    print(
        f"restored {result['restored']} image(s) into {args.out} in {result['seconds']} s; "
        f"{len(result['failed'])} unreadable; {result['not_an_image']} non-image file(s) in folders ignored; network: {kind}"
    )
    return 1 if result["failed"] else 0
