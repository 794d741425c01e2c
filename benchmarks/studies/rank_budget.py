"""Does the CPU rank study's short budget rank like a longer one? Retrain a subset of its candidates.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/studies/rank_budget.py runs/rank_budget \\
        --ids hand_bn random_05 random_01 --set retrain.epochs=7 --set retrain.steps_per_epoch=600 \\
        --set retrain.pretrain_steps=400
    # later, every finished one (trains nothing): the same OUT and --set, with --report

The candidates are those of docs/RANK.md's CPU study (``benchmarks/studies/rank_cpu.sh``): the BN-NAS
row of ``search_spaces/cpu.yaml`` (no CN, no identity input, L2 only), random #k = the k-th draw of
``sample_genotypes(space, 12, seed 0)`` (``random_05``; its genotype id must match the study's
``results/rank.json`` or nothing trains) and ``hand_bn`` (``model.fusion: res2``, as ``nasfe rank
--hand bn``). Each retrains in the plain engine (``run_retrain``, no Ray) at the space's own
retraining budget changed by ``--set`` (default: none, i.e. 7 x 600 steps after 400 pre-training
steps per encoder), into ``OUT/trials/<id>``, and is scored as ``nasfe rank`` scores a trial
(validation PSNR of its last epoch; Test-BN/Test-BNL PSNR/SSIM on 100 images of test sets built from
20 faces of the 23 test identities, seed 0, in ``OUT/testsets``). A finished candidate is not
retrained (``OUT/trials/<id>/row.json``); an interrupted one continues from its last checkpoint.

``OUT/rank_budget.json``: the rows, each with the study's short-budget scores beside them, and per
metric (val PSNR, mean test PSNR) Kendall's tau-b between the budgets and BN's rank at each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root

SPACE = "search_spaces/cpu.yaml"
#: the BN-NAS row of cpu.yaml, as benchmarks/studies/rank_cpu.sh sets it
ROW = {
    "model.use_classifier": False,
    "model.use_identity": False,
    "loss.lambda_per": 0,
    "loss.lambda_iden": 0,
}


def candidate(cid: str, space, short_rows: dict[str, dict]) -> dict:
    """The study's candidate ``cid`` (``random_<k>`` or ``hand_bn``): its genotype (None for BN) and
    overrides; a random genotype whose id is not the study's is refused."""
    from nasfe.distributed.rank_job import HAND_OVERRIDES
    from nasfe.genotype import sample_genotypes

    if cid.startswith("hand_"):
        return {
            "id": cid,
            "label": cid[5:].upper(),
            "kind": "hand",
            "genotype": None,
            "overrides": dict(HAND_OVERRIDES[cid[5:]]),
        }
    if not cid.startswith("random_"):
        raise SystemExit(f"rank_budget: {cid}: only random_<k> and hand_bn are rebuilt here")
    k = int(cid.split("_")[1])
    g = sample_genotypes(space, k + 1, 0)[k]
    want = short_rows.get(cid, {}).get("genotype_id")
    if g.genotype_id() != want:
        raise SystemExit(f"rank_budget: {cid}: draw {k} is genotype {g.genotype_id()}, the study's is {want}")
    return {
        "id": cid,
        "label": f"random #{k}",
        "kind": "random",
        "genotype": g,
        "overrides": {},
        "genotype_id": g.genotype_id(),
        "path": g.path,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder of the trained networks, test sets and rank_budget.json")
    ap.add_argument("--ids", nargs="*", default=[], help="candidates to train, e.g. hand_bn random_05")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="budget override (repeatable)")
    ap.add_argument("--short", default="results/rank.json", help="the study's report (short-budget scores)")
    ap.add_argument("--max-images", type=int, default=100)
    ap.add_argument("--report", action="store_true", help="train nothing: write rank_budget.json of what finished")
    args = ap.parse_args()

    from nasfe.config import load_space, parse_override
    from nasfe.distributed.rank_job import score_trained
    from nasfe.engine.callbacks import ConsoleProgress
    from nasfe.engine.retrain import run_retrain
    from nasfe.evaluate.ablation import build_ablation_testsets
    from nasfe.evaluate.rank_report import compare_budgets
    from nasfe.imageio import atomic_write_json

    out = Path(args.out)
    budget = dict(parse_override(kv) for kv in args.set)
    short = json.loads(Path(args.short).read_text())
    short_rows = {r["id"]: r for r in short["rows"]}
    base = load_space(SPACE, {**ROW, **budget})
    cands = [candidate(c, base, short_rows) for c in args.ids]  # every id checked before anything trains
    testsets = out / "testsets"
    if not args.report and not testsets.is_dir():
        build_ablation_testsets(SPACE, out, 20)
    for c in [] if args.report else cands:
        run_dir = out / "trials" / c["id"]
        if (run_dir / "row.json").is_file():
            print(f"[rank_budget] {c['id']}: finished before", flush=True)
            continue
        space = load_space(SPACE, {**ROW, **budget, **c["overrides"]})
        t0 = time.time()
        print(
            f"[rank_budget] {c['id']}: {space.retrain.epochs} x {space.retrain.steps_per_epoch} steps after "
            f"{space.retrain.pretrain_steps}, amp {space.retrain.amp}",
            flush=True,
        )
        if not (run_dir / "retrain_summary.json").is_file():
            run_retrain(space, c["genotype"], run_dir, callbacks=[ConsoleProgress(bar=False)], device="cpu")
        wall = time.time() - t0
        # faces None as the study scored (its trials have no identity input); cache in rank_scores.json
        scores = score_trained(run_dir, c["label"], testsets, None, args.max_images)
        row = {k: v for k, v in c.items() if k not in ("genotype", "overrides")}
        row.update(
            scores,
            wall_seconds=round(wall, 1),
            scored_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            loadavg=Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else None,
        )
        row["test_psnr"] = (row["bn_psnr"] + row["bnl_psnr"]) / 2
        atomic_write_json(run_dir / "row.json", row)
        print("RESULT", json.dumps(row), flush=True)

    rows = [json.loads(p.read_text()) for p in sorted((out / "trials").glob("*/row.json"))]
    for r in rows:
        s = short_rows[r["id"]]
        r["short"] = {k: s.get(k) for k in ("val_psnr", "bn_psnr", "bn_ssim", "bnl_psnr", "bnl_ssim", "test_psnr")}
    data = {
        "space": SPACE,
        "overrides": {**ROW, **budget},
        "budget": f"retrain.epochs {base.retrain.epochs} x steps_per_epoch {base.retrain.steps_per_epoch}, "
        f"pretrain_steps {base.retrain.pretrain_steps}, amp {base.retrain.amp}",
        "short_budget": short["budget"],
        "testsets": "20 faces of the test identities, seed 0 (build_ablation_testsets)",
        "max_images": args.max_images,
        "rows": rows,
        "compare": compare_budgets(list(short_rows.values()), rows),
    }
    # the short budget's rank of BN among all the study's rows, for the record
    data["hand_rank_short_all"] = {
        m: 1 + sum(r[m] > short_rows["hand_bn"][m] for r in short_rows.values()) for m in ("val_psnr", "test_psnr")
    }
    atomic_write_json(out / "rank_budget.json", data)
    for m, e in data["compare"].items():
        print(
            f"[rank_budget] {m}: n {e['n']} tau {e['tau']} p {e['p_value']} BN rank short "
            f"{e.get('hand_rank_short')} long {e.get('hand_rank_long')}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
