"""Data-parallel glue over ``torch.distributed`` (whoever started the process group: Ray, torchrun).

The engine all-reduces gradients itself instead of wrapping the model in DDP: a DARTS step
alternates two parameter groups (weights, then alpha/beta) on different batches, and explicit
reduction keeps alpha and beta bit-identical on every rank without DDP's unused-parameter hooks.

Every collective runs on the process group's device (``DistContext.device``): NCCL accepts CUDA
tensors only ("No backend type associated with device type cpu" for a CPU tensor), gloo CPU ones.
Scalars and hashes are built on the host, moved to that device for the collective, and read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
import torch.distributed as dist
import hashlib


def group_device(backend: Optional[str] = None) -> torch.device:
    """The device the process group's collectives take tensors on (``cuda:<current>`` for NCCL).

    ``backend`` defaults to the initialised group's (``dist.get_backend()``). A device-mapped
    backend (``"cpu:gloo,cuda:nccl"``) prefers the accelerator; a backend that serves the CPU
    (gloo, mpi) gives the CPU; any other registered backend its first device type.
    """
    name = str(backend or dist.get_backend()).lower()
    if ":" in name:  # "cpu:gloo,cuda:nccl"
        kinds = [pair.split(":")[0] for pair in name.split(",")]
    else:
        kinds = [d for d, b in dist.Backend.default_device_backend_map.items() if b == name]
        if name in ("gloo", "mpi") or not kinds:
            kinds = ["cpu"]
    kind = next((k for k in kinds if k != "cpu"), "cpu")
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


@dataclass
class DistContext:
    """Rank, world size, the group's device and collectives; a world of one does nothing."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def detect(cls, device: Optional[str | torch.device] = None) -> "DistContext":
        """From an initialised ``torch.distributed`` process group, else a single process.

        ``device`` overrides the group's device (e.g. Ray Train's ``get_device()``).
        """
        if dist.is_available() and dist.is_initialized():
            dev = torch.device(device) if device is not None else group_device()
            return cls(dist.get_rank(), dist.get_world_size(), dev)
        return cls()

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there is more than one process to talk to."""
        return self.world_size > 1

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.device == self.device else t.to(self.device)

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over all ranks (one flat buffer, one collective)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = self._on_device(torch.cat([g.reshape(-1) for g in grads]))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.to(grads[0].device) / self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def mean(self, value: float | torch.Tensor) -> float:
        """Mean of a scalar over all ranks."""
        if not self.active:
            return float(value)
        return float(self.average(torch.as_tensor(value).detach().to(torch.float64).reshape(1)).cpu())

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise mean of ``tensor`` over all ranks, on the tensor's own device (one collective)."""
        if not self.active:
            return tensor
        t = self._on_device(tensor.detach().to(torch.float64))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world_size).to(tensor.device)

    def max_abs_diff(self, tensor: torch.Tensor) -> float:
        """Largest difference between this rank's ``tensor`` and rank 0's (0 in a world of one)."""
        if not self.active:
            return 0.0
        mine = self._on_device(tensor.detach())
        ref = mine.clone()
        dist.broadcast(ref, src=0)
        diff = (mine - ref).abs().max().reshape(1).to(torch.float64)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff.cpu())

    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        """Copy rank 0's values into every rank (same start on every worker)."""
        if not self.active:
            return
        for p in params:
            buf = self._on_device(p.data)
            dist.broadcast(buf, src=0)
            if buf is not p.data:
                p.data.copy_(buf)

    def same_everywhere(self, text: str) -> bool:
        """True when every rank holds the same string (compares a hash)."""
        if not self.active:
            return True

        h = int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)
        t = self._on_device(torch.tensor([h, -h], dtype=torch.float64))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        hi, neg_lo = (int(v) for v in t.cpu().tolist())
        return hi == h and -neg_lo == h

    def barrier(self) -> None:
        """Wait for every rank (NCCL's barrier runs on the group's current CUDA device)."""
        if self.active:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()
