"""Image files in and out: any image file -> HxWx3 uint8 RGB, and atomic writes.

This is the only place where uint8 HWC arrays meet the float (3,H,W) tensors used everywhere
inside nasfe. Conversions done by :func:`read_image`:

* grayscale (``L``, ``1``)      -> the gray channel replicated three times;
* with alpha (``RGBA``, ``LA``, palette with transparency) -> composited on black
  (colour * alpha), so a transparent background becomes black, never random colour;
* 16-bit / 32-bit integer       -> scaled to 0..255 (value / 257 for 16-bit data);
* float (``F``)                 -> read as 0..1 when its maximum is <= 1, otherwise 0..255; clipped;
* CMYK, YCbCr, palette          -> converted to RGB by Pillow;
* EXIF orientation              -> applied, so the array is upright as a viewer shows it.

Truncated, corrupt, empty or missing files raise :class:`ImageReadError` naming the file and why.
Writes go to a temporary file in the same folder, then ``os.replace``: an interrupted write never
leaves a half-written file under the final name, and the file gets the usual mode (0644 under the
usual umask). A full disk or an unwritable folder is a :class:`~nasfe.errors.WriteError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from nasfe.errors import ImageReadError, WriteError
from nasfe.data.remote import fill_placeholder as fill
from nasfe.errors import CommandError

PathLike = Union[str, os.PathLike]


def _composite_on_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """colour * alpha / 255, rounded: a transparent pixel becomes black."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.clip(np.rint(rgb.astype(np.float32) * a), 0, 255).astype(np.uint8)


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16/32-bit integer or float single-channel array to uint8."""
    if mode == "F" or arr.dtype.kind == "f":
        a = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    a = arr.astype(np.int64)
    # 16-bit data (Pillow reports 16-bit PNGs as I;16 or as I with values < 65536).
    return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        # A palette may carry transparency; RGBA keeps it so it can be composited below.
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode in ("RGBA", "RGBa"):
        if mode == "RGBa":
            im = im.convert("RGBA")
        a = np.asarray(im, dtype=np.uint8)
        return _composite_on_black(a[..., :3], a[..., 3])
    if mode in ("L", "1"):
        g = np.asarray(im.convert("L"), dtype=np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "LA":
        a = np.asarray(im, dtype=np.uint8)
        g = _composite_on_black(a[..., 0:1].repeat(3, axis=2), a[..., 1])
        return g
    if mode.startswith("I") or mode == "F":
        g = _wide_to_uint8(np.asarray(im), mode)
        if g.ndim == 2:
            g = np.repeat(g[..., None], 3, axis=2)
        return g
    return np.asarray(im.convert("RGB"), dtype=np.uint8)  # CMYK, YCbCr, LAB, HSV


def fill_placeholder(path: PathLike) -> bool:
    """Fetch ``path`` when it is an empty placeholder of faces read from S3 on first use
    (:func:`nasfe.data.remote.open_lazily`); True when it was one. Other files: False, nothing done."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size:
        return False

    return fill(p)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an HxWx3 uint8 RGB array (conversions: see the module docstring).

    Raises :class:`ImageReadError` naming ``path`` when the file is missing, empty, not an image,
    truncated or otherwise corrupt.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "no such file" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0 and (not fill_placeholder(p) or p.stat().st_size == 0):
        raise ImageReadError(p, "the file is empty (0 bytes)")
    try:
        with Image.open(p) as im:
            im.load()  # decodes everything now: truncation and corruption surface here
            im = ImageOps.exif_transpose(im)
            arr = _pil_to_rgb(im)
    except UnidentifiedImageError:
        raise ImageReadError(p, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(p, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated data as OSError("image file is truncated ...").
        raise ImageReadError(p, f"corrupt or truncated image data ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(p, f"decoded to an unusable shape {arr.shape}")
    return np.ascontiguousarray(arr)


_UMASK_LOCK = threading.Lock()


def _file_mode() -> int:
    """0666 less the process umask: the mode ``open()`` would give a new file (mkstemp gives 0600)."""
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _write_error(path: Path, exc: OSError) -> WriteError:
    reason = exc.strerror or str(exc)
    return WriteError(f"{path}: cannot write ({reason}); nothing was left half written")


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[BinaryIO]:
    """A binary file object whose content lands at ``path`` only when the block ends without error.

    It writes a temporary file in the same folder (created with the mode a plain ``open()`` would
    give, not mkstemp's 0600), fsyncs it and renames it over ``path``. If anything fails, the
    temporary file is removed and ``path`` keeps its previous content (or stays absent); a full
    disk or a folder that cannot be written raises :class:`~nasfe.errors.WriteError` naming ``path``.
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(p, exc) from None
    sink = None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            sink = _Sink(f)
            yield sink
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # torch.save reports a full disk as RuntimeError("enforce fail ..."): the sink saw the OSError
        cause = exc if isinstance(exc, OSError) else (sink.error if sink is not None else None)
        if cause is not None and not isinstance(exc, WriteError):
            raise _write_error(p, cause) from None
        raise


class _Sink:
    """A file object that remembers the OSError of a failed write (writers may hide it)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`); parent folders are created."""
    with atomic_output(path) as f:
        f.write(data)


def ensure_writable_dir(path: PathLike, what: str = "--out") -> Path:
    """Create folder ``path`` if needed and check a file can be written in it, before any work.

    Raises :class:`~nasfe.errors.WriteError` naming the folder (read-only, forbidden, full disk).
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise WriteError(f"{what} {p}: a file, not a folder; choose a folder (it is created when missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".nasfe-write-check.", delete=True) as f:
            f.write(b"x")
            f.flush()
    except OSError as exc:
        raise WriteError(f"{what} {p}: cannot write there ({exc.strerror or exc})") from None
    return p


def refuse_inside(out: PathLike, inputs: list[tuple[str, Optional[PathLike]]], what: str = "--out") -> None:
    """:class:`~nasfe.errors.CommandError` when the output folder ``out`` is one of the input
    folders ``inputs`` ((flag, folder) pairs; None folders skipped) or lies inside one: outputs
    would mix with the inputs (and be read as inputs next time)."""

    o = Path(out).expanduser().resolve()
    for flag, folder in inputs:
        if folder is None:
            continue
        f = Path(folder).expanduser().resolve()
        if o == f or f in o.parents:
            raise CommandError(
                f"{what} {out} lies inside {flag} {folder}: outputs would mix with the inputs; "
                f"choose a folder outside it"
            )


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def write_png_atomic(path: PathLike, array_uint8_hwc: np.ndarray) -> None:
    """Write an HxWx3 (or HxW) uint8 array as a PNG file, atomically."""
    a = np.asarray(array_uint8_hwc)
    if a.dtype != np.uint8:
        raise ValueError(f"{path}: write_png_atomic needs a uint8 array, got {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise ValueError(f"{path}: write_png_atomic needs HxW or HxWx{{1,3,4}}, got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array -> float32 tensor (3,H,W) in [0, 1]."""
    a = np.asarray(array)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"to_tensor expects an HxWx3 array, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"to_tensor expects uint8, got {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div_(255.0)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float tensor (3,H,W) in [0, 1] -> HxWx3 uint8 array (clamped, rounded to nearest)."""
    t = torch.as_tensor(tensor)
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"to_uint8 expects a (3,H,W) tensor, got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round()
    return np.ascontiguousarray(t.to(torch.uint8).permute(1, 2, 0).numpy())
