"""``nasfe rank`` (and ``jobs/rank.py``): does the search beat random architectures of its own space?

Draws K genotypes uniformly from the space's valid cells and trellis paths (seeded,
:func:`nasfe.genotype.sample_genotypes`), adds the searched genotype of each ``--searched`` run and
the hand-made BN fusion, and retrains every one at the space's retraining budget as Ray Tune
trials, each a Ray Train run (the sweep's machinery: :mod:`nasfe.distributed.sweep_trial`), so a
cluster trains many at once. Running it again with the same ``--name`` resumes: finished trials are
kept, unfinished ones continue from their last checkpoint. Then each trained network is scored on
Test-BN and Test-BNL, each genotype by every searched supernet (alpha rule and strength,
:mod:`nasfe.engine.ranking`), and ``rank.json``, ``rank.md`` and ``rank.png`` are written
(:mod:`nasfe.evaluate.rank_report`), with a W&B table and scatter plot.

Layout of a study named ``<name>`` in ``<storage>`` (a local folder or ``s3://bucket/prefix``)::

    <storage>/<name>/candidates.json  the genotypes it trains (a rerun may add, never change one)
    <storage>/<name>/trials/<id>/     each genotype's retrain run (random_00, searched_00, hand_bn):
                                      model.pt, trial.json, rank_scores.json, ray/retrain/ ...
    <storage>/<name>/tune-<time>/     the Tune experiment of each invocation that trained
    <storage>/<name>/rank.json, rank.md, rank.png

With storage on S3 no shared file system is needed: Tune and every trial write to S3, and the
driver keeps the candidates, copies of the trained models (with their ``rank_scores.json``), the
built test sets and the report in a local folder (``$NASFE_WORK_DIR/<name>-rank``), copying the
candidates and the report to S3.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional


from nasfe.config import load_space
from nasfe.data.remote import is_uri
from nasfe.distributed.cluster import RunStorage
from nasfe.distributed.job_args import add_set, add_trial_arguments, job_wandb, run_storage
from nasfe.distributed.search_job import open_cluster
from nasfe.distributed.sweep import _trainable, default_max_concurrent, delete_study, staging_dir, sweep_nodes
from nasfe.distributed.sweep_space import SweepSpace
from nasfe.distributed.sweep_trial import reaper_callback, trial_context, trial_dirname
from nasfe.engine.ranking import RULES, load_supernet, supernet_scores
from nasfe.errors import CommandError, GenotypeError
from nasfe.evaluate.ablation import build_ablation_testsets, score_test_sets
from nasfe.evaluate.model_io import load_trained
from nasfe.evaluate.rank_report import kendall_tau, write_rank_report
from nasfe.genotype import Genotype, sample_genotypes
from nasfe.imageio import atomic_write_json
from nasfe.registry import fusion_is_searched
from nasfe.tracking.wandb_rank import log_rank

log = logging.getLogger("nasfe.rank")

#: Hand-made fusions: the BN row's (Table 6), ``model.res2_blocks`` Res2Blocks in place of the searched cells.
HAND_OVERRIDES = {"bn": {"model.fusion": "res2"}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nasfe rank``."""
    parser.add_argument("--space", default="tiny", help="search space: built-in name or a .yaml file (default tiny)")
    add_set(parser, "override a space field for every genotype, e.g. --set retrain.epochs=2 (repeatable)")
    parser.add_argument("--random", type=int, default=12, help="random genotypes to draw (default 12)")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the random draw (default 0)")
    parser.add_argument(
        "--searched",
        nargs="*",
        default=[],
        metavar="SEARCH_DIR",
        help="finished search runs of this space: their genotypes are trained, their supernets score",
    )
    parser.add_argument(
        "--hand",
        nargs="*",
        default=["bn"],
        choices=sorted(HAND_OVERRIDES),
        help="hand-made fusions to train beside them (default bn; none: --hand)",
    )
    parser.add_argument("--name", help="study name (default rank-<space name>); reuse it to resume")
    parser.add_argument(
        "--storage",
        help="where the study lives: a folder (default ./runs) or s3://bucket/prefix "
        "(a cluster: no shared file system needed)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at a time (default: how many trials fit the nodes the cluster config lets the "
        "cluster grow to, or the nodes up without one)",
    )
    parser.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker asks for (default 1)")
    parser.add_argument(
        "--testsets",
        help="built test sets with Test-BN and Test-BNL (default: build small ones from the space's test identities)",
    )
    parser.add_argument("--faces", help="face folder of --testsets (identity references)")
    parser.add_argument("--test-images", type=int, default=8, help="clean faces of built test sets (default 8)")
    parser.add_argument("--max-images", type=int, help="seeded subsample of each test set")
    parser.add_argument("--out", help="where rank.json/md/png go (default: the study folder)")
    parser.add_argument(
        "--only-finished",
        action="store_true",
        help="train nothing: report the genotypes whose retraining finished (the rest are listed)",
    )
    add_trial_arguments(parser, "study")


