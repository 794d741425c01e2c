"""Evaluation outputs: Markdown/CSV tables, image montages, PSNR/SSIM bar charts, a Markdown report.

Number formats (Markdown only; the CSV keeps full precision so it round-trips):

* a column whose name contains ``psnr``: 2 decimals (dB); ``inf`` for identical images;
* a column whose name contains ``ssim``: 3 decimals;
* a percentage column -- named ``top<k>`` (e.g. ``top1``, as ``recognition_topk`` returns) or
  containing ``acc`` -- holds a fraction in [0, 1] and is shown as a percentage with 1 decimal,
  its header marked ``(%)``;
* other floats: 4 significant digits; anything else: ``str(value)``; a missing value: ``-``.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend state), and
every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nasfe.imageio import atomic_write_bytes, atomic_write_text

PathLike = Union[str, Path]

_PERCENT = re.compile(r"^top\d+$|acc")

# Montage geometry in pixels (see `montage_size`).
MONTAGE_PAD = 4
MONTAGE_TITLE_H = 36
MONTAGE_MIN_TILE_W = 240  # small tiles are enlarged by an integer factor up to this width
_DPI = 100


def _kind(column: str) -> str:
    c = column.lower()
    if "psnr" in c:
        return "psnr"
    if "ssim" in c:
        return "ssim"
    if _PERCENT.search(c):
        return "percent"
    return "other"


def _as_number(value: Any) -> Optional[float]:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def format_value(column: str, value: Any) -> str:
    """Format one table cell for Markdown by the column-name rules in the module docstring."""
    if value is None or (isinstance(value, str) and value == ""):
        return "-"
    x = _as_number(value)
    if x is None:
        return str(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    kind = _kind(column)
    if kind == "psnr":
        return f"{x:.2f}"
    if kind == "ssim":
        return f"{x:.3f}"
    if kind == "percent":
        return f"{100.0 * x:.1f}"
    if isinstance(value, int) or (isinstance(value, np.integer)):
        return str(value)
    return f"{x:.4g}"


def _header(column: str) -> str:
    return f"{column} (%)" if _kind(column) == "percent" else column


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_grid(header: Sequence[str], rows: Sequence[Sequence[Any]], aligns: Optional[Sequence[str]] = None) -> str:
    """A GitHub Markdown table of strings (``|`` and newlines escaped); ``aligns`` like ``"---:"``."""
    aligns = list(aligns) if aligns is not None else ["---"] * len(header)
    lines = ["| " + " | ".join(_md_escape(str(h)) for h in header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(_md_escape(str(v)) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns`` (formatted, see module doc)."""
    if not columns:
        raise ValueError("markdown_table: no columns given")
    # Right-align numbers, left-align text: decided by the first non-missing value of a column.
    aligns = []
    for c in columns:
        first = next((r[c] for r in rows if r.get(c) is not None), None)
        aligns.append("---:" if _as_number(first) is not None else ":---")
    return markdown_grid(
        [_header(c) for c in columns], [[format_value(c, r.get(c)) for c in columns] for r in rows], aligns
    )


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    x = _as_number(value)
    if x is None:
        return str(value)
    if isinstance(value, int) or isinstance(value, np.integer):
        return str(int(value))
    return repr(x)  # shortest string that parses back to the same float (incl. inf / nan)


def write_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], md_path: PathLike, csv_path: PathLike
) -> tuple[Path, Path]:
    """Write ``rows`` (dicts) as a Markdown table (formatted numbers) and a CSV (full precision).

    ``columns`` picks and orders the keys; a key missing from a row is an empty CSV cell and ``-``
    in Markdown. Returns ``(md_path, csv_path)``.
    """
    columns = list(columns)
    if not columns:
        raise ValueError(f"write_table({md_path}): no columns given")
    if len(set(columns)) != len(columns):
        raise ValueError(f"write_table({md_path}): duplicate columns in {columns}")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise TypeError(f"write_table({md_path}): row {i} is a {type(r).__name__}, not a dict")
    atomic_write_text(md_path, markdown_table(rows, columns))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_csv_cell(r.get(c)) for c in columns])
    atomic_write_text(csv_path, buf.getvalue())
    return Path(md_path), Path(csv_path)


