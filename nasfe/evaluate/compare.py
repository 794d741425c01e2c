"""``nasfe compare``: derived architectures side by side.

Inputs are ``genotype.json`` files or run directories (holding ``genotype.json`` and maybe
``retrain_summary.json`` / ``search_summary.json`` with validation metrics, and the space the run
used). Output: one table (operator per edge, network-level path, parameters, FLOPs, CPU latency,
validation metrics), a readable diff against the first genotype, a PNG per cell, an operator
histogram across all genotypes; Markdown on stdout, and with ``--out DIR`` also
``compare.md``, ``compare.csv``, ``cells/*.png`` and ``op_histogram.png``. When a W&B run is
active in the process the table is logged as a ``wandb.Table`` too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


from nasfe.config import ConfigError, SpaceConfig, load_space, space_from_dict
from nasfe.genotype import Genotype, GenotypeError, diff_genotypes
from nasfe.evaluate.report import markdown_grid
from nasfe.imageio import atomic_output
from nasfe.engine.checkpoint import CheckpointError, load_checkpoint
import torch
from torch.utils.flop_counter import FlopCounterMode
from nasfe.model.registry import create_model
from nasfe.evaluate.cell_graph import input_name
import matplotlib
import matplotlib.pyplot as plt
from nasfe.evaluate.cell_graph import draw_genotype_cells
from nasfe.imageio import atomic_write_text
from nasfe.errors import CommandError
from nasfe.imageio import ensure_writable_dir

log = logging.getLogger("nasfe.compare")

#: files a run directory may hold the space in, in order of preference
SPACE_FILES = ("space.yaml", "config.yaml")
SUMMARY_FILES = ("retrain_summary.json", "search_summary.json")
METRIC_KEYS = ("val_psnr", "val_ssim", "input_psnr")
MISSING = "-"


@dataclass
class ArchEntry:
    """One architecture to compare: its genotype, the space to build it in, its recorded metrics."""

    label: str
    genotype: Genotype
    source: Path
    space: Optional[SpaceConfig] = None
    space_note: str = ""  # why there is no space, or where it came from
    metrics: dict[str, Any] = field(default_factory=dict)  # phase ('search'/'retrain') -> its metrics
    cost: dict[str, Any] = field(default_factory=dict)  # params, gflops, latency_ms


def _read_space(run_dir: Path) -> tuple[Optional[SpaceConfig], str]:
    """The space saved with a run: space.yaml/config.yaml, else the one inside model.pt."""
    for name in SPACE_FILES:
        p = run_dir / name
        if p.is_file():
            try:
                return load_space(p), str(p)
            except ConfigError as exc:
                return None, f"{p} unreadable: {exc}"
    model_pt = run_dir / "model.pt"
    if model_pt.is_file():
        try:
            payload = load_checkpoint(model_pt, required=("space",))
            return space_from_dict(payload["space"], where=str(model_pt)), str(model_pt)
        except (CheckpointError, ConfigError) as exc:
            return None, f"{model_pt} unreadable: {exc}"
    return None, ""


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    """Validation metrics per phase: ``{'retrain': {...}, 'search': {...}}`` from the run's summaries.

    A search summary's metrics belong to the supernet during the search, a retrain summary's to
    the derived network: they are kept apart and labelled with their phase.
    """
    out: dict[str, Any] = {}
    for name in SUMMARY_FILES:
        p = run_dir / name
        if not p.is_file():
            continue
        try:
            summary = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s: not valid JSON; metrics left out", p)
            continue
        final = summary.get("final") or {}
        phase = {k: final[k] for k in METRIC_KEYS if isinstance(final.get(k), (int, float))}
        if isinstance(summary.get("best_val_psnr"), (int, float)):
            phase["best_val_psnr"] = summary["best_val_psnr"]
        out[name.split("_")[0]] = phase
    return out


def _builtin_space_for(genotype: Genotype) -> Optional[SpaceConfig]:
    """The built-in space named in the genotype's meta, when its hash matches."""
    name = genotype.meta.get("space")
    if not isinstance(name, str):
        return None
    try:
        space = load_space(name)
    except ConfigError:
        return None
    return space if space.space_hash() == genotype.space_hash else None


