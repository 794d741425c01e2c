"""``nasfe sweep`` (and ``jobs/sweep.py``): a Ray Tune sweep over a sweep space, resumable.

With no arguments it runs ``search_spaces/sweep_tiny.yaml`` (4 short search trials of the tiny
space) on a local Ray instance, writes ``runs/sweep-tiny/sweep_table.{csv,md}`` and
``runs/sweep-tiny/best/``. Running the same command again resumes an interrupted sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from nasfe.distributed.job_args import add_set, add_trial_arguments, job_wandb, run_storage
from nasfe.distributed.search_job import open_cluster
from nasfe.distributed.sweep import check_same_sweep, run_sweep
from nasfe.distributed.sweep_space import load_sweep, sweep_from_dict
from nasfe.errors import CommandError


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
    add_set(
        parser,
        "fix a space field for every trial, e.g. --set loss.lambda_per=0.5 "
        "(repeatable; joins the overrides, and a swept field stops being swept)",
    )
    add_trial_arguments(parser, "sweep")


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

    run = run_storage(args.storage, args.name or f"sweep-{sweep.name}")
    if args.resume:  # its sweep.yaml (a local folder or S3), read before Ray starts
        with tempfile.TemporaryDirectory(prefix="nasfe-sweep-") as tmp:
            if run.download("sweep.yaml", tmp):
                check_same_sweep(sweep, Path(tmp), where=run.root)


def main(args) -> int:
    """Run ``nasfe sweep``: print the sweep table, the best trial and where everything is."""

    sweep = _apply_cli(load_sweep(args.sweep), args)
    preflight(sweep, args)
    use_gpu = open_cluster(args, sweep.workers_per_trial)
    wandb = job_wandb(args)
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
