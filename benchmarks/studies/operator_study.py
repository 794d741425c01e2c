"""Which operators and paths retrain well: fixed genotypes of the BN-NAS row, retrained and scored.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/studies/operator_study.py res --ops res_op \\
        --testsets runs/t6/testsets --out runs/fx

Every edge of the (shared) cell gets one operator, blocks read inputs [0, 1], the path is
``--path`` (default 0,0, full resolution). The network is trained as Table 6's BN-NAS row is in
the space (``--space``, default search_spaces/cpu.yaml, with its retrain section; change it with
e.g. ``--set retrain.steps_per_epoch=300``), then PSNR/SSIM on Test-BN and Test-BNL of ``--testsets`` (the
same seeded 100 images as ``nasfe ablation --max-images 100``). Results land in
``OUT/<name>/study.json`` and one ``RESULT`` line; a finished name is scored again, not retrained.

This isolates what a search cannot: at the CPU budget alpha hardly moves, so a derived genotype
is close to a random draw, and a bad operator or path in it costs the whole row
(docs/RESULTS.md, "Which operators and paths retrain well").

``--fft-residual`` is an experiment, not a model option: ``fft_op`` becomes x + out(Wiener(...))
with ``out`` zero-initialised, to see whether starting as the identity rescues it.
``--identity-zero-init`` (experiment) starts the identity projection at zero. Rows with the
identity input (``--row iden``/``final``) are scored with references from ``--faces``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root

import torch  # noqa: E402


def _patch_fft_residual() -> None:
    from nasfe.model import ops

    plain_init = ops.FFTOp.__init__

    def init(self, c, eps=ops.FFT_EPS):
        plain_init(self, c, eps)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, x):
        a, b = (x, x) if self._single else (x[:, : self.c1], x[:, self.c1 :])
        return x + self.out(ops.wiener_deconvolve(self.conv1(a), self.conv2(b), self.eps))

    ops.FFTOp.__init__, ops.FFTOp.forward = init, forward


def _patch_identity_zero_init() -> None:
    from nasfe.model import nasfe as net

    plain_init = net.NASFE.__init__

    def init(self, *args, **kwargs):
        plain_init(self, *args, **kwargs)
        if self.identity is not None:
            torch.nn.init.zeros_(self.identity_proj.weight)
            torch.nn.init.zeros_(self.identity_proj.bias)

    net.NASFE.__init__ = init


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="result folder under --out")
    ap.add_argument(
        "--ops",
        nargs="+",
        required=True,
        metavar="OP",
        help="one operator for every edge, or four: block 0 (input 0, input 1), block 1 (input 0, input 1)",
    )
    ap.add_argument("--path", default="0,0", help="levels of the cells, e.g. 1,0 (default 0,0)")
    ap.add_argument("--space", default="search_spaces/cpu.yaml")
    ap.add_argument("--row", default="bn_nas", help="Table 6 row whose settings are used (default bn_nas)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="space override (repeatable)")
    ap.add_argument("--testsets", required=True, help="a folder with Test-BN and Test-BNL (nasfe ablation builds one)")
    ap.add_argument("--max-images", type=int, default=100)
    ap.add_argument("--out", default="runs/operator_study")
    ap.add_argument("--faces", help="reference photos of the test identities (rows with the identity input)")
    ap.add_argument("--fft-residual", action="store_true", help="experiment: fft_op starts as the identity")
    ap.add_argument(
        "--identity-zero-init", action="store_true", help="experiment: the identity projection starts at zero"
    )
    args = ap.parse_args()

    from nasfe.config import ConfigError, parse_override
    from nasfe.engine.callbacks import ConsoleProgress
    from nasfe.engine.retrain import run_retrain
    from nasfe.evaluate.ablation import EVAL_SETS, ROWS, _scores, row_space
    from nasfe.evaluate.evaluate_cmd import evaluate_sets, network_method
    from nasfe.evaluate.model_io import load_trained
    from nasfe.genotype import Genotype

    if args.fft_residual:
        _patch_fft_residual()
    if args.identity_zero_init:
        _patch_identity_zero_init()
    ops = args.ops * 4 if len(args.ops) == 1 else args.ops
    if len(ops) != 4:
        ap.error("--ops takes one operator or four")
    try:
        overrides = dict(parse_override(kv) for kv in args.set)
    except ConfigError as exc:
        ap.error(str(exc))
    row = {r.slug: r for r in ROWS}[args.row]
    space = row_space(args.space, row, overrides)
    cells = [[{"inputs": [0, 1], "ops": ops[:2]}, {"inputs": [0, 1], "ops": ops[2:]}]]
    path = [int(p) for p in args.path.split(",")]
    genotype = Genotype.from_dict(
        {
            "schema_version": 1,
            "space_hash": space.space_hash(),
            "blocks": 2,
            "operators": list(space.model.operators),
            "cells": cells,
            "path": path,
        },
        space=space,
        where="--ops/--path",
    )
    out = Path(args.out) / args.name
    t0 = time.time()
    if not (out / "retrain_summary.json").is_file():
        run_retrain(space, genotype, out, callbacks=[ConsoleProgress(bar=False)], device="cpu")
    seconds = round(time.time() - t0)
    model, _, _ = load_trained(out / "model.pt", "cpu")
    method = network_method(args.name, model, torch.device("cpu"), with_refs=bool(args.faces))
    res = evaluate_sets(
        [method],
        args.testsets,
        EVAL_SETS,
        faces=args.faces,
        k_refs=space.identity.refs,
        recognizer=None,
        max_images=args.max_images,
        progress=False,
    )
    result = {
        **_scores(res),
        "train_seconds": seconds,
        "cells": cells,
        "path": path,
        "fusion_skip": space.model.fusion_skip,
        "fft_residual": args.fft_residual,
        "identity_zero_init": args.identity_zero_init,
        "row": args.row,
        "space": args.space,
        "overrides": overrides,
    }
    (out / "study.json").write_text(json.dumps(result, indent=1))
    print("RESULT", args.name, json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