def load_entry(path: str | Path, space: Optional[SpaceConfig] = None) -> ArchEntry:
    """Read a genotype file or a run directory; ``space`` (``--space``) wins over the saved one."""
    path = Path(path)
    if path.is_dir():
        gfile = path / "genotype.json"
        if not gfile.is_file():
            raise FileNotFoundError(f"{path}: a run directory needs genotype.json, not found")
        run_dir, label = path, path.name
    elif path.is_file():
        gfile, run_dir = path, path.parent
        label = path.parent.name if path.name == "genotype.json" else path.stem
    else:
        raise FileNotFoundError(f"{path}: no such genotype file or run directory")
    genotype = Genotype.from_json(gfile)
    note = "--space"
    if space is None:
        space, note = _read_space(run_dir)
        if space is None and not note:
            space = _builtin_space_for(genotype)
            note = (
                f"built-in space {genotype.meta.get('space')!r}"
                if space is not None
                else "no space saved with it (pass --space)"
            )
    if space is not None:
        try:
            genotype.check_space(space, str(gfile))
        except GenotypeError as exc:
            space, note = None, str(exc)
    metrics = _read_metrics(run_dir) if path.is_dir() or path.name == "genotype.json" else {}
    return ArchEntry(label=label, genotype=genotype, source=gfile, space=space, space_note=note, metrics=metrics)


def unique_labels(entries: Sequence[ArchEntry]) -> None:
    """Make labels unique and file-name safe (``run``, ``run-2`` ...)."""
    seen: Counter = Counter()
    for e in entries:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", e.label) or "genotype"
        seen[base] += 1
        e.label = base if seen[base] == 1 else f"{base}-{seen[base]}"


def measure_cost(space: SpaceConfig, genotype: Genotype, latency_runs: int = 0, warmup: int = 3) -> dict[str, Any]:
    """Trainable parameters, forward GFLOPs (and, with ``latency_runs``, CPU latency) of the derived network.

    One image of ``data.height x data.width``, restored without reference photos. The frozen face
    backbone is not counted in the parameters (it does not train) but its FLOPs are, when the
    network uses I_iden.
    """

    model, y = _build(space, genotype)
    params = sum(p.numel() for p in model.weight_parameters())
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(y)
    out = {"params": int(params), "gflops": counter.get_total_flops() / 1e9}
    if latency_runs > 0:
        out.update(measure_latency([(model, y)], latency_runs, warmup)[0])
    return out


def _build(space: SpaceConfig, genotype: Genotype):
    torch.manual_seed(0)
    model = create_model(space, genotype).eval()
    y = torch.rand(1, 3, space.data.height, space.data.width, generator=torch.Generator().manual_seed(0))
    return model, y


def measure_latency(models: Sequence[tuple[Any, Any]], runs: int, warmup: int = 3) -> list[dict[str, Any]]:
    """Forward-pass latency (ms) of each ``(model, input)``: median, quartiles and spread of ``runs``.

    Every network gets ``warmup`` untimed passes first (allocation, kernel selection), then the
    timed passes go round-robin over the networks, so a load change on the machine hits them all
    alike instead of whichever ran at that moment.
    """

    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model, y in models:
            for _ in range(warmup):
                model(y)
        for _ in range(runs):
            for i, (model, y) in enumerate(models):
                t0 = time.perf_counter()
                model(y)
                times[i].append((time.perf_counter() - t0) * 1000)
    out = []
    for t in times:
        q1, q3 = (statistics.quantiles(t, n=4)[0], statistics.quantiles(t, n=4)[2]) if len(t) >= 4 else (min(t), max(t))
        out.append(
            {
                "latency_ms": statistics.median(t),
                "latency_q1_ms": q1,
                "latency_q3_ms": q3,
                "latency_runs": len(t),
                "latency_warmup": warmup,
            }
        )
    return out


#: a latency whose interquartile range exceeds this share of its median is flagged as unsteady
UNSTEADY = 0.25


