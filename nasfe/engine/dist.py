"""Data-parallel glue over ``torch.distributed`` (whoever started the process group: Ray, torchrun).

The engine all-reduces gradients itself instead of wrapping the model in DDP: a DARTS step
alternates two parameter groups (weights, then alpha/beta) on different batches, and explicit
reduction keeps alpha and beta bit-identical on every rank without DDP's unused-parameter hooks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Rank, world size and collectives; a world of one does nothing."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def detect(cls) -> "DistContext":
        """From an initialised ``torch.distributed`` process group, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when there is more than one process to talk to."""
        return self.world_size > 1

    def all_reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` over all ranks (one flat buffer, one collective)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def mean(self, value: float | torch.Tensor) -> float:
        """Mean of a scalar over all ranks."""
        t = torch.as_tensor(value, dtype=torch.float64).clone()
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world_size
        return float(t)

    def max_abs_diff(self, tensor: torch.Tensor) -> float:
        """Largest difference between this rank's ``tensor`` and rank 0's (0 in a world of one)."""
        if not self.active:
            return 0.0
        ref = tensor.detach().clone()
        dist.broadcast(ref, src=0)
        diff = (tensor.detach() - ref).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff)

    def broadcast_parameters(self, params: Iterable[torch.Tensor]) -> None:
        """Copy rank 0's values into every rank (same start on every worker)."""
        if not self.active:
            return
        for p in params:
            dist.broadcast(p.data, src=0)

    def same_everywhere(self, text: str) -> bool:
        """True when every rank holds the same string (compares a hash)."""
        if not self.active:
            return True
        import hashlib

        h = int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)
        t = torch.tensor([h, -h], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t[0]) == h and int(-t[1]) == h

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            dist.barrier()
