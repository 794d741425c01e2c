"""Face sources: where clean faces and their identities come from.

Every source is a :class:`FaceSource`: a sorted list of :class:`FaceRecord` (identity, key) and a
``load(rec)`` that returns the face as an HxWx3 uint8 RGB array at the source's canonical size
(``height`` x ``width``). Scanning never decodes images (a folder of thousands of files is listed,
not opened); decoding problems surface at load time as :class:`~nasfe.imageio.ImageReadError`
naming the file, and the datasets in :mod:`nasfe.data.batches` skip and count those.

Sources:

* :class:`FolderFaces`   ``<root>/<identity>/<image>``, optional ``<root>/identities.csv``
* :class:`CelebAFaces`   official CelebA layout, centre crop 178x218 -> 144x176 (W x H)
* :class:`VGGFace2Faces` ``<root>/<split>/<n######>/*.jpg``, resized + centre-cropped to 224x224
* :class:`SyntheticFaces` procedural faces (no download), see :mod:`nasfe.data.synthetic`

:func:`open_faces` builds one from a :class:`~nasfe.config.DataConfig`; :func:`register_face_source`
adds a source.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from nasfe.config import DataConfig
from nasfe.errors import FaceSourceError
from nasfe.imageio import ImageReadError, fill_placeholder, read_image
from nasfe.registry import FACE_SOURCES
from nasfe.data.synthetic import identity_params
from nasfe.data.synthetic import image_params, render_faces

log = logging.getLogger(__name__)

#: File name endings treated as images when scanning folders (compared lower-case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: CelebA's aligned images are 178 wide x 218 high; the paper uses 176 high x 144 wide.
CELEBA_ALIGNED_SIZE = (218, 178)  # (height, width)
CELEBA_CROP_SIZE = (176, 144)  # (height, width)
VGGFACE2_SIZE = (224, 224)

_CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}


@dataclass(frozen=True)
class FaceRecord:
    """One face: its identity label and a source-specific key (relative path or synthetic index)."""

    identity: str
    key: str


def fit_to_size(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``image`` (HxWx3 uint8) to cover ``height`` x ``width`` keeping aspect, then centre-crop.

    An image already of that size is returned unchanged. Down-scaling uses area averaging
    (no aliasing), up-scaling bicubic.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    scale = max(height / h, width / w)
    nh, nw = max(height, int(round(h * scale))), max(width, int(round(w * scale)))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        image = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centred ``height`` x ``width`` window of ``image`` (which must be at least that big)."""
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(image[top : top + height, left : left + width])


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