def latency_warning(entries: Sequence["ArchEntry"]) -> Optional[str]:
    """A line when some measured latency was unsteady (a loaded machine), else None."""
    bad = [
        e.label
        for e in entries
        if e.cost.get("latency_ms")
        and (e.cost["latency_q3_ms"] - e.cost["latency_q1_ms"]) > UNSTEADY * e.cost["latency_ms"]
    ]
    if not bad:
        return None
    return (
        f"latency unsteady for {', '.join(bad)} (interquartile range over {UNSTEADY:.0%} of the median): "
        f"the machine is probably loaded; re-measure on an idle one, or leave latency out (--no-latency)"
    )


def edge_rows(entries: Sequence[ArchEntry]) -> list[tuple[str, list[str]]]:
    """One row per (cell type, block, edge): ``op <- input`` for each architecture."""

    keys: list[tuple[int, int, int]] = []
    for e in entries:
        for c, cell in enumerate(e.genotype.cells):
            for b in range(len(cell)):
                for k in range(2):
                    if (c, b, k) not in keys:
                        keys.append((c, b, k))
    keys.sort()
    rows = []
    for c, b, k in keys:
        values = []
        for e in entries:
            cells = e.genotype.cells
            if c < len(cells) and b < len(cells[c]):
                gene = cells[c][b]
                values.append(f"{gene.ops[k]} <- {input_name(gene.inputs[k])}")
            else:
                values.append(MISSING)
        rows.append((f"cell {c} block {b} edge {k}", values))
    return rows


def _fmt(value: Any, fmt: str) -> str:
    return MISSING if value is None else format(value, fmt)


def comparison_rows(entries: Sequence[ArchEntry]) -> list[tuple[str, list[str]]]:
    """The side-by-side table: attribute rows, one column per architecture."""
    rows: list[tuple[str, list[str]]] = [
        ("genotype id", [e.genotype.genotype_id() for e in entries]),
        ("blocks B", [str(e.genotype.blocks) for e in entries]),
        ("network path", [" ".join(str(s) for s in e.genotype.path) for e in entries]),
    ]
    rows += edge_rows(entries)
    rows += [
        ("parameters (M)", [_fmt(e.cost.get("params") and e.cost["params"] / 1e6, ".4f") for e in entries]),
        ("GFLOPs", [_fmt(e.cost.get("gflops"), ".4f") for e in entries]),
    ]
    runs = max((e.cost.get("latency_runs", 0) for e in entries), default=0)
    if runs:
        rows.append(
            (
                f"latency (ms, CPU, median [q1-q3] of {runs})",
                [
                    MISSING
                    if e.cost.get("latency_ms") is None
                    else f"{e.cost['latency_ms']:.1f} [{e.cost['latency_q1_ms']:.1f}-{e.cost['latency_q3_ms']:.1f}]"
                    for e in entries
                ],
            )
        )
    for phase in ("retrain", "search"):  # each metric labelled with the phase it was measured in
        if not any(e.metrics.get(phase) for e in entries):
            continue
        m = [e.metrics.get(phase, {}) for e in entries]
        rows += [
            (f"{phase} val PSNR (dB)", [_fmt(x.get("val_psnr"), ".3f") for x in m]),
            (f"{phase} val SSIM", [_fmt(x.get("val_ssim"), ".4f") for x in m]),
            (f"{phase} best val PSNR (dB)", [_fmt(x.get("best_val_psnr"), ".3f") for x in m]),
        ]
    return rows


def operator_histogram(entries: Sequence[ArchEntry]) -> dict[str, list[int]]:
    """Operator -> count per architecture (every edge of every cell type), most used first."""
    per = [Counter(op for cell in e.genotype.cells for g in cell for op in g.ops) for e in entries]
    ops = sorted(set().union(*per), key=lambda o: (-sum(c[o] for c in per), o))
    return {op: [c[op] for c in per] for op in ops}


def diffs(entries: Sequence[ArchEntry]) -> list[tuple[str, str, list[str]]]:
    """``(reference, other, lines)`` for every architecture after the first, against the first."""
    if len(entries) < 2:
        return []
    ref = entries[0]
    return [(ref.label, e.label, diff_genotypes(ref.genotype, e.genotype)) for e in entries[1:]]


