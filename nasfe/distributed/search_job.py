"""``nasfe search`` (and ``jobs/search.py``): search on Ray Train, derive, retrain, evaluate.

With no arguments it runs the built-in default end to end on a laptop: the ``tiny`` space on
synthetic faces, 2 Ray Train workers, a short retrain, then PSNR/SSIM of the degraded inputs
against the restored outputs on the held-out test identities.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional
from nasfe.distributed.job_args import add_cluster_arguments, add_no_resume, add_set, run_storage
from nasfe.errors import CommandError
import sys
from nasfe.distributed.cluster import ray_address
import torch
import os
import socket
from nasfe.config import load_space
from nasfe.data.remote import check_exists, is_uri
from nasfe.errors import DataFetchError
from nasfe.data.faces import check_layout
from nasfe.distributed.ray_train import check_resumable
from nasfe.distributed.cluster import declared_gpus_per_worker
from nasfe.distributed.cluster import StorageError, connect
from nasfe.distributed.cluster import cluster_gpus
from nasfe.tracking.wandb_logger import WandbSettings
from nasfe.distributed.resume import run_lock
from nasfe.distributed.ray_train import finished_phase, fit_retrain, fit_search
from nasfe.evaluate.split_eval import evaluate_and_report
from nasfe.distributed.run_identity import check_job_run
from nasfe.genotype import Genotype
from nasfe.imageio import atomic_write_json

log = logging.getLogger("nasfe.distributed")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``nasfe search`` and ``nasfe retrain``."""
    parser.add_argument("--space", default="tiny", help="search space: built-in name or a .yaml file (default: tiny)")
    parser.add_argument(
        "--data",
        help="faces: a folder (<root>/<identity>/<image>) or a URI on shared storage "
        "(s3://bucket/prefix, fetched once per node); sets data.source=folder",
    )
    parser.add_argument(
        "--data-source",
        choices=["synthetic", "folder", "celeba", "vggface2"],
        help="data.source (with --data: the kind of folder it is)",
    )
    parser.add_argument("--name", help="run name (default: <space>-<date>-<time>; reuse a name to resume)")
    parser.add_argument("--storage", help="where runs live: a folder (default ./runs) or s3://bucket/prefix")
    parser.add_argument(
        "--workers", type=int, default=2, help="Ray Train workers (default 2); on GPUs one per GPU, so the GPUs used"
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        metavar="G",
        help="GPUs each Train worker asks for, at most 1; the autoscaler starts GPU nodes for "
        "them (default: 1 when the cluster config's worker types declare GPUs, else 0 = CPU)",
    )
    parser.add_argument(
        "--gpus",
        "--use-gpu",
        dest="gpus",
        nargs="?",
        const="yes",
        default="auto",
        help="'auto' (default: as declared, see --gpus-per-worker), 'yes' (at least 1) or 'no'",
    )
    parser.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="continue the run's last checkpoint (default)",
    )
    add_no_resume(parser, "start over: the run's earlier checkpoints are moved to <run>/previous/ (not deleted)")
    add_set(parser, "override a space field, e.g. --set search.lr=1e-3 (repeatable)")
    add_cluster_arguments(parser, 2, "worker-group restarts from the last checkpoint before giving up (default 2)")
    parser.add_argument("--eval-images", type=int, default=256, help="test images to evaluate (default 256)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nasfe search``."""
    add_common_arguments(parser)
    parser.add_argument("--epochs", type=int, help="search epochs (search.epochs)")
    parser.add_argument("--retrain-epochs", type=int, help="retrain epochs (retrain.epochs)")
    parser.add_argument("--no-retrain", action="store_true", help="stop after the search")


#: bounds of the job's counting flags: (flag, attribute, low, high)
FLAG_RANGES = (
    ("--workers", "workers", 1, 1024),
    ("--max-failures", "max_failures", 0, 100),
    ("--eval-images", "eval_images", 1, 100_000),
)
#: seconds the reachability check of --address waits for the cluster's port
ADDRESS_TIMEOUT_S = 5.0


def check_flags(args) -> None:
    """The job's own numbers, GPU request and Ray address, checked before anything starts (one
    line, exit 2): counts in their ranges, ``--gpus``/``--gpus-per-worker`` that this machine or
    the cluster config can satisfy, and an ``--address`` that answers within
    :data:`ADDRESS_TIMEOUT_S` seconds. Space fields (``--epochs`` ...) are checked by the space's
    validation."""

    for flag, attr, lo, hi in FLAG_RANGES:
        value = getattr(args, attr, None)
        if value is not None and not lo <= value <= hi:
            raise CommandError(f"{flag} {value}: must lie in [{lo}, {hi}]")
    gpus, where = declared_gpus(args)
    check_address(getattr(args, "address", None))

    connected = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # checked by open_cluster
    if gpus > 0 and not connected and " node type " not in where:  # no autoscaler to start GPU nodes
        if ray_address(getattr(args, "address", None)) is not None:  # a cluster to join: checked once joined
            return

        if not torch.cuda.is_available():
            raise CommandError(
                f"{where} asks for GPUs, but this machine has none that torch can use and no cluster "
                "config declares GPU node types (NASFE_CLUSTER_CONFIG); use --gpus no, or --address "
                "of a cluster with GPUs"
            )


def check_address(address: Optional[str]) -> Optional[str]:
    """``--address`` (else ``RAY_ADDRESS``) when it names a host and port: it must answer a TCP
    connection within :data:`ADDRESS_TIMEOUT_S` (Ray itself retries for minutes). Returns it (None
    when neither is set; Ray is not imported here)."""

    target = address or os.environ.get("RAY_ADDRESS")
    if not target or target in ("auto", "local"):
        return target
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise CommandError(f"--address {target!r}: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise CommandError(
            f"--address {target}: no Ray cluster answers there within {ADDRESS_TIMEOUT_S:g} s "
            f"({exc.strerror or exc}); is it up (`ray status`)?"
        ) from None
    return target


def load_job_space(args, extra: Optional[dict[str, Any]] = None):
    """The space of the job: file or name, ``--data``/``--data-source``, ``--set`` and ``extra``."""

    overrides = dict(args.overrides or [])
    if args.data and is_uri(args.data):  # shared storage: each node fetches it once (nasfe.data.remote)
        try:
            check_exists(args.data)
        except DataFetchError as exc:
            raise CommandError(f"--data {exc}") from None
        overrides["data.root"] = args.data.rstrip("/")
        overrides["data.source"] = args.data_source or "folder"
    elif args.data:
        root = Path(args.data).expanduser()
        if not root.is_dir():
            raise CommandError(f"--data {args.data}: no such folder")
        overrides["data.root"] = str(root.resolve())
        overrides["data.source"] = args.data_source or "folder"
    elif args.data_source:
        if args.data_source != "synthetic":
            raise CommandError(f"--data-source {args.data_source} needs --data <folder>")
        overrides["data.source"] = "synthetic"
    overrides.update({k: v for k, v in (extra or {}).items() if v is not None})
    space = load_space(args.space, overrides)
    if space.data.source != "synthetic" and not is_uri(space.data.root):
        root = Path(space.data.root or "").expanduser()
        if not space.data.root or not root.exists():
            raise CommandError(f"data.root {space.data.root!r}: no such folder (data.source = {space.data.source!r})")
        # a root relative to the working directory (as a space file may give it) made absolute:
        # Ray Train's workers run in another working directory
        space.data.root = str(root.resolve())

        check_layout(space.data.source, root)  # the layout the workers will read, before Ray starts
    return space


def check_workers(space, workers: int, phases: tuple[str, ...]) -> None:
    """Batch sizes must split evenly over the workers."""

    if workers < 1:
        raise CommandError(f"--workers {workers}: need at least 1")
    for phase in phases:
        batch = space.phase(phase).batch_size
        if batch % workers:
            raise CommandError(
                f"{phase}.batch_size {batch} is not divisible by --workers {workers} (use --set {phase}.batch_size=...)"
            )


def preflight(storage, phases: tuple[str, ...], resume: bool, space=None, genotype=None) -> None:
    """Before starting Ray: a checkpoint the run would resume from must load and fit ``space`` (local storage)."""

    if resume and storage.is_local:
        for phase in phases:
            check_resumable(storage, phase, space, genotype if phase == "retrain" else None)


def declared_gpus(args) -> tuple[float, str]:
    """GPUs per Train worker the job asks for, and why: ``--gpus-per-worker``, ``--gpus no|yes``,
    else what the cluster config declares. Never what is up now: with ``min_workers: 0`` no GPU
    node exists until a job asks for one."""

    explicit = getattr(args, "gpus_per_worker", None)
    if explicit is not None:
        if explicit < 0 or explicit > 1:
            raise CommandError(
                f"--gpus-per-worker {explicit:g}: must be between 0 and 1 (a Train worker drives "
                f"one GPU; --workers N uses N GPUs)"
            )
        return float(explicit), "--gpus-per-worker"
    want = str(getattr(args, "gpus", "auto")).lower()
    if want in ("no", "false", "0", "off"):
        return 0.0, "--gpus no"
    if want not in ("auto", "yes", "true", "1", "on"):
        raise CommandError(f"--gpus {args.gpus!r}: expected auto, yes or no")
    try:
        gpus, where = declared_gpus_per_worker()
    except (OSError, ValueError) as exc:
        raise CommandError(f"cluster config: {exc}") from None
    if want != "auto" and gpus <= 0:
        return 1.0, f"--gpus {want}"
    return gpus, where


def open_cluster(args, workers: int) -> bool:
    """Connect to Ray; returns whether the workers ask for GPUs (as declared, see :func:`declared_gpus`)."""

    gpus, where = declared_gpus(args)  # a bad flag fails before Ray starts
    try:
        print(f"[nasfe] {connect(args.address, log_to_driver=True)}", flush=True)
    except StorageError as exc:
        raise CommandError(str(exc)) from None
    if gpus > 0 and " node type " not in where:
        if cluster_gpus() < 1:  # nothing declared that an autoscaler could start: Ray would wait forever
            raise CommandError(
                f"{where} asks for GPUs, but the Ray cluster has none and its config declares "
                "no GPU node type; use --gpus no"
            )
    return gpus > 0


def describe_devices(gpus: float, where: str) -> str:
    """``CPU`` or ``1 GPU per worker (<where from>)`` for the job's first line."""
    return f"{gpus:g} GPU per worker ({where})" if gpus > 0 else "CPU"


def job_storage(args, space):
    """The run's :class:`RunStorage` (name defaults to ``<space>-<date>-<time>``)."""

    name = args.name if args.name is not None else f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_storage(args.storage, name)


def wandb_settings(args, name: str):
    """W&B settings of the job, or None when disabled."""

    if args.wandb_mode == "disabled":
        return None
    return WandbSettings(
        project=args.wandb_project,
        mode=args.wandb_mode,
        group=name,
        extra_config={"run_name": name, "workers": args.workers},
    )


def format_genotype(genotype) -> str:
    """The genotype as a few readable lines: path over levels, then each cell's blocks."""
    names = lambda j: {0: "prev-prev", 1: "prev"}.get(j, f"block{j - 2}")  # noqa: E731
    lines = [f"genotype {genotype.genotype_id()}  path (level per layer): {' -> '.join(map(str, genotype.path))}"]
    for ci, cell in enumerate(genotype.cells):
        label = "cell (shared by all layers)" if len(genotype.cells) == 1 else f"cell of layer {ci}"
        lines.append(f"  {label}:")
        for bi, g in enumerate(cell):
            parts = " + ".join(f"{op}({names(j)})" for op, j in zip(g.ops, g.inputs))
            lines.append(f"    block{bi} = {parts}")
    return "\n".join(lines)


def wandb_pointer(local_dir: Path, storage=None) -> list[str]:
    """Lines saying where the W&B runs of this run are (from the pointer files)."""
    out = []
    for phase in ("search", "retrain"):
        f = Path(local_dir) / f"wandb_{phase}.json"
        if f.is_file():
            info = json.loads(f.read_text())
            where = info.get("url") or info.get("dir")
            if not info.get("url") and info.get("dir") and storage is not None and not storage.is_local:
                # the folder was on a worker that may be gone: its copy in the run's storage
                where = f"{storage.root}/wandb/{Path(info['dir']).name}"
            sync = info.get("sync")
            if sync and storage is not None:  # every segment of every phase, from the run's storage
                sync = f"nasfe wandb-sync --name {storage.name} --storage {storage.storage}"
            extra = f" (upload later: {sync})" if sync else ""
            out.append(f"W&B {phase} run ({info.get('mode')}, id {info.get('id')}): {where}{extra}")
    return out


def main(args) -> int:
    """Run ``nasfe search``: search -> derive -> retrain -> evaluate, printing the results."""

    check_flags(args)
    space = load_job_space(args, {"search.epochs": args.epochs, "retrain.epochs": args.retrain_epochs})
    phases = ("search",) if args.no_retrain else ("search", "retrain")
    check_workers(space, args.workers, phases)
    storage = job_storage(args, space)
    with run_lock(storage):  # a second job with this --name refuses in one line instead of mixing checkpoints
        return _search(args, space, phases, storage)


def _search(args, space, phases: tuple[str, ...], storage) -> int:
    check_job_run(storage, space, args.resume)  # a reused name with other settings: refused
    preflight(storage, phases, args.resume, space)
    gpus, gpus_from = declared_gpus(args)
    # phases that finished earlier return their results at once; Ray only starts when work is left
    done = {p: finished_phase(storage, p, space) if args.resume else None for p in phases}
    use_gpu = open_cluster(args, args.workers) if not all(done.values()) else False
    wb = wandb_settings(args, storage.name)
    print(
        f"[nasfe] run {storage.name!r} in {storage.root} (space {space.name}, {args.workers} workers, "
        f"{describe_devices(gpus, gpus_from)})",
        flush=True,
    )
    t0 = time.time()
    common = dict(
        num_workers=args.workers,
        use_gpu=use_gpu,
        gpus_per_worker=gpus,
        wandb=wb,
        resume=args.resume,
        max_failures=args.max_failures,
    )
    search = done["search"] or fit_search(space, storage.name, storage, **common)
    if "genotype" not in search.summary:
        raise RuntimeError(f"the search of {storage.root} left no genotype in search_summary.json")
    genotype = Genotype.from_dict(search.summary["genotype"], space=space)
    print(f"[nasfe] search done in {time.time() - t0:.0f}s; derived:\n{format_genotype(genotype)}", flush=True)
    report: dict[str, Any] = {
        "run": storage.name,
        "root": storage.root,
        "space": space.name,
        "genotype_id": genotype.genotype_id(),
        "search": search.summary,
    }
    local_dir = search.local_dir
    if not args.no_retrain:
        retrain = done["retrain"] or fit_retrain(space, genotype, storage.name, storage, **common)
        local_dir = retrain.local_dir
        report["retrain"] = retrain.summary
        report["test"] = evaluate_and_report(space, genotype, local_dir / "model.pt", args.eval_images, use_gpu)
    report["seconds"] = round(time.time() - t0, 1)
    report["wandb"] = wandb_pointer(local_dir, storage)

    atomic_write_json(local_dir / "job_summary.json", report)
    storage.upload(local_dir, ["job_summary.json"])
    for line in report["wandb"]:
        print(f"[nasfe] {line}", flush=True)
    print(f"[nasfe] results in {storage.root} ({report['seconds']:.0f}s)", flush=True)
    return 0
