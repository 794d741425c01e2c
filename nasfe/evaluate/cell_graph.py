"""A derived fusion cell drawn as a graph (PNG, matplotlib only; no graphviz).

Nodes: the cell's two inputs ``c_{k-2}`` and ``c_{k-1}``, its B blocks, and the output (the
concatenation of the blocks). Each block has two incoming edges labelled with their operator; the
dashed grey edges into the output are the concatenation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from nasfe.genotype import BlockGene, Genotype
from nasfe.imageio import atomic_output
import matplotlib
import matplotlib.pyplot as plt


def input_name(index: int) -> str:
    """Name of block input ``index``: 0 -> c_{k-2}, 1 -> c_{k-1}, 2 + j -> block j."""
    return ("c_{k-2}", "c_{k-1}")[index] if index < 2 else f"block {index - 2}"


def _layout(blocks: int) -> dict[int, tuple[float, float]]:
    """Node positions: inputs on the left, blocks left to right, alternating up and down so that
    edges skipping blocks do not run through the nodes in between."""
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for j in range(blocks):
        pos[2 + j] = (1.5 + 1.5 * j, 0.9 if j % 2 == 0 else -0.9)
    pos[-1] = (1.5 + 1.5 * blocks, 0.0)  # output
    return pos


def draw_cell(cell: Sequence[BlockGene], path: str | Path, title: Optional[str] = None, dpi: int = 110) -> Path:
    """Draw one cell (a list of :class:`BlockGene`) and save it as a PNG at ``path``."""

    matplotlib.use("Agg", force=False)  # files only; never needs a display

    blocks = len(cell)
    pos = _layout(blocks)
    width = max(5.0, 1.9 * (blocks + 2))
    fig, ax = plt.subplots(figsize=(width, 3.8))
    ax.set_axis_off()
    colors = {"input": "#cfe2f3", "block": "#fff2cc", "output": "#d9ead3"}

    def node(key: int, label: str, kind: str) -> None:
        x, y = pos[key]
        ax.text(
            x,
            y,
            label,
            ha="center",
            va="center",
            fontsize=9,
            zorder=3,
            bbox=dict(boxstyle="round,pad=0.45", fc=colors[kind], ec="#555555"),
        )

    def edge(src: int, dst: int, label: Optional[str], rad: float, style: str = "-", color: str = "#333333") -> None:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            zorder=1,
            arrowprops=dict(
                arrowstyle="-|>",
                color=color,
                lw=1.2,
                linestyle=style,
                shrinkA=16,
                shrinkB=16,
                connectionstyle=f"arc3,rad={rad}",
            ),
        )
        if label:
            # the label sits on the curve's midpoint: the chord's midpoint pushed along its normal
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            nx, ny = (y1 - y0), -(x1 - x0)
            ax.text(
                mx + rad * nx / 2,
                my + rad * ny / 2,
                label,
                ha="center",
                va="center",
                fontsize=7.5,
                color="#1f3b73",
                zorder=4,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85),
            )

    node(0, "c_{k-2}", "input")
    node(1, "c_{k-1}", "input")
    for j in range(blocks):
        node(2 + j, f"block {j}", "block")
    node(-1, "output\n(concat)", "output")
    for j, gene in enumerate(cell):
        for k, (src, op) in enumerate(zip(gene.inputs, gene.ops)):
            # the two edges of a block bend in opposite directions so their labels never overlap
            rad = 0.18 if k == 0 else -0.18
            edge(src, 2 + j, op, rad)
    for j in range(blocks):
        edge(2 + j, -1, None, 0.0, style="--", color="#999999")
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-1.8, 1.8)
    if title:
        ax.set_title(title, fontsize=10)
    path = Path(path)
    with atomic_output(path) as fh:  # a full disk never leaves a half-written PNG
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def draw_genotype_cells(genotype: Genotype, out_dir: str | Path, label: str) -> list[Path]:
    """One PNG per cell type of ``genotype``: ``<out_dir>/<label>_cell<k>.png``."""
    paths = []
    for k, cell in enumerate(genotype.cells):
        which = "shared cell" if len(genotype.cells) == 1 else f"cell of layer {k}"
        title = f"{label}: {which} (B={genotype.blocks}, path {genotype.path})"
        paths.append(draw_cell(cell, Path(out_dir) / f"{label}_cell{k}.png", title=title))
    return paths