def _to_hwc_uint8(t: torch.Tensor) -> np.ndarray:
    """(3,H,W) or (1,H,W) float [0,1] -> HxWx3 uint8."""
    t = t.detach().to("cpu", torch.float32).clamp(0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _tile_scale(width: int) -> int:
    return max(1, MONTAGE_MIN_TILE_W // width)


def montage_size(n_columns: int, n_rows: int, height: int, width: int) -> tuple[int, int]:
    """Pixel size (width, height) of a montage of ``n_rows`` x ``n_columns`` HxW tiles.

    Tiles are enlarged by ``s = max(1, MONTAGE_MIN_TILE_W // width)`` (nearest neighbour);
    width = ``n_columns * (s*W + pad) + pad``, height = ``title + n_rows * (s*H + pad)``.
    """
    s = _tile_scale(width)
    return (n_columns * (s * width + MONTAGE_PAD) + MONTAGE_PAD, MONTAGE_TITLE_H + n_rows * (s * height + MONTAGE_PAD))


def _render_png(fig: Figure) -> bytes:
    canvas = FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def montage(panels: Mapping[str, torch.Tensor], path: PathLike, max_rows: int = 4) -> Path:
    """Write a PNG grid: one column per panel (in the mapping's order, e.g. degraded | each
    method | clean) with its name as title, one row per image (at most ``max_rows``).

    Each panel is a (N,3,H,W) float tensor in [0, 1] (values are clamped), all of the same shape.
    Pixels are copied unresampled (integer enlargement only), so the PNG shows exactly what was
    measured; its size is ``montage_size(...)``. Returns the path.
    """
    if not panels:
        raise ValueError(f"montage({path}): no panels given")
    if max_rows < 1:
        raise ValueError(f"montage({path}): max_rows must be >= 1, got {max_rows}")
    shapes = {}
    for name, t in panels.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] not in (1, 3):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"montage({path}): panel {name!r} must be (N,3,H,W), got {shape}")
        shapes[name] = tuple(t.shape[i] for i in (0, 2, 3))
    if len(set(shapes.values())) != 1:
        raise ValueError(f"montage({path}): panels differ in (N,H,W): {shapes}")
    n, h, w = next(iter(shapes.values()))
    if n == 0:
        raise ValueError(f"montage({path}): panels hold no images")
    rows, cols = min(n, max_rows), len(panels)
    s = _tile_scale(w)
    fw, fh = montage_size(cols, rows, h, w)
    fig = Figure(figsize=(fw / _DPI, fh / _DPI), dpi=_DPI, facecolor="white")
    tw, th = s * w, s * h
    chars = max(8, tw // 7)  # ~7 px per character at 9 pt
    for j, (name, t) in enumerate(panels.items()):
        x0 = MONTAGE_PAD + j * (tw + MONTAGE_PAD)
        title = "\n".join(textwrap.wrap(str(name), chars)[:2]) or " "
        fig.text(
            (x0 + tw / 2) / fw,
            1 - (MONTAGE_TITLE_H / 2) / fh,
            title,
            ha="center",
            va="center",
            fontsize=9,
            family="DejaVu Sans",
        )
        for i in range(rows):
            tile = _to_hwc_uint8(t[i])
            if s > 1:
                tile = tile.repeat(s, axis=0).repeat(s, axis=1)
            y_top = MONTAGE_TITLE_H + i * (th + MONTAGE_PAD)
            # figimage offsets are in pixels from the bottom-left corner.
            fig.figimage(tile, xo=x0, yo=fh - y_top - th, origin="upper", resize=False)
    data = _render_png(fig)
    atomic_write_bytes(path, data)
    return Path(path)


def bar_chart(results: Mapping[str, Mapping[str, float]], path: PathLike, title: str = "") -> Path:
    """Two-panel bar chart (PSNR in dB | SSIM) with one bar per method, values printed on the bars.

    ``results``: ``{method: {'psnr': mean, 'ssim': mean}}``, optionally with ``psnr_std`` /
    ``ssim_std`` drawn as error bars. An infinite PSNR is drawn at the top of the axis and
    labelled ``inf``. Returns the path of the PNG.
    """
    if not results:
        raise ValueError(f"bar_chart({path}): no results given")
    methods = list(results)
    for m in methods:
        missing = [k for k in ("psnr", "ssim") if k not in results[m]]
        if missing:
            raise ValueError(f"bar_chart({path}): method {m!r} lacks {missing}")
    width_in = max(6.0, 2.0 + 0.9 * len(methods))
    fig = Figure(figsize=(width_in, 4.0), dpi=_DPI, facecolor="white")
    colors = [f"C{i % 10}" for i in range(len(methods))]
    for k, (metric, label) in enumerate((("psnr", "PSNR (dB)"), ("ssim", "SSIM"))):
        ax = fig.add_subplot(1, 2, k + 1)
        vals = np.array([float(results[m][metric]) for m in methods], dtype=np.float64)
        errs = np.array([float(results[m].get(f"{metric}_std", 0.0) or 0.0) for m in methods])
        errs = np.where(np.isfinite(errs), errs, 0.0)
        finite = vals[np.isfinite(vals)]
        top = float((finite + errs[np.isfinite(vals)]).max()) if finite.size else 1.0
        top = top * 1.15 if top > 0 else 1.0
        is_inf = np.isinf(vals)
        # An infinite PSNR (identical images) is drawn hatched, up to the top of the axis.
        drawn = np.where(is_inf, top, np.nan_to_num(vals, nan=0.0))
        x = np.arange(len(methods))
        bars = ax.bar(x, drawn, color=colors)
        for b, inf in zip(bars, is_inf):
            if inf:
                b.set_hatch("//")
        has_err = (errs > 0) & ~is_inf
        if has_err.any():
            ax.errorbar(x[has_err], drawn[has_err], yerr=errs[has_err], fmt="none", ecolor="black", capsize=3)
        for xi, v, d, e in zip(x, vals, drawn, errs):
            y_text = top * 0.97 if np.isinf(v) else d + e
            ax.text(
                xi,
                y_text,
                format_value(metric, v),
                ha="center",
                va="top" if np.isinf(v) else "bottom",
                fontsize=8,
                bbox=dict(facecolor="white", edgecolor="none", pad=1) if np.isinf(v) else None,
            )
        ax.set_xticks(x)
        ax.set_xticklabels(
            methods, rotation=30 if len(methods) > 3 else 0, ha="right" if len(methods) > 3 else "center", fontsize=8
        )
        ax.set_ylim(0, top)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    atomic_write_bytes(path, _render_png(fig))
    return Path(path)


TableSpec = Union[PathLike, tuple]


def _table_markdown(name: str, spec: TableSpec, out_dir: Path) -> str:
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise ValueError(f"write_report: table {name!r} must be a path or (rows, columns)")
        return markdown_table(spec[0], spec[1])
    p = Path(spec)
    if not p.is_absolute() and not p.exists():
        p = out_dir / p
    if not p.is_file():
        raise FileNotFoundError(f"write_report: table {name!r}: no file {p}")
    return p.read_text(encoding="utf-8")


def _link(target: Path, out_dir: Path) -> str:
    try:
        rel = os.path.relpath(Path(target).resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        rel = str(Path(target).resolve())
    return Path(rel).as_posix()


def write_report(
    out_dir: PathLike,
    tables: Mapping[str, TableSpec],
    figures: Mapping[str, PathLike],
    title: str = "NASFE evaluation",
    notes: str = "",
) -> Path:
    """Write ``out_dir/report.md``: a title, optional notes, each table under its name, and each
    figure as an image link (relative to ``out_dir``) under its caption.

    ``tables``: ``{name: path of a Markdown table file (e.g. from write_table) | (rows, columns)}``;
    ``figures``: ``{caption: path of a PNG}`` (each must exist). Returns the report's path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"]
    if notes:
        parts.append(notes.strip() + "\n")
    for name, spec in tables.items():
        parts.append(f"## {name}\n\n{_table_markdown(name, spec, out)}")
    for caption, fpath in figures.items():
        p = Path(fpath)
        if not p.is_absolute() and not p.exists():
            p = out / p
        if not p.is_file():
            raise FileNotFoundError(f"write_report: figure {caption!r}: no file {p}")
        parts.append(f"## {caption}\n\n![{_md_escape(caption)}]({_link(p, out)})\n")
    report = out / "report.md"
    atomic_write_text(report, "\n".join(parts))
    return report
