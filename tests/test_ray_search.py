"""The real engine on Ray Train (2 CPU workers, tiny space): genotype, alpha equal across ranks,
resume after an interruption, and surviving a lost worker through FailureConfig."""

from __future__ import annotations

import json
import os
import time
import sys
from pathlib import Path

import pytest
import torch

from nasfe.config import load_space
from nasfe.engine.callbacks import Callback
from nasfe.engine.checkpoint import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    from nasfe.distributed.cluster import worker_env

    # the probes below live in this test module: ship them to the workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": worker_env()})
    yield
    ray.shutdown()


class Probe(Callback):
    """Per rank: the step each attempt starts at, alpha/beta after every epoch; optionally fails."""

    def __init__(self, out: str, fail_at: int = 0, fail_rank: int = -1, hard: bool = False):
        self.out, self.fail_at, self.fail_rank, self.hard = out, fail_at, fail_rank, hard

    def on_start(self, state, config):
        with open(os.path.join(self.out, f"starts_r{state.rank}.txt"), "a") as fh:
            fh.write(f"{state.step}\n")

    def on_epoch_end(self, state, metrics, genotype=None):
        torch.save(
            {"alphas": metrics["alphas"], "betas": metrics["betas"], "genotype": genotype.genotype_id()},
            os.path.join(self.out, f"arch_r{state.rank}_e{state.epoch}.pt"),
        )

    def on_step(self, state, metrics):
        marker = Path(self.out) / f"failed_r{state.rank}"
        if state.step == self.fail_at and self.fail_rank in (-1, state.rank) and not marker.exists():
            marker.write_text("x")
            if self.hard:
                # a lost worker: the process dies without a word, a moment after its last report
                # (the controller polls reports; a death in the same instant may beat the poll)
                time.sleep(3)
                os._exit(1)
            raise RuntimeError("interrupted by the test")


def _starts(out: Path, rank: int) -> list[int]:
    return [int(x) for x in (out / f"starts_r{rank}.txt").read_text().split()]


def _ray_steps(run_root: Path, phase: str) -> list[int]:
    steps = []
    for d in sorted((run_root / "ray" / phase).glob("checkpoint_*")):
        steps += [int(p.stem.rsplit("_", 1)[1]) for p in list_checkpoints(d, phase)]
    return steps


def test_search_on_two_workers_resumes_after_an_interruption(tmp_path):
    from nasfe.distributed.ray_train import fit_search
    from nasfe.genotype import Genotype
    from nasfe.tracking.wandb_logger import WandbSettings, read_offline_records

    space = load_space("tiny")  # 3 epochs x 2 steps, a checkpoint after every epoch
    out = tmp_path / "probe"
    out.mkdir()
    kwargs = dict(num_workers=2, threads_per_worker=1, progress=False)
    with pytest.raises(Exception, match="interrupted by the test"):
        fit_search(
            space,
            "interrupted",
            tmp_path / "runs",
            max_failures=0,
            extra_callbacks=[Probe(str(out), fail_at=5)],
            **kwargs,
        )
    root = tmp_path / "runs" / "interrupted"
    assert 4 in _ray_steps(root, "search")  # the step-4 checkpoint made it to storage

    res = fit_search(
        space,
        "interrupted",
        tmp_path / "runs",
        max_failures=0,
        extra_callbacks=[Probe(str(out))],
        wandb=WandbSettings(mode="offline"),
        **kwargs,
    )
    # the second run continued from step 4 on both ranks and finished the 6 steps
    assert _starts(out, 0) == [0, 4] and _starts(out, 1) == [0, 4]
    assert res.summary["steps"] == 6 and res.summary["epochs"] == 3 and res.summary["world_size"] == 2
    steps = _ray_steps(root, "search")
    assert 4 in steps and steps[-1] == 6  # no checkpoint lost
    final = load_checkpoint(root / "checkpoints" / "search_step_00000006.pt")
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3]

    # alpha and beta identical on both ranks after every epoch; same genotype
    for epoch in (1, 2, 3):
        r0, r1 = (torch.load(out / f"arch_r{r}_e{epoch}.pt") for r in (0, 1))
        assert torch.equal(r0["alphas"], r1["alphas"]) and torch.equal(r0["betas"], r1["betas"])
        assert r0["genotype"] == r1["genotype"]
    assert not torch.equal(torch.load(out / "arch_r0_e1.pt")["alphas"], torch.load(out / "arch_r0_e3.pt")["alphas"])

    genotype = Genotype.from_json(root / "genotype.json", space=space)
    assert genotype.genotype_id() == res.summary["genotype_id"]
    assert (root / "search_summary.json").is_file()

    pointer = json.loads((root / "wandb_search.json").read_text())
    records = read_offline_records(next(Path(pointer["dir"]).glob("*.wandb")))
    assert any(r.WhichOneof("record_type") == "artifact" and r.artifact.type == "genotype" for r in records)


