"""DistContext's collectives run on the process group's device: a backend that, like NCCL, takes
device tensors only and rejects CPU ones (tests/fakegpu.py), two processes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rendezvous(folder) -> str:
    """A file rendezvous for a two-process group: no TCP port to pick (a port picked free can be
    taken by another process before the group binds it)."""
    return (Path(folder) / "rendezvous").resolve().as_uri()


def _worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    import fakegpu
    from nasfe.engine.dist import DistContext

    fakegpu.install()
    dist.init_process_group(fakegpu.BACKEND, init_method=init, rank=rank, world_size=2)
    res: dict = {}
    try:
        ctx = DistContext.detect()
        with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
            dist.all_reduce(torch.ones(1))  # the group refuses host tensors, as NCCL does
        res["mean"] = ctx.mean(rank + 1.0)  # a Python number from the host
        res["mean_of_tensor"] = ctx.mean(torch.tensor(2.0 * rank, device=fakegpu.DEVICE))
        res["same"] = ctx.same_everywhere("one genotype")
        res["differ"] = ctx.same_everywhere(f"genotype of rank {rank}")
        host = torch.tensor([float(rank), 2.0 * rank])  # the strength tables are measured on the host
        avg = ctx.average(host)
        res["average"], res["average_device"] = avg.tolist(), avg.device.type
        alpha = torch.full((2, 3), float(rank), device=fakegpu.DEVICE)
        res["max_abs_diff"] = ctx.max_abs_diff(alpha)
        w = torch.nn.Parameter(torch.full((4,), 10.0 + rank, device=fakegpu.DEVICE))
        ctx.broadcast_parameters([w])
        res["broadcast"] = w.detach().cpu().tolist()
        w.grad = torch.full((4,), float(rank + 1), device=fakegpu.DEVICE)
        ctx.all_reduce_grads([w])
        res["grad"] = w.grad.cpu().tolist()
        res["grad_device"] = w.grad.device.type
        ctx.barrier()
        res["device"] = ctx.device.type
    except Exception as exc:  # reported to the test, which names it
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        Path(out, f"r{rank}.json").write_text(json.dumps(res))
        dist.destroy_process_group()


def test_collectives_run_on_the_groups_device_when_it_rejects_cpu_tensors(tmp_path):
    mp.start_processes(_worker, args=(rendezvous(tmp_path), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert "error" not in r, r["error"]
        assert r["device"] == "fakegpu"
        assert r["mean"] == 1.5 and r["mean_of_tensor"] == 1.0
        assert r["same"] is True and r["differ"] is False
        assert r["max_abs_diff"] == 1.0
        assert r["average"] == [0.5, 1.0] and r["average_device"] == "cpu"
        assert r["broadcast"] == [10.0] * 4  # rank 0's values everywhere
        assert r["grad"] == [1.5] * 4 and r["grad_device"] == "fakegpu"


def test_group_device_follows_the_backend():
    from nasfe.engine.dist import group_device

    assert group_device("gloo") == torch.device("cpu")
    assert group_device("nccl").type == "cuda"
    assert group_device("cpu:gloo,cuda:nccl").type == "cuda"
