"""Shared fixtures: ../shared (skip cleanly when absent), small seeded tensors, thread limits."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Two-core CI: keep torch from oversubscribing when several tests' workers run at once.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# One intra-op thread in the test process, whichever module is collected or run first: the tests share
# two cores with Ray workers and job subprocesses, and a result must not depend on the order of tests.
torch.set_num_threads(1)

# A job given no address joins the cluster of the last `ray start` on this machine, found in Ray's
# default temp dir (/tmp/ray): a private one keeps other runs' clusters on a shared machine away.
_OWN_RAY_TMPDIR = None
if "RAY_TMPDIR" not in os.environ:
    _OWN_RAY_TMPDIR = os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="nt", dir="/tmp")  # short: socket paths


def pytest_sessionfinish(session, exitstatus):
    if _OWN_RAY_TMPDIR is not None:
        shutil.rmtree(_OWN_RAY_TMPDIR, ignore_errors=True)


SHARED = Path(os.environ.get("NASFE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared, or skip the test when it is not there."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (../shared is not present)")
    return p


@pytest.fixture
def shared():
    """The ../shared folder; skips the test when it is absent."""
    return shared_path()


TINY_RETRAIN = {"retrain.epochs": 1, "retrain.steps_per_epoch": 1, "retrain.batch_size": 4, "retrain.val_batches": 1}


def train_tiny_model(run_dir: Path, first_op=None):
    """A tiny derived network (genotype from the supernet's initial alphas) retrained for one step.

    ``first_op`` replaces the first operator of the first block (e.g. ``"fft_op"``, so that a test
    is sure to meet it). Returns ``(space, genotype, run_dir / "model.pt")``.
    """
    import torch

    from nasfe.config import load_space
    from nasfe.engine.retrain import run_retrain
    from nasfe.genotype import derive_genotype
    from nasfe.model.registry import create_model

    space = load_space("tiny", TINY_RETRAIN)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        supernet = create_model(space)
    genotype = derive_genotype(supernet.alphas, supernet.betas, space)
    if first_op is not None:
        genotype.cells[0][0].ops[0] = first_op
    run_retrain(space, genotype, run_dir)
    return space, genotype, Path(run_dir) / "model.pt"


def tiny_identity():
    """A frozen stand-in for ``nasfe.identity.IdentityInfo``: (y, refs[, mask]) -> (N, 5, H/4, W/4)."""
    import torch
    from torch import nn

    class TinyIdentity(nn.Module):
        out_channels = 5

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 5, 3, stride=4, padding=1)
            for p in self.parameters():
                p.requires_grad_(False)

        def forward(self, y, refs, mask=None):
            if mask is not None:
                w = mask.float()[:, :, None, None, None]
                refs = refs * w / w.sum(1, keepdim=True).clamp_min(1)
                return self.conv(torch.cat([y, refs.sum(1)], 1))
            return self.conv(torch.cat([y, refs.mean(1)], 1))

    return TinyIdentity()


def write_synthetic_faces(
    folder: Path, identities: int, images_per_identity: int, height: int = 48, width: int = 40, seed: int = 3
) -> Path:
    """Synthetic faces saved as ``folder/<identity>/<image>.png`` (a face folder for test sets)."""
    from PIL import Image

    from nasfe.data.faces import SyntheticFaces

    src = SyntheticFaces(
        identities=identities, images_per_identity=images_per_identity, height=height, width=width, seed=seed
    )
    for r in src.records:
        p = folder / r.identity / f"{r.key.replace('/', '_')}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(src.load(r)).save(p)
    return folder


def pytest_addoption(parser):
    parser.addoption(
        "--drills",
        action="store_true",
        help="also run the drills: minutes of a real cluster on this machine (faults, S3 resumes, the autoscaler)",
    )


def pytest_collection_modifyitems(config, items):
    """A test that starts Ray, or a drill, is slow (the fast tier, ``-m "not slow"``, skips it); a
    drill runs only with ``--drills`` (``bash scripts/check.sh --drills``), which keeps the default
    suite within its time budget."""
    run_drills = config.getoption("--drills")
    skip_drill = pytest.mark.skip(reason="a drill: run with --drills (bash scripts/check.sh --drills)")
    for item in items:
        heavy = item.get_closest_marker("ray") is not None or item.get_closest_marker("drill") is not None
        if heavy and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("drill") is not None and not run_drills:
            item.add_marker(skip_drill)


def _module_holds_ray(module) -> bool:
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    return any(m.name == "ray" for m in marks)


@pytest.fixture(autouse=True)
def _no_ray_left_connected(request):
    """A test that leaves this process connected to Ray (a job run in-process joins or starts one)
    would make the next ``ray.init`` fail: disconnect after it, unless its module shares one Ray
    instance across its tests."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and not _module_holds_ray(request.module):
        ray.shutdown()