def render_markdown(entries: Sequence[ArchEntry], rows, hist, diff_list, images: Optional[dict] = None) -> str:
    """The whole report as Markdown."""
    labels = [e.label for e in entries]
    out = ["# Architecture comparison", ""]
    out += [
        f"- **{e.label}**: `{e.source}`"
        + (f" (space: {e.space_note})" if e.space_note else "")
        + (
            f", metrics of {' and '.join(e.metrics)} (from {', '.join(f'{p}_summary.json' for p in e.metrics)})"
            if e.metrics
            else ""
        )
        for e in entries
    ]
    out += ["", markdown_grid(["", *labels], [[name, *vals] for name, vals in rows]).rstrip(), ""]
    warning = latency_warning(entries)
    if warning:
        out += [f"**Warning**: {warning}.", ""]
    for ref, other, lines in diff_list:
        out += [f"## Diff: {ref} -> {other}", ""]
        out += [f"- {line}" for line in lines] if lines else ["(identical architectures)"]
        out.append("")
    out += [
        "## Operator histogram",
        "",
        markdown_grid(
            ["operator", *labels, "total"], [[op, *map(str, c), str(sum(c))] for op, c in hist.items()]
        ).rstrip(),
        "",
    ]
    if images:
        out += ["## Cells", ""]
        for label, paths in images.get("cells", {}).items():
            out += [f"![{label} {Path(p).stem}]({p})" for p in paths]
        if images.get("histogram"):
            out += [f"![operator histogram]({images['histogram']})"]
        out.append("")
    return "\n".join(out)


