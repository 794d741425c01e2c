"""``nasfe sweep`` (and ``jobs/sweep.py``): a Ray Tune sweep over a sweep space, resumable.

With no arguments it runs ``search_spaces/sweep_tiny.yaml`` (4 short search trials of the tiny
space) on a local Ray instance, writes ``runs/sweep-tiny/sweep_table.{csv,md}`` and
``runs/sweep-tiny/best/``. Running the same command again resumes an interrupted sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from nasfe.distributed.search_job import _override as parse
from nasfe.errors import CommandError
from nasfe.distributed.sweep_space import sweep_from_dict
from pathlib import Path
from nasfe.distributed.cluster import RunStorage, StorageError
from nasfe.distributed.sweep import check_same_sweep
import tempfile
from nasfe.distributed.search_job import open_cluster
from nasfe.distributed.sweep import run_sweep
from nasfe.distributed.sweep_space import load_sweep
from nasfe.tracking.wandb_logger import WandbSettings


def _override(text: str):
    return parse(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nasfe sweep``."""
    parser.add_argument(
        "--sweep",
        default="tiny",
        help="sweep space: a built-in name (tiny -> search_spaces/sweep_tiny.yaml) or a .yaml file",
    )
    parser.add_argument("--name", help="sweep name (default: sweep-<sweep space name>); reuse it to resume")
    parser.add_argument(
        "--storage",
        help="where the sweep lives: a folder (default ./runs) or s3://bucket/prefix "
        "(a cluster: no shared file system needed)",
    )
    parser.add_argument("--num-samples", type=int, help="trials (overrides num_samples of the sweep space)")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        help="trials at a time (default: the sweep space's, else how many trials fit the nodes the "
        "cluster config lets the cluster grow to, or the nodes up without one)",
    )
    parser.add_argument(
        "--optuna-storage",
        help="Optuna storage URL, e.g. sqlite:///runs/study.db "
        "(overrides storage of the sweep space; optuna-dashboard reads it)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="fix a space field for every trial, e.g. --set loss.lambda_per=0.5 "
        "(repeatable; joins the overrides, and a swept field stops being swept)",
    )
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        default=True,
        help="start over: the earlier sweep of this name is deleted (also the way to re-run a "
        "name with other settings)",
    )
    parser.add_argument("--gpus", default="auto", help="'auto' (default: GPUs when the cluster has them), 'yes'/'no'")
    parser.add_argument(
        "--address", help="Ray address to join (default: RAY_ADDRESS or a cluster on this node, else start a local one)"
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=1,
        help="worker-group restarts per trial from its last checkpoint (default 1)",
    )
    parser.add_argument("--wandb-project", default="nasfe", help="W&B project (default nasfe)")
    parser.add_argument(
        "--wandb-mode",
        default="auto",
        choices=["auto", "online", "offline", "disabled"],
        help="auto: online with an API key and network, else offline (default)",
    )
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines from the trials")


def _apply_cli(sweep, args):
    """Command-line overrides of the sweep space, validated like the YAML."""

    changes = {}
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise CommandError(f"--num-samples {args.num_samples}: need at least 1")
        changes["num_samples"] = args.num_samples
    if args.max_concurrent is not None:
        if args.max_concurrent < 1:
            raise CommandError(f"--max-concurrent {args.max_concurrent}: need at least 1")
        changes["max_concurrent"] = args.max_concurrent
    if getattr(args, "overrides", None):
        data = {k: v for k, v in sweep.to_dict().items() if k != "source"}
        data["overrides"] = {**data["overrides"], **dict(args.overrides)}
        # a value fixed on the command line is no longer swept
        data["params"] = {k: v for k, v in data["params"].items() if k not in data["overrides"]}
        sweep = sweep_from_dict(data, f"{sweep.source} with --set", default_name=sweep.name)
    if args.optuna_storage is not None:
        if "://" not in args.optuna_storage:
            raise CommandError(f"--optuna-storage {args.optuna_storage!r}: expected a URL like sqlite:///study.db")
        changes["storage"] = args.optuna_storage
    return dataclasses.replace(sweep, **changes) if changes else sweep


def preflight(sweep, args) -> None:
    """Before Ray starts: a re-run of a sweep name with other settings is refused (one line)."""

    try:
        run = RunStorage.create(args.storage, args.name or f"sweep-{sweep.name}")
    except StorageError as exc:
        raise CommandError(str(exc)) from None
    if args.resume and run.is_local:
        check_same_sweep(sweep, Path(run.root))
    elif args.resume:  # storage on S3: its sweep.yaml, read before Ray starts
        with tempfile.TemporaryDirectory(prefix="nasfe-sweep-") as tmp:
            if run.download("sweep.yaml", tmp):
                check_same_sweep(sweep, Path(tmp), where=run.root)


def main(args) -> int:
    """Run ``nasfe sweep``: print the sweep table, the best trial and where everything is."""

    sweep = _apply_cli(load_sweep(args.sweep), args)
    preflight(sweep, args)
    use_gpu = open_cluster(args, sweep.workers_per_trial)
    wandb = None if args.wandb_mode == "disabled" else WandbSettings(project=args.wandb_project, mode=args.wandb_mode)
    result = run_sweep(
        sweep,
        storage=args.storage,
        name=args.name,
        resume=args.resume,
        use_gpu=use_gpu,
        wandb=wandb,
        progress=not args.quiet,
        max_failures=args.max_failures,
    )

    table = Path(result.local_dir or result.sweep_dir) / "sweep_table.md"
    if table.is_file():
        print(table.read_text(), flush=True)
    if result.best is not None:
        b = result.best
        print(
            f"[nasfe] best trial {b.trial}: {sweep.metric} = {b.metrics.get(sweep.metric)} "
            f"(genotype {b.genotype_id}); saved in {result.sweep_dir}/best/",
            flush=True,
        )
    if sweep.storage:
        print(f"[nasfe] Optuna study {sweep.study_name or result.name!r}: optuna-dashboard {sweep.storage}", flush=True)
    if result.wandb:
        print(f"[nasfe] W&B sweep summary ({result.wandb})", flush=True)
    print(f"[nasfe] sweep folder: {result.sweep_dir}", flush=True)
    if result.interrupted:
        print(
            f"nasfe sweep: interrupted; run the same command again to resume {result.sweep_dir}",
            file=sys.stderr,
            flush=True,
        )
        return 130
    return 0