# ----- the candidates (plain data, no Ray) ----------------------------------------------------------
def build_candidates(space, k: int, seed: int, searched: list[str], hand: list[str]) -> tuple[list[dict], list]:
    """The genotypes to train (``id``, ``label``, ``kind``, ``genotype`` dict or None, ``overrides``)
    and the supernets of the ``searched`` runs. A searched genotype of another space is refused."""

    if not fusion_is_searched(space.model.fusion):
        raise CommandError(
            f"space {space.name!r}: model.fusion is {space.model.fusion!r}; a rank study draws "
            f"searched cells (model.fusion: nas)"
        )
    if k < 0:
        raise CommandError(f"--random {k}: need at least 0")
    cands = [
        {"id": f"random_{i:02d}", "label": f"random #{i}", "kind": "random", "genotype": g.to_dict(), "overrides": {}}
        for i, g in enumerate(sample_genotypes(space, k, seed))
    ]
    nets = []
    for i, d in enumerate(searched):
        try:
            net = load_supernet(d)
            if net.genotype is None:
                raise GenotypeError(f"{d}: no genotype.json")
            net.genotype.check_space(space, where=f"{d}/genotype.json")
        except GenotypeError as exc:
            raise CommandError(f"--searched {exc}") from None
        nets.append(net)
        cands.append(
            {
                "id": f"searched_{i:02d}",
                "label": f"NASFE (search {Path(d).name})",
                "kind": "searched",
                "genotype": net.genotype.to_dict(),
                "overrides": {},
                "search_dir": str(d),
            }
        )
    for name in hand:
        cands.append(
            {
                "id": f"hand_{name}",
                "label": name.upper(),
                "kind": "hand",
                "genotype": None,
                "overrides": dict(HAND_OVERRIDES[name]),
            }
        )
    return cands, nets


def absolute_paths(space) -> dict[str, str]:
    """Overrides making the space's relative local paths (``data.root``, ``identity.weights``)
    absolute, resolved from this working directory as the space file means them."""

    out = {}
    for key, value in (("data.root", space.data.root), ("identity.weights", space.identity.weights)):
        if value and not is_uri(value) and not Path(value).is_absolute():
            out[key] = str(Path(value).resolve())
    return out


def score_rows(cands: list[dict], nets: list, space) -> None:
    """Adds ``score_<rule>`` (mean over the supernets) and ``score_<rule>_by_search`` to each genotype."""

    for c in cands:
        if c["genotype"] is None or not nets:
            continue
        g = Genotype.from_dict(c["genotype"])
        per = [supernet_scores(g, n, space) for n in nets]
        for rule in RULES:
            vals = [p[rule] for p in per]
            c[f"score_{rule}_by_search"] = vals
            c[f"score_{rule}"] = sum(vals) / len(vals) if all(v is not None for v in vals) else None


# ----- the trials ----------------------------------------------------------------------------------
def _tuner(ctx, ids: list[str], storage: str, root: Path, max_concurrent: int):
    """A Tune grid over the candidate ids still to train (one trial each) in a Tune folder of its own
    in ``storage`` (the study's folder or URI); each trial's Ray Train run is named for its
    candidate, so an interrupted one continues from its last checkpoint when a later study trains it
    again. ``root``: the study's local folder."""
    from ray import tune

    return tune.Tuner(
        _trainable(ctx),
        param_space={"candidate": tune.grid_search(ids)},
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=time.strftime("tune-%Y%m%d-%H%M%S"),
            storage_path=storage,
            callbacks=[reaper_callback(root / "trials")],
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=1,
        ),
    )


#: What scoring a trained candidate reads of its run (a study on S3 copies them to its local folder).
TRAINED_FILES = ("retrain_summary.json", "model.pt")


