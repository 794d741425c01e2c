"""Flags and start-up steps shared by the Ray jobs (``nasfe search``, ``retrain``, ``sweep``, ``rank``)."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from nasfe.config import ConfigError, parse_override
from nasfe.distributed.cluster import RunStorage, StorageError
from nasfe.errors import CommandError
from nasfe.tracking.wandb_logger import WandbSettings


def override(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE`` as argparse's ``type``: a bad one is argparse's one-line usage error."""
    try:
        return parse_override(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_set(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, a list of (key, value)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", type=override, default=[], metavar="KEY=VALUE", help=help
    )


def add_no_resume(parser: argparse.ArgumentParser, help: str) -> None:
    """``--no-resume`` into ``args.resume`` (default True)."""
    parser.add_argument("--no-resume", dest="resume", action="store_false", default=True, help=help)


def add_cluster_arguments(parser: argparse.ArgumentParser, max_failures: int, max_failures_help: str) -> None:
    """``--address``, ``--max-failures`` and the W&B flags of every Ray job."""
    parser.add_argument(
        "--address", help="Ray address to join (default: RAY_ADDRESS or a cluster on this node, else start a local one)"
    )
    parser.add_argument("--max-failures", type=int, default=max_failures, help=max_failures_help)
    parser.add_argument("--wandb-project", default="nasfe", help="W&B project (default nasfe)")
    parser.add_argument(
        "--wandb-mode",
        default="auto",
        choices=["auto", "online", "offline", "disabled"],
        help="auto: online with an API key and network, else offline (default)",
    )


def add_trial_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The flags of a job that runs Tune trials (``sweep``, ``rank``); ``what`` names one run of it."""
    add_no_resume(
        parser,
        f"start over: the earlier {what} of this name is deleted (also the way to re-run a name with other settings)",
    )
    parser.add_argument("--gpus", default="auto", help="'auto' (default: GPUs when the cluster has them), 'yes'/'no'")
    add_cluster_arguments(parser, 1, "worker-group restarts per trial from its last checkpoint (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines from the trials")


def run_storage(storage: Optional[str], name: str) -> RunStorage:
    """The :class:`RunStorage` of ``--storage`` and a run name; a bad one is a one-line CommandError."""
    try:
        return RunStorage.create(storage, name)
    except StorageError as exc:
        raise CommandError(str(exc)) from None


def job_wandb(args) -> Optional[WandbSettings]:
    """W&B settings of ``--wandb-project`` and ``--wandb-mode`` (None: disabled)."""
    return None if args.wandb_mode == "disabled" else WandbSettings(project=args.wandb_project, mode=args.wandb_mode)
