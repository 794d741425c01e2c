"""``nasfe wandb-sync``: upload a run's offline W&B history from its storage, every segment in order.

Rank 0 copies its W&B run folder into ``<storage>/<name>/wandb/`` at every checkpoint and at the
end; an interrupted and resumed phase leaves one folder per segment, all with the same run id (kept
in ``<storage>/<name>/wandb_ids.json``). This command fetches them (from S3 too) and runs
``wandb sync`` on them oldest first, so W&B shows one continuous run per phase.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from nasfe.distributed.cluster import RunStorage, StorageError
from nasfe.errors import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nasfe wandb-sync``."""
    parser.add_argument("--name", required=True, help="the run's name")
    parser.add_argument("--storage", help="where runs live: a folder (default ./runs) or s3://bucket/prefix")
    parser.add_argument(
        "--dest",
        help="local folder for the fetched W&B folders "
        "(default: the run folder itself when local, else ~/nasfe-work/<name>-wandb)",
    )
    parser.add_argument("--dry-run", action="store_true", help="fetch and list the folders, upload nothing")


def segments(storage, dest: Path) -> list[Path]:
    """The run's W&B run folders, fetched into ``dest`` when remote, oldest first."""
    names = [n for n in storage.listdir("wandb") if n.startswith(("offline-run-", "run-"))]
    out = []
    for name in sorted(names, key=lambda n: (re.findall(r"\d{8}_\d{6}", n) or [n])[0]):  # by start time
        storage.download(f"wandb/{name}", dest)
        out.append(dest / "wandb" / name)
    return out


def main(args) -> int:
    """Fetch and sync (or list) the run's W&B folders."""

    try:
        storage = RunStorage.create(args.storage, args.name)
    except StorageError as exc:
        raise CommandError(str(exc)) from None
    if args.dest:
        dest = Path(args.dest).expanduser()
    elif storage.is_local:
        dest = Path(storage.root)
    else:
        dest = Path.home() / "nasfe-work" / f"{storage.name}-wandb"
    found = segments(storage, dest)
    if not found:
        raise CommandError(f"no W&B run folders in {storage.root}/wandb")
    print(f"[nasfe] {len(found)} W&B run folder(s) of {storage.name!r}, oldest first:", flush=True)
    for folder in found:
        print(f"  {folder}", flush=True)
    if args.dry_run:
        return 0
    cmd = [sys.executable, "-m", "wandb", "sync", *map(str, found)]
    return subprocess.call(cmd)