def _trained(run: RunStorage, root: Path) -> dict[str, Path]:
    """Candidate id -> a local folder of its run, for the candidates whose retraining finished: the
    run folder itself, or (storage on S3) its copy in ``root/trials`` (model.pt copied again only
    when the run's summary changed)."""
    if not run.is_local:
        for name in run.listdir("trials"):
            if set(TRAINED_FILES) <= set(run.listdir(f"trials/{name}")):
                trial, local = RunStorage(f"{run.root}/trials", name), root / "trials" / name
                summary = local / TRAINED_FILES[0]
                before = summary.read_bytes() if summary.is_file() else None
                trial.download(TRAINED_FILES[0], local)
                if summary.read_bytes() != before or not (local / "model.pt").is_file():
                    trial.download("model.pt", local)
    return {d.name: d for d in sorted((root / "trials").glob("*")) if all((d / f).is_file() for f in TRAINED_FILES)}


def score_trained(
    run_dir: Path, label: str, testsets: Path, faces: Optional[Path], max_images: Optional[int], device: str = "cpu"
) -> dict[str, Any]:
    """Validation PSNR (the retraining's last epoch) and Test-BN/Test-BNL PSNR/SSIM of one trained
    network; the test scores are cached in ``rank_scores.json`` beside its ``model.pt``."""

    summary = json.loads((run_dir / "retrain_summary.json").read_text())
    model_pt = run_dir / "model.pt"
    model, space, _ = load_trained(model_pt, device)
    scores = score_test_sets(
        label, model, space, model_pt, "rank_scores.json", testsets, faces, max_images, device, False
    )
    final = summary.get("final") or {}
    return {
        "val_psnr": final.get("val_psnr"),
        "steps": summary.get("steps"),
        "train_seconds": summary.get("seconds"),
        "params_M": model.parameter_counts()["restoration"] / 1e6,
        **{k: scores[k] for k in ("bn_psnr", "bn_ssim", "bnl_psnr", "bnl_ssim", "images")},
    }


def check_same_candidates(path: Path, cands: list[dict], where: Optional[str] = None) -> list[dict]:
    """A candidate id stands for one genotype and its overrides: a study run again with a changed one
    is refused in one line (naming ``where``, else the file's folder). Candidates may be added (e.g.
    another ``--searched`` run); returns the union, earlier candidates first."""

    if not path.is_file():
        return cands
    before = {c["id"]: c for c in json.loads(path.read_text())["candidates"]}
    changed = [
        c["id"]
        for c in cands
        if c["id"] in before
        and (before[c["id"]]["genotype"], before[c["id"]]["overrides"]) != (c["genotype"], c["overrides"])
    ]
    if changed:
        raise CommandError(
            f"{where or path.parent}: {', '.join(changed)} trained other genotypes in this study (another "
            f"--space, --set, --sample-seed or --searched); pick another --name or use --no-resume"
        )
    now = {c["id"] for c in cands}
    return cands + [c for c in before.values() if c["id"] not in now]


def _candidate_rows(cands, done, trials: str, testsets, faces, max_images) -> list[dict]:
    """One report row per candidate: its genotype's id and path, and its scores when it trained
    (``run_dir``: its run in ``trials``, the study's trials folder or URI)."""
    rows = []
    for c in cands:
        row = {k: v for k, v in c.items() if k not in ("genotype", "overrides")}
        row["genotype_id"] = None
        if c["genotype"] is not None:
            g = Genotype.from_dict(c["genotype"])
            row.update(genotype_id=g.genotype_id(), path=g.path)
        if c["id"] in done:
            row.update(
                run_dir=f"{trials}/{c['id']}", **score_trained(done[c["id"]], c["label"], testsets, faces, max_images)
            )
        rows.append(row)
    return rows


def _tau_by_search(rows, searches: int) -> dict[str, list]:
    """Kendall's tau of each rule's scores by each search's supernet against validation PSNR."""
    per: dict[str, list] = {}
    for rule in RULES:
        per[rule] = []
        for i in range(searches):
            pairs = [
                (r[f"score_{rule}_by_search"][i], r["val_psnr"])
                for r in rows
                if r.get(f"score_{rule}_by_search")
                and r.get("val_psnr") is not None
                and r[f"score_{rule}_by_search"][i] is not None
            ]
            per[rule].append(kendall_tau([p[0] for p in pairs], [p[1] for p in pairs])["tau"])
    return per


