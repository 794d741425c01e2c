"""``nasfe retrain`` (and ``jobs/retrain.py``): retrain a derived genotype on Ray Train, then evaluate."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from nasfe.registry import fusion_is_searched
from nasfe.evaluate.split_eval import evaluate_and_report
from nasfe.distributed.search_job import add_common_arguments
from nasfe.errors import CommandError
from nasfe.genotype import Genotype
import tempfile
from nasfe.distributed.resume import run_lock
from nasfe.distributed.search_job import check_flags, check_workers, job_storage, load_job_space
from nasfe.distributed.ray_train import fit_retrain
from nasfe.distributed.search_job import (
    declared_gpus,
    describe_devices,
    format_genotype,
    open_cluster,
    preflight,
    wandb_pointer,
    wandb_settings,
)
from nasfe.distributed.run_identity import check_job_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nasfe retrain``."""

    add_common_arguments(parser)
    parser.add_argument(
        "--genotype",
        help="genotype.json to retrain (default: the run's own genotype.json; none for a space with fusion: res2)",
    )
    parser.add_argument("--epochs", type=int, help="retrain epochs (retrain.epochs)")


def _find_genotype(args, storage, space):
    if args.genotype:
        return Genotype.from_json(args.genotype, space=space)
    if not fusion_is_searched(space.model.fusion):
        return None  # a fixed network (res2 baseline) needs no genotype
    if storage.is_local and (Path(storage.root) / "genotype.json").is_file():
        return Genotype.from_json(Path(storage.root) / "genotype.json", space=space)
    if not storage.is_local:  # the searched run's genotype on S3
        with tempfile.TemporaryDirectory(prefix="nasfe-genotype-") as tmp:
            if storage.download("genotype.json", tmp):
                return Genotype.from_json(Path(tmp) / "genotype.json", space=space)
    raise CommandError(f"no genotype: give --genotype <genotype.json> (none found in {storage.root})")


def main(args) -> int:
    """Run ``nasfe retrain``: retrain on Ray Train, evaluate on the test split, print the numbers."""

    check_flags(args)
    space = load_job_space(args, {"retrain.epochs": args.epochs})
    check_workers(space, args.workers, ("retrain",))
    if args.name is None and not args.genotype and fusion_is_searched(space.model.fusion):
        raise CommandError("give --genotype <genotype.json> or --name of a searched run")
    storage = job_storage(args, space)
    with run_lock(storage):  # a second job with this --name refuses in one line instead of mixing checkpoints
        return _retrain(args, space, storage)


def _retrain(args, space, storage) -> int:
    check_job_run(storage, space, args.resume)  # a reused name (a searched run's too) with other settings: refused
    genotype = _find_genotype(args, storage, space)
    if genotype is not None:
        print(format_genotype(genotype), flush=True)
    preflight(storage, ("retrain",), args.resume, space, genotype)
    use_gpu = open_cluster(args, args.workers)
    gpus, gpus_from = declared_gpus(args)
    print(
        f"[nasfe] retrain {storage.name!r} in {storage.root} ({args.workers} workers, "
        f"{describe_devices(gpus, gpus_from)})",
        flush=True,
    )
    t0 = time.time()
    res = fit_retrain(
        space,
        genotype,
        storage.name,
        storage,
        num_workers=args.workers,
        use_gpu=use_gpu,
        gpus_per_worker=gpus,
        wandb=wandb_settings(args, storage.name),
        resume=args.resume,
        max_failures=args.max_failures,
    )
    evaluate_and_report(space, genotype, res.local_dir / "model.pt", args.eval_images, use_gpu)
    for line in wandb_pointer(res.local_dir, storage):
        print(f"[nasfe] {line}", flush=True)
    print(f"[nasfe] results in {storage.root} ({time.time() - t0:.0f}s)", flush=True)
    return 0
