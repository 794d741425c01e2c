"""A stand-in for a GPU and NCCL on a CPU-only machine (test support, imported only by tests).

``fakegpu`` is a PyTorch device (PrivateUse1, set up from Python): each ``fakegpu`` tensor keeps its
data in a CPU tensor and every operator on it runs on that CPU tensor. ``strictgpu`` is a
``torch.distributed`` backend registered for the ``fakegpu`` device only, as NCCL is for CUDA only:
a collective on a CPU tensor fails with the message NCCL's process group gives ("No backend type
associated with device type cpu"); device tensors travel through gloo underneath.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map

DEVICE = "fakegpu"
BACKEND = "strictgpu"
_installed = False


class FakeGpuTensor(torch.Tensor):
    """A ``fakegpu`` tensor; ``raw`` holds its values (a CPU tensor, possibly a view)."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, raw):
        t = torch._C._acc.create_empty_tensor(raw.shape, raw.dtype)
        t.__class__ = cls
        return t

    def __init__(self, raw):
        self.raw = raw
        # C++-side aliases (``detach``) share this tensor's storage without passing through Python
        _BY_STORAGE[self.untyped_storage()._cdata] = (self, raw)


_BY_STORAGE: dict[int, tuple] = {}


def _raw_of(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, FakeGpuTensor):
        return t.raw
    owner, raw = _BY_STORAGE[t.untyped_storage()._cdata]
    if (t.shape, t.stride(), t.storage_offset()) != (owner.shape, owner.stride(), owner.storage_offset()):
        raise NotImplementedError("fakegpu: an alias with its own geometry")
    return raw


def _kernel(op, *args, **kwargs):
    """Every aten operator on fakegpu tensors: run it on their CPU data, wrap the results."""
    owners = {}

    def unwrap(x):
        if isinstance(x, torch.Tensor) and x.device.type == DEVICE:
            raw = _raw_of(x)
            owners[id(raw)] = x
            return raw
        if isinstance(x, torch.device) and x.type == DEVICE:
            return torch.device("cpu")
        return x

    a, k = tree_map(unwrap, args), tree_map(unwrap, kwargs)
    if op.name() in ("aten::_copy_from", "aten::_copy_from_and_resize"):
        src, dst = a[0], a[1]
        if op.name().endswith("resize"):
            dst.resize_(src.shape)
        dst.copy_(src)
        return args[1]
    out = op(*a, **k)
    target = kwargs.get("device")
    if target is not None and torch.device(target).type != DEVICE:
        return out  # a copy back to the host

    def wrap(y):
        if isinstance(y, torch.Tensor):
            owner = owners.get(id(y))
            return owner if owner is not None else FakeGpuTensor(y)
        return y

    return tree_map(wrap, out)


class StrictGpuGroup(dist.ProcessGroup):
    """NCCL-like process group: device tensors only, moved through a gloo group underneath."""

    def __init__(self, store, rank, size, timeout):
        super().__init__(rank, size)
        self._gloo = dist.ProcessGroupGloo(store, rank, size, timeout)

    @staticmethod
    def _raw(tensors):
        for t in tensors:
            if t.device.type != DEVICE:
                # what ProcessGroup::getBackend says when the group has no backend for the device
                raise RuntimeError(f"No backend type associated with device type {t.device.type}")
        return [_raw_of(t) for t in tensors]

    def allreduce(self, tensors, opts=None):
        return self._gloo.allreduce(self._raw(tensors), opts or dist.AllreduceOptions())

    def broadcast(self, tensors, opts=None):
        return self._gloo.broadcast(self._raw(tensors), opts or dist.BroadcastOptions())

    def barrier(self, opts=None):
        return self._gloo.barrier(opts or dist.BarrierOptions())

    def getBackendName(self):
        return BACKEND


def install() -> None:
    """Register the ``fakegpu`` device and the ``strictgpu`` backend in this process (once)."""
    global _installed
    if _installed:
        return
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(DEVICE)
    lib = torch.library.Library("_", "IMPL")
    lib.fallback(_kernel, "PrivateUse1")
    globals()["_lib"] = lib  # keep the registration alive
    dist.Backend.register_backend(
        BACKEND, lambda store, rank, size, timeout: StrictGpuGroup(store, rank, size, timeout), devices=[DEVICE]
    )
    _installed = True
