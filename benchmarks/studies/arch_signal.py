"""Does a search know what it is choosing? Two probes of a search checkpoint's supernet.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/studies/arch_signal.py runs/t6/seed0/search/fd69f45ca120 \\
        --row bn_nas --batches 16 --set 'model.operators=[...]' --set model.fusion_skip=false

1. The alpha gradient on ``--batches`` architecture batches (fresh degradations each): per edge and
   operator its mean and t = mean / (std / sqrt(n)). |t| > 2 on an operator says the batches
   agree on its direction; alpha descends the gradient, so a negative t means alpha grows.
2. Strength (DARTS-PT, Wang et al. 2021; ``nasfe.engine.selection``, what ``search.selection:
   strength`` uses): the architecture-batch loss with one operator of one edge (or one trellis
   transition) masked out of its softmax, minus the loss with none masked. Large means the supernet
   relies on it. Then the genotypes alpha and strength derive.

The space is the checkpoint's: ``--space`` plus the row's settings (``--row``) and ``--set``
overrides must rebuild the network that was searched (the checkpoint's tensors must load).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root

import torch  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("search_dir", help="a search run folder (its newest checkpoint is read)")
    ap.add_argument("--space", default="search_spaces/cpu.yaml")
    ap.add_argument("--row", default="bn_nas", help="Table 6 row whose settings were searched")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batches", type=int, default=16)
    args = ap.parse_args()

    from nasfe.config import ConfigError, parse_override
    from nasfe.engine.checkpoint import latest_checkpoint, load_checkpoint
    from nasfe.engine.search import SearchPhase
    from nasfe.evaluate.ablation import ROWS, row_space

    try:
        overrides = dict(parse_override(kv) for kv in args.set)
    except ConfigError as exc:
        ap.error(str(exc))
    space = row_space(args.space, {r.slug: r for r in ROWS}[args.row], overrides)
    ckpt = latest_checkpoint(Path(args.search_dir) / "checkpoints", "search")
    if ckpt is None:
        raise SystemExit(f"{args.search_dir}: no search checkpoint")
    with tempfile.TemporaryDirectory() as tmp:
        phase = SearchPhase(space, Path(tmp), device="cpu")
        phase.build()
        phase.model.load_state_dict(load_checkpoint(ckpt, required=("model",))["model"])
        batches = [phase._arch_batch() for _ in range(args.batches)]
    model, ops = phase.model, space.model.operators
    print(f"checkpoint {ckpt}; operators {ops}")

    model.train()
    grads = []
    for b in batches:
        model.zero_grad(set_to_none=True)
        loss, _ = phase.network_loss(b)
        loss.backward()
        grads.append(model.fusion.alphas.grad.detach().clone().flatten(0, 1))  # (cell types x edges, ops)
    g = torch.stack(grads)
    t = g.mean(0) / (g.std(0) / len(grads) ** 0.5 + 1e-30)
    print("alpha gradient t (rows: edges; negative: alpha grows)")
    _print(t, ops)

    from nasfe.engine.selection import choice_strengths
    from nasfe.genotype import derive_from_arch, derive_from_strength

    model.eval()
    m = space.model
    strength, trans = choice_strengths(
        model.alphas, model.betas, ops, m.cells, m.levels, lambda b: phase.network_loss(b)[0], batches
    )
    print("operator strength: loss with the operator masked minus the loss with none (rows: edges)")
    _print(strength.flatten(0, 1), ops)
    print(
        "transition strength (layer, level, transition: value):",
        ", ".join(f"{tuple(k)}: {float(trans[tuple(k)]):.1f}" for k in trans.nonzero().tolist()) or "no choice",
    )
    by_alpha = derive_from_arch(model.arch_parameters(), space)
    by_strength = derive_from_strength(strength, trans, space)
    print(f"genotype by alpha:    {by_alpha.to_dict()['cells']} path {by_alpha.path}")
    print(f"genotype by strength: {by_strength.to_dict()['cells']} path {by_strength.path}")
    return 0


def _print(table: torch.Tensor, ops) -> None:
    print("edge " + " ".join(f"{o[:12]:>12s}" for o in ops))
    for e, row in enumerate(table.tolist()):
        print(f"{e:4d} " + " ".join(f"{v:12.1f}" for v in row))


if __name__ == "__main__":
    raise SystemExit(main())