def render_csv(entries: Sequence[ArchEntry], rows) -> str:
    """The side-by-side table as CSV (first column: attribute)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["attribute", *[e.label for e in entries]])
    for name, vals in rows:
        w.writerow([name, *vals])
    return buf.getvalue()


def draw_histogram(hist: dict[str, list[int]], labels: Sequence[str], path: str | Path) -> Path:
    """Stacked bars: how often each operator was chosen, one colour per architecture."""

    matplotlib.use("Agg", force=False)

    ops = list(hist)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(ops) + 2), 3.8))
    bottom = [0] * len(ops)
    for i, label in enumerate(labels):
        counts = [hist[o][i] for o in ops]
        ax.bar(ops, counts, bottom=bottom, label=label)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_ylabel("edges")
    ax.set_title(f"operators chosen across {len(labels)} genotype(s)")
    ax.tick_params(axis="x", rotation=35)
    if len(labels) <= 12:
        ax.legend(fontsize=7)
    path = Path(path)
    with atomic_output(path) as fh:  # a full disk never leaves a half-written PNG
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def log_wandb(entries: Sequence[ArchEntry], rows, hist, images: Optional[dict] = None) -> bool:
    """Log the table (and pictures) to the active W&B run, if there is one; True when logged."""
    wandb = sys.modules.get("wandb")  # only a process that already uses W&B can have an active run
    if wandb is None or getattr(wandb, "run", None) is None:
        return False
    table = wandb.Table(columns=["attribute", *[e.label for e in entries]], data=[[n, *v] for n, v in rows])
    payload: dict[str, Any] = {"compare/table": table}
    hist_table = wandb.Table(
        columns=["operator", *[e.label for e in entries]], data=[[op, *c] for op, c in hist.items()]
    )
    payload["compare/op_histogram"] = hist_table
    for paths in (images or {}).get("cells", {}).values():
        for p in paths:
            payload[f"compare/cells/{Path(p).stem}"] = wandb.Image(str(p))
    try:
        wandb.run.log(payload)
    except Exception as exc:  # W&B must never fail a comparison
        log.warning("W&B logging failed: %s", exc)
        return False
    return True


@dataclass
class CompareReport:
    """What :func:`compare` produced."""

    entries: list[ArchEntry]
    rows: list[tuple[str, list[str]]]
    histogram: dict[str, list[int]]
    diffs: list[tuple[str, str, list[str]]]
    markdown: str
    csv: str
    files: list[Path] = field(default_factory=list)
    wandb_logged: bool = False


def compare(
    paths: Sequence[str | Path],
    space: Optional[str | SpaceConfig] = None,
    out_dir: Optional[str | Path] = None,
    latency_runs: int = 10,
    measure: bool = True,
    warmup: int = 3,
) -> CompareReport:
    """Compare the architectures at ``paths`` (genotype files or run directories).

    ``space`` (name, path or SpaceConfig) builds every genotype when given; otherwise each uses
    the space saved with it. ``measure=False`` skips building the networks (no parameters,
    FLOPs or latency); ``latency_runs=0`` leaves latency out; else each network gets ``warmup``
    untimed passes and ``latency_runs`` timed ones, taken in turns across the networks. With ``out_dir``: writes compare.md, compare.csv, cells/*.png and
    op_histogram.png there.
    """
    if not paths:
        raise ConfigError("compare: give at least one genotype.json or run directory")
    if isinstance(space, (str, Path)):
        space = load_space(space)
    entries = [load_entry(p, space) for p in paths]
    unique_labels(entries)
    if measure:
        built = []
        for e in entries:
            if e.space is None:
                log.warning("%s: parameters/FLOPs/latency left out: %s", e.label, e.space_note)
                continue
            e.cost = measure_cost(e.space, e.genotype)
            built.append(e)
        if latency_runs > 0 and built:
            timed = measure_latency([_build(e.space, e.genotype) for e in built], latency_runs, warmup)
            for e, t in zip(built, timed):
                e.cost.update(t)
            warning = latency_warning(built)
            if warning:
                log.warning(warning)
    rows = comparison_rows(entries)
    hist = operator_histogram(entries)
    diff_list = diffs(entries)
    files: list[Path] = []
    images: dict[str, Any] = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        images["cells"] = {}
        for e in entries:
            drawn = draw_genotype_cells(e.genotype, out / "cells", e.label)
            images["cells"][e.label] = [str(p.relative_to(out)) for p in drawn]
            files += drawn
        hist_png = draw_histogram(hist, [e.label for e in entries], out / "op_histogram.png")
        images["histogram"] = str(hist_png.relative_to(out))
        files.append(hist_png)
    markdown = render_markdown(entries, rows, hist, diff_list, images or None)
    text_csv = render_csv(entries, rows)
    if out_dir is not None:
        for name, text in (("compare.md", markdown), ("compare.csv", text_csv)):
            atomic_write_text(Path(out_dir) / name, text)
            files.append(Path(out_dir) / name)
    if images:
        images = {"cells": {k: [Path(out_dir) / p for p in v] for k, v in images["cells"].items()}}
    logged = log_wandb(entries, rows, hist, images)
    return CompareReport(entries, rows, hist, diff_list, markdown, text_csv, files, logged)


def add_arguments(parser) -> None:
    """Arguments of ``nasfe compare``."""
    parser.add_argument("paths", nargs="+", help="genotype.json files or run directories (holding genotype.json)")
    parser.add_argument(
        "--space",
        default=None,
        help="search space (name or YAML) to build every genotype in; default: the one saved with each run",
    )
    parser.add_argument("--out", default=None, help="folder for compare.md, compare.csv, cells/*.png, op_histogram.png")
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=10,
        help="timed forward passes per network, in turns across networks (median and quartiles; "
        "default 10; 0: no latency)",
    )
    parser.add_argument("--latency-warmup", type=int, default=3, help="untimed passes per network first (default 3)")
    parser.add_argument("--no-latency", action="store_true", help="leave latency out (as --latency-runs 0)")
    parser.add_argument(
        "--no-measure", action="store_true", help="skip building the networks (no parameters/FLOPs/latency)"
    )


def main(args) -> int:
    """Run ``nasfe compare`` and print the Markdown report."""
    if args.latency_runs < 0 or args.latency_warmup < 0:
        raise CommandError("--latency-runs and --latency-warmup must be >= 0")
    if args.out:
        ensure_writable_dir(args.out)  # a file named --out, or an unwritable folder: one line before any work
    report = compare(
        args.paths,
        space=args.space,
        out_dir=args.out,
        latency_runs=0 if args.no_latency else args.latency_runs,
        measure=not args.no_measure,
        warmup=args.latency_warmup,
    )
    print(report.markdown)
    if args.out:
        print(f"\nwrote {len(report.files)} files to {args.out}", file=sys.stderr)
    return 0