@pytest.mark.drill
def test_a_lost_worker_is_replaced_and_the_run_continues(tmp_path):
    from nasfe.distributed.ray_train import fit_search

    space = load_space("tiny", {"search.epochs": 2})
    out = tmp_path / "probe"
    out.mkdir()
    res = fit_search(
        space,
        "spot",
        tmp_path / "runs",
        num_workers=2,
        threads_per_worker=1,
        progress=False,
        max_failures=1,
        extra_callbacks=[Probe(str(out), fail_at=3, fail_rank=1, hard=True)],
    )
    assert res.summary["steps"] == 4
    assert _starts(out, 0) == [0, 2]  # the new worker group started from the step-2 checkpoint
    assert (tmp_path / "runs" / "spot" / "genotype.json").is_file()


def test_ray_train_report_chatter_is_quieted_but_warnings_stay():
    import logging

    from ray.train.v2._internal.execution import context, storage

    from nasfe.distributed.ray_train import _quiet_ray_train_reports

    chatty = [logging.getLogger(context.__file__), logging.getLogger(storage.__name__)]
    before = [lg.level for lg in chatty]
    try:
        for lg in chatty:
            lg.setLevel(logging.NOTSET)
        _quiet_ray_train_reports()
        assert [lg.level for lg in chatty] == [logging.WARNING, logging.WARNING]
        assert logging.getLogger("ray.train").level != logging.WARNING  # only the per-report modules
    finally:
        for lg, level in zip(chatty, before):
            lg.setLevel(level)


def test_a_truncated_ray_record_resumes_from_the_newest_checkpoint_that_loads(tmp_path):
    """A full disk cut Ray's record of the run short and half wrote a newer checkpoint folder: the
    run continues from the newest checkpoint that loads and keeps every earlier file."""
    from nasfe.distributed.ray_train import fit_search

    out = tmp_path / "probe"
    out.mkdir()
    kwargs = dict(
        num_workers=1, threads_per_worker=1, progress=False, max_failures=0, extra_callbacks=[Probe(str(out))]
    )
    fit_search(load_space("tiny", {"search.epochs": 2}), "cut", tmp_path / "runs", **kwargs)
    ray_dir = tmp_path / "runs" / "cut" / "ray" / "search"
    snap = ray_dir / "checkpoint_manager_snapshot.json"
    snap.write_text(snap.read_text()[:120])
    pt = next(sorted(d for d in ray_dir.glob("checkpoint_*") if d.is_dir())[-1].glob("search_step_*.pt"))
    half = ray_dir / "checkpoint_9999-12-31_23-59-59.999999" / "search_step_00000006.pt"
    half.parent.mkdir()
    half.write_bytes(pt.read_bytes()[:1000])

    res = fit_search(load_space("tiny", {"search.epochs": 3}), "cut", tmp_path / "runs", **kwargs)
    assert _starts(out, 0) == [0, 4]  # continued at step 4, not from scratch
    assert res.summary["steps"] == 6
    kept = {p.name for p in (tmp_path / "runs" / "cut" / "previous").rglob("search_step_*.pt")}
    assert {"search_step_00000004.pt", "search_step_00000006.pt"} <= kept  # set aside, not deleted