def main(args) -> int:
    """Run ``nasfe rank``: train the candidates, score them, write the report."""
    overrides = dict(args.overrides)
    space = load_space(args.space, overrides)
    overrides.update(absolute_paths(space))  # Ray workers run in folders of their own
    space_arg = str(Path(args.space).resolve()) if Path(args.space).is_file() else args.space
    cands, nets = build_candidates(space, args.random, args.sample_seed, list(args.searched), list(args.hand))
    for c in cands:  # every candidate's space loads before Ray starts
        load_space(args.space, {**overrides, **c["overrides"]})
    run = run_storage(args.storage, args.name or f"rank-{space.name}")
    # on S3 (no shared file system) Tune and the trials write to storage; the candidates, copies of
    # the trained models, the test sets and the report are made in a local folder of the driver
    root = Path(run.root) if run.is_local else staging_dir(run, "rank")
    if not args.resume:
        delete_study(run, root)
    elif not run.is_local:
        run.download("candidates.json", root)
    cands = check_same_candidates(root / "candidates.json", cands, where=run.root)
    for name in ("testsets", "faces"):
        if getattr(args, name) and not Path(getattr(args, name)).is_dir():
            raise CommandError(f"--{name} {getattr(args, name)}: not a folder")

    sweep = SweepSpace(
        name=run.name,
        base=space_arg,
        phase="retrain",
        metric="val_psnr",
        mode="max",
        num_samples=len(cands),
        max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        overrides=overrides,
    )
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        root / "candidates.json",
        {"space": args.space, "overrides": overrides, "sample_seed": args.sample_seed, "candidates": cands},
    )
    run.upload(root, ["candidates.json"])
    wandb = job_wandb(args)
    done = _trained(run, root)
    # the searched and hand-made genotypes first: a study stopped early still compares them
    order = {"searched": 0, "hand": 1, "random": 2}
    todo = [c["id"] for c in sorted(cands, key=lambda c: order[c["kind"]]) if c["id"] not in done]
    t0 = time.time()
    print(
        f"[nasfe] rank study {run.name!r}: {len(cands)} genotypes ({len(done)} trained before); folder {run.root}",
        flush=True,
    )
    if todo and not args.only_finished:
        use_gpu = open_cluster(args, args.workers_per_trial)
        max_concurrent = default_max_concurrent(sweep, sweep_nodes(), use_gpu)
        ctx = trial_context(sweep, run, use_gpu, wandb, not args.quiet, args.max_failures)
        ctx["candidates"] = {c["id"]: {"genotype": c["genotype"], "overrides": c["overrides"]} for c in cands}
        print(f"[nasfe] {len(todo)} to train, {max_concurrent} at a time", flush=True)
        _tuner(ctx, todo, run.root, root, max_concurrent).fit()
    done = _trained(run, root)

    testsets, faces = (Path(args.testsets) if args.testsets else None), (Path(args.faces) if args.faces else None)
    if testsets is None:
        testsets, faces = build_ablation_testsets(args.space, root, args.test_images, overrides=overrides)
    score_rows(cands, nets, space)
    rows = _candidate_rows(cands, done, f"{run.root}/trials", testsets, faces, args.max_images)
    missing = [c["id"] for c in cands if c["id"] not in done]
    meta = {
        "space": args.space,
        "overrides": {k: v for k, v in overrides.items()},
        "sample_seed": args.sample_seed,
        "searched": list(args.searched),
        "testsets": str(testsets),
        "max_images": args.max_images,
        "budget": f"retrain.epochs {space.retrain.epochs} x steps_per_epoch {space.retrain.steps_per_epoch}, "
        f"pretrain_steps {space.retrain.pretrain_steps}",
        "untrained": missing,
        "seconds": round(time.time() - t0, 1),
    }
    if nets:
        meta["kendall_tau_by_search"] = _tau_by_search(rows, len(nets))
    out = Path(args.out) if args.out else root
    data = write_rank_report(rows, out, meta)
    if not args.out:
        run.upload(out, ["rank.json", "rank.md", "rank.png"])
    if wandb is not None:
        where = log_rank(wandb, run.name, data, out / "rank.png", out)
        if where:
            print(f"[nasfe] W&B rank table ({where})", flush=True)
    print((out / "rank.md").read_text(), flush=True)
    print(f"[nasfe] rank.json, rank.md, rank.png in {run.root if not args.out else out}", flush=True)
    if missing and not args.only_finished:
        print(
            f"nasfe rank: {len(missing)} genotype(s) not trained ({', '.join(missing)}); run the same command "
            f"again to resume",
            file=sys.stderr,
            flush=True,
        )
        return 130
    return 0