class FaceSource:
    """Base class of face sources.

    Attributes: ``name``; ``records`` (list of :class:`FaceRecord`, sorted by identity then key);
    ``height`` and ``width`` (the canonical size ``load`` returns); ``skipped`` (counts of things
    left out while scanning, by reason); ``min_size`` (smaller decoded images are rejected).
    """

    name: str = "faces"

    def __init__(self, height: int, width: int, min_size: int = 32):
        if height < 1 or width < 1:
            raise ValueError(f"{self.name}: height and width must be >= 1, got {height}x{width}")
        self.height = int(height)
        self.width = int(width)
        self.min_size = int(min_size)
        self.records: list[FaceRecord] = []
        self.skipped: dict[str, int] = {}

    # -- subclasses implement _read (raw decode) and describe(rec) (what to name in errors)
    def _read(self, rec: FaceRecord) -> np.ndarray:
        raise NotImplementedError

    def describe(self, rec: FaceRecord) -> str:
        """A human-readable location of ``rec`` (a file path for file sources)."""
        return f"{self.name}:{rec.key}"

    def _count(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def load(self, rec: FaceRecord) -> np.ndarray:
        """The face of ``rec`` as an HxWx3 uint8 RGB array of size (``height``, ``width``).

        Raises :class:`ImageReadError` naming the file when it cannot be decoded or is smaller
        than ``min_size`` on either side.
        """
        img = self._read(rec)
        h, w = img.shape[:2]
        if min(h, w) < self.min_size:
            raise ImageReadError(self.describe(rec), f"image is {h}x{w}, smaller than min_size {self.min_size}")
        return fit_to_size(img, self.height, self.width)

    def identities(self) -> list[str]:
        """Sorted identity labels that have at least one record."""
        return sorted({r.identity for r in self.records})

    def by_identity(self) -> dict[str, list[FaceRecord]]:
        """Records grouped by identity (identities sorted, records in source order)."""
        groups: dict[str, list[FaceRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.identity].append(r)
        return dict(sorted(groups.items()))

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        n_id = len({r.identity for r in self.records})
        return (
            f"{type(self).__name__}(name={self.name!r}, images={len(self.records)}, identities={n_id}, "
            f"size={self.height}x{self.width}, skipped={self.skipped})"
        )


class FolderFaces(FaceSource):
    """Faces in ``<root>/<identity>/<image>``, identity = folder name.

    When ``<root>/identities.csv`` exists it is the manifest: columns ``file`` (path relative to
    root) and ``identity`` (other columns are ignored). Listed files that are missing are skipped
    and counted (``listed_but_missing``), image files on disk that it does not list are ignored and
    counted (``not_in_manifest``). Without a manifest, every image file one level down is a face;
    image files directly in ``root`` (``outside_identity_folder``), non-image files
    (``not_an_image``) and empty identity folders (``empty_identity_folder``) are counted.

    ``height``/``width`` default to the size of the first image (its header only is read).
    """

    MANIFEST = "identities.csv"

    def __init__(
        self,
        root: str | os.PathLike,
        height: Optional[int] = None,
        width: Optional[int] = None,
        min_size: int = 32,
        name: Optional[str] = None,
    ):
        self.root = Path(root)
        self.name = name or f"folder:{self.root.name}"
        self.records = []
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root}: face folder does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root}: expected a folder of <identity>/<image> files")
        self.skipped = {}
        on_disk = self._scan()
        manifest = self.root / self.MANIFEST
        if manifest.is_file():
            records = self._from_manifest(manifest, on_disk)
        else:
            records = [FaceRecord(identity=rel.split("/", 1)[0], key=rel) for rel in on_disk]
        if not records:
            what = f"{manifest} lists no existing image" if manifest.is_file() else "no <identity>/<image> files"
            raise FaceSourceError(f"{self.root}: empty face folder ({what})")
        records.sort(key=lambda r: (r.identity, r.key))
        if height is None or width is None:
            h0, w0 = self._header_size(records)
            height = h0 if height is None else height
            width = w0 if width is None else width
        skipped = self.skipped
        super().__init__(height, width, min_size)
        self.skipped = skipped
        self.records = records
        if self.skipped:
            log.warning("%s: skipped while scanning: %s", self.root, self.skipped)

    def _scan(self) -> list[str]:
        """Relative paths (``identity/file``) of image files one level down, sorted."""
        found: list[str] = []
        with os.scandir(self.root) as top:
            entries = sorted(top, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                with os.scandir(entry.path) as inner:
                    names = sorted(e.name for e in inner if e.is_file())
                images = [n for n in names if _is_image_name(n)]
                self._count("not_an_image", sum(1 for n in names if not n.startswith(".") and not _is_image_name(n)))
                if not images:
                    self._count("empty_identity_folder")
                found.extend(f"{entry.name}/{n}" for n in images)
            elif entry.is_file() and _is_image_name(entry.name):
                self._count("outside_identity_folder")
        return found

    def _from_manifest(self, manifest: Path, on_disk: list[str]) -> list[FaceRecord]:
        try:
            with open(manifest, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                cols = reader.fieldnames or []
                missing_cols = [c for c in ("file", "identity") if c not in cols]
                if missing_cols:
                    raise FaceSourceError(f"{manifest}: missing column(s) {missing_cols}; found {cols}")
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise FaceSourceError(f"{manifest}: not a readable UTF-8 CSV file ({exc})") from None
        disk = set(on_disk)
        seen: set[str] = set()
        records = []
        missing_examples = []
        for line, row in enumerate(rows, start=2):
            file, ident = (row.get("file") or "").strip(), (row.get("identity") or "").strip()
            if not file or not ident:
                self._count("bad_manifest_row")
                continue
            rel = Path(file).as_posix()
            if rel in seen:
                self._count("duplicate_manifest_row")
                continue
            seen.add(rel)
            if rel not in disk and not (self.root / rel).is_file():
                self._count("listed_but_missing")
                if len(missing_examples) < 3:
                    missing_examples.append(f"line {line}: {rel}")
                continue
            records.append(FaceRecord(identity=ident, key=rel))
        self._count("not_in_manifest", len(disk - seen))
        if missing_examples:
            log.warning(
                "%s: %d listed file(s) missing, e.g. %s",
                manifest,
                self.skipped["listed_but_missing"],
                "; ".join(missing_examples),
            )
        return records

    def _header_size(self, records: list[FaceRecord], tries: int = 20) -> tuple[int, int]:
        """(height, width) from the header of the first readable file among the first ``tries``."""
        errors = []
        for rec in records[:tries]:
            try:
                fill_placeholder(self.root / rec.key)  # faces read from S3 on first use
                with Image.open(self.root / rec.key) as im:
                    w, h = im.size
                return h, w
            except Exception as exc:  # noqa: BLE001 - a bad file here is reported below or at load
                errors.append(f"{rec.key}: {exc}")
        raise ImageReadError(
            self.root / records[0].key,
            "cannot read the header of any of the first "
            f"{len(errors)} files to find the canonical size ({'; '.join(errors[:3])}); "
            "pass height= and width=",
        )

    def path(self, rec: FaceRecord) -> Path:
        """The file of ``rec``."""
        return self.root / rec.key

    def describe(self, rec: FaceRecord) -> str:
        return str(self.path(rec))

    def _read(self, rec: FaceRecord) -> np.ndarray:
        return read_image(self.path(rec))


class CelebAFaces(FaceSource):
    """Official CelebA: ``img_align_celeba/``, ``identity_CelebA.txt``, ``list_eval_partition.txt``.

    ``partition`` picks the official partition ('train', 'val', 'test') or 'all'. Aligned images
    (178 wide x 218 high) are centre-cropped to 144 x 176 (rows 21..196, columns 17..160), the
    layout the paper's 176x144 faces and ``celeba-id`` use; images of another size are first
    fitted with :func:`fit_to_size`. ``partition_of`` maps each key to its official partition.
    """

    def __init__(self, root: str | os.PathLike, partition: str = "train", min_size: int = 32):
        self.root = Path(root)
        self.name = f"celeba:{partition}"
        if partition not in ("train", "val", "test", "all"):
            raise ValueError(f"CelebAFaces: partition must be 'train', 'val', 'test' or 'all', got {partition!r}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: CelebA folder does not exist")
        img_dir = self.root / "img_align_celeba"
        id_file = self.root / "identity_CelebA.txt"
        part_file = self.root / "list_eval_partition.txt"
        for p in (img_dir, id_file, part_file):
            if not p.exists():
                raise FileNotFoundError(f"{p}: missing (expected the official CelebA layout under {self.root})")
        super().__init__(*CELEBA_CROP_SIZE, min_size=min_size)
        self.img_dir = img_dir
        ids = self._read_pairs(id_file)
        parts = self._read_pairs(part_file)
        with os.scandir(img_dir) as it:
            on_disk = {e.name for e in it if e.is_file()}
        self.partition_of: dict[str, str] = {}
        for fname, ident in ids.items():
            code = parts.get(fname)
            if code is None:
                self._count("no_partition")
                continue
            if code not in _CELEBA_PARTITIONS:
                self._count("bad_partition_code")
                continue
            if fname not in on_disk:
                self._count("listed_but_missing")
                continue
            part = _CELEBA_PARTITIONS[code]
            if partition != "all" and part != partition:
                continue
            self.partition_of[fname] = part
            self.records.append(FaceRecord(identity=ident, key=fname))
        self._count("not_in_identity_file", len({n for n in on_disk if _is_image_name(n)} - set(ids)))
        self.records.sort(key=lambda r: (r.identity, r.key))
        if not self.records:
            raise FaceSourceError(
                f"{self.root}: no CelebA image found for partition {partition!r} (skipped: {self.skipped})"
            )
        if self.skipped:
            log.warning("%s: skipped while scanning: %s", self.root, self.skipped)

    @staticmethod
    def _read_pairs(path: Path) -> dict[str, str]:
        """``<file> <value>`` lines -> {file: value}; a malformed line is an error naming it."""
        out: dict[str, str] = {}
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FaceSourceError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise FaceSourceError(f"{path}:{n}: expected '<file> <value>', got {line.strip()!r}")
            out[parts[0]] = parts[1]
        return out

    def describe(self, rec: FaceRecord) -> str:
        return str(self.img_dir / rec.key)

    def _read(self, rec: FaceRecord) -> np.ndarray:
        return read_image(self.img_dir / rec.key)

    def load(self, rec: FaceRecord) -> np.ndarray:
        """Centre crop of the aligned image to 176x144 (see the class docstring)."""
        img = self._read(rec)
        h, w = img.shape[:2]
        if min(h, w) < self.min_size:
            raise ImageReadError(self.describe(rec), f"image is {h}x{w}, smaller than min_size {self.min_size}")
        if (h, w) == CELEBA_ALIGNED_SIZE:
            return centre_crop(img, self.height, self.width)
        return fit_to_size(img, self.height, self.width)


class VGGFace2Faces(FolderFaces):
    """VGGFace2: ``<root>/<split>/<n######>/*.jpg``; faces resized (shorter side) and centre-cropped
    to 224x224. The official train and test splits have disjoint identities."""

    def __init__(self, root: str | os.PathLike, split: str = "train", min_size: int = 32):
        if split not in ("train", "test"):
            raise ValueError(f"VGGFace2Faces: split must be 'train' or 'test', got {split!r}")
        base = Path(root)
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: VGGFace2 folder does not exist")
        folder = base / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (expected <root>/{split}/<n######>/*.jpg)")
        super().__init__(
            folder, height=VGGFACE2_SIZE[0], width=VGGFACE2_SIZE[1], min_size=min_size, name=f"vggface2:{split}"
        )


class SyntheticFaces(FaceSource):
    """Procedural faces with identities (no download): ``identities`` x ``images_per_identity``.

    Identity ``syn<i>`` (zero-padded), key ``"<i>/<j>"``. Fully determined by ``seed``: the same
    arguments give the same pixels on every machine. See :mod:`nasfe.data.synthetic`. Faces are
    rendered on first use, a whole identity at a time, and kept in memory up to ``cache_bytes``
    (returned arrays are then read-only).
    """

    def __init__(
        self,
        identities: int = 24,
        images_per_identity: int = 6,
        height: int = 176,
        width: int = 144,
        seed: int = 0,
        cache_bytes: int = 256 * 2**20,
    ):
        if identities < 1 or images_per_identity < 1:
            raise ValueError(
                f"SyntheticFaces: identities and images_per_identity must be >= 1, "
                f"got {identities} and {images_per_identity}"
            )
        self.name = f"synthetic:{identities}x{images_per_identity}:seed{seed}"
        super().__init__(height, width, min_size=1)
        self.seed = int(seed)
        self.n_identities = int(identities)
        self.images_per_identity = int(images_per_identity)
        width_digits = max(4, len(str(identities - 1)))
        self._names = [f"syn{i:0{width_digits}d}" for i in range(identities)]
        self._id_params = identity_params(self.seed, identities)
        self.records = [
            FaceRecord(self._names[i], f"{i}/{j}") for i in range(identities) for j in range(images_per_identity)
        ]
        self.cache_bytes = int(cache_bytes)  # rendered faces kept in memory (per process)
        self._cache: dict[str, np.ndarray] = {}
        self._cache_used = 0

    def _indices(self, rec: FaceRecord) -> tuple[int, int]:
        try:
            i, j = (int(v) for v in rec.key.split("/"))
        except ValueError:
            raise KeyError(f"{self.name}: not a synthetic key {rec.key!r}") from None
        if not (0 <= i < self.n_identities and 0 <= j < self.images_per_identity):
            raise KeyError(f"{self.name}: key {rec.key!r} out of range")
        return i, j

    def _read(self, rec: FaceRecord) -> np.ndarray:
        # Render the whole identity at once (vectorised) and keep it while the cache has room.
        if rec.key in self._cache:
            return self._cache[rec.key]
        i, _ = self._indices(rec)
        group = [FaceRecord(self._names[i], f"{i}/{j}") for j in range(self.images_per_identity)]
        faces = self.render(group)
        for r, img in zip(group, faces):
            if self._cache_used + img.nbytes <= self.cache_bytes:
                img.setflags(write=False)
                self._cache[r.key] = img
                self._cache_used += img.nbytes
        return faces[int(rec.key.split("/")[1])]

    def render(self, records: list[FaceRecord]) -> np.ndarray:
        """Faces of ``records`` as an (N,H,W,3) uint8 array, rendered in one vectorised pass."""

        idx = [self._indices(r) for r in records]
        ids = np.array([i for i, _ in idx], dtype=np.int64)
        imgs = np.array([j for _, j in idx], dtype=np.int64)
        params = image_params(self.seed, self._id_params, ids, imgs)
        return render_faces(params, self.height, self.width)


def register_face_source(name: str, factory=None, check=None):
    """Add a ``data.source`` value: ``factory(cfg: DataConfig) -> FaceSource``. Usable as a decorator.

    ``check(root: Path)``, optional: a quick look (no full scan) that ``root`` has the layout the
    source reads, raising :class:`FaceSourceError` naming what is missing (``check_layout``)."""
    return FACE_SOURCES.register(name, factory, check=check)


def data_root(cfg: DataConfig) -> Path:
    """``cfg.root`` as a path, for sources that read a folder; FaceSourceError when unset, missing otherwise."""
    if not cfg.root:
        raise FaceSourceError(f"data.source = {cfg.source!r} needs data.root (the folder of the faces)")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data.root {root}: does not exist (data.source = {cfg.source!r})")
    return root


def check_layout(source: str, root: str | os.PathLike) -> None:
    """A quick look that ``root`` has the layout ``source`` reads, so that a wrong ``--data-source``
    is one line before any worker starts. Raises :class:`FaceSourceError` naming what is missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FaceSourceError(f"data.root {root}: not a folder (data.source = {source!r})")
    check = FACE_SOURCES.meta(source).get("check")
    if check is not None:
        check(root)


def _check_identity_folders(root: Path, source: str = "folder") -> None:
    """A face folder's ``<identity>/<image>`` (or its manifest)."""
    if (root / FolderFaces.MANIFEST).is_file():
        return
    with os.scandir(root) as it:
        for entry in it:
            if entry.is_dir() and not entry.name.startswith("."):
                with os.scandir(entry.path) as inner:
                    if any(e.is_file() and _is_image_name(e.name) for e in inner):
                        return
    raise FaceSourceError(
        f"data.root {root}: no <identity>/<image> folder with an image in it (data.source = {source!r})"
    )


def _check_celeba(root: Path) -> None:
    missing = [
        n for n in ("img_align_celeba", "identity_CelebA.txt", "list_eval_partition.txt") if not (root / n).exists()
    ]
    if missing:
        raise FaceSourceError(
            f"data.root {root}: not the official CelebA layout (data.source = 'celeba'): missing {', '.join(missing)}"
        )


def _check_vggface2(root: Path) -> None:
    if not (root / "train").is_dir():
        raise FaceSourceError(
            f"data.root {root}: not the VGGFace2 layout (data.source = 'vggface2'): missing train/<identity>/*.jpg"
        )
    _check_identity_folders(root / "train", "vggface2")


@register_face_source("synthetic")
def _synthetic(cfg: DataConfig) -> FaceSource:
    return SyntheticFaces(cfg.synthetic_identities, cfg.synthetic_images_per_identity, cfg.height, cfg.width, cfg.seed)


@register_face_source("folder", check=_check_identity_folders)
def _folder(cfg: DataConfig) -> FaceSource:
    return FolderFaces(data_root(cfg))


@register_face_source("celeba", check=_check_celeba)
def _celeba(cfg: DataConfig) -> FaceSource:
    return CelebAFaces(data_root(cfg), partition="all")


@register_face_source("vggface2", check=_check_vggface2)
def _vggface2(cfg: DataConfig) -> FaceSource:
    return VGGFace2Faces(data_root(cfg), split="train")


def open_faces(cfg: DataConfig) -> FaceSource:
    """Build the face source named by ``cfg.source`` (a name of ``nasfe.registry.FACE_SOURCES``:
    'synthetic', 'folder', 'celeba', 'vggface2' and any registered with :func:`register_face_source`).

    Folder, CelebA and VGGFace2 read ``cfg.root`` (an error when it is unset or missing).
    CelebA opens all official partitions (``split_identities`` keeps them apart); VGGFace2 opens
    its ``train`` split. Sizes are the sources' canonical sizes; batches resize to
    ``cfg.height`` x ``cfg.width``.
    """
    if cfg.source not in FACE_SOURCES:
        raise FaceSourceError(f"data.source = {cfg.source!r}; expected one of {FACE_SOURCES.names()}")
    return FACE_SOURCES[cfg.source](cfg)


def identity_counts(source: FaceSource) -> Counter:
    """Images per identity of ``source``."""
    return Counter(r.identity for r in source.records)
