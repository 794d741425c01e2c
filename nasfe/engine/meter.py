"""Step metrics kept on the device, read to the host once per logging interval, and the divergence guard.

Reading a GPU scalar (``float(t)``, ``t.item()``) stalls the host until the device catches up.
A training step therefore hands its loss terms to :class:`StepMeter` as device tensors; the meter
adds them up on the device and :meth:`StepMeter.read` moves everything to the host in one
transfer. The same read carries the guard: the first step at which a watched value (a loss, a
gradient norm) was not finite, and whether the weights are finite now.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

import torch

#: what a guard watches, in the order of its code on the device
WATCHED = ("loss", "gradient", "architecture loss", "architecture gradient", "weights")


class StepMeter:
    """Running sums of step metrics (device) with their counts (host), and the first non-finite step."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.start_epoch()
        # first non-finite step and the code of what it was, kept on the device
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._bad_code = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.cum: dict[str, float] = {}  # host copy of the epoch sums at the last read
        self._logged: dict[str, tuple[float, int]] = {}

    def start_epoch(self) -> None:
        """Forget the sums (a new epoch); the divergence record stays."""
        self._sums: dict[str, torch.Tensor] = {}
        self._host: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.cum = {}
        self._logged = {}

    def add(self, values: Mapping[str, torch.Tensor | float]) -> None:
        """Add one step's scalar metrics: tensors are summed where they are (no host read), plain
        numbers on the host."""
        for k, v in values.items():
            if isinstance(v, torch.Tensor):
                t = v.detach().to(torch.float32).reshape(())
                self._sums[k] = self._sums[k] + t if k in self._sums else t.clone()
            else:
                self._host[k] = self._host.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def watch(self, step: int, what: str, value: torch.Tensor) -> None:
        """Record ``step`` as the first bad one if ``value`` (any shape) is not finite; no host read."""
        code = WATCHED.index(what)
        first = ~torch.isfinite(value.detach()).all() & (self._bad_step < 0)
        # Python scalars go to the kernel as arguments: no host-to-device copy, no stall
        self._bad_code = torch.where(first, code, self._bad_code)
        self._bad_step = torch.where(first, step, self._bad_step)

    def read(self, weights: Iterable[torch.Tensor] = ()) -> Optional[tuple[str, int]]:
        """One host transfer: updates :attr:`cum` (epoch sums) and returns ``(what, step)`` of the
        first non-finite value seen (the weights checked now count as ``'weights'`` at step -1),
        or None when everything is finite."""
        keys = list(self._sums)
        ws = [w.detach().float().sum() for w in weights]
        w_ok = torch.isfinite(torch.stack(ws)).all().to(torch.float32) if ws else torch.ones((), device=self.device)
        tail = torch.stack(
            [self._bad_step.to(torch.float32), self._bad_code.to(torch.float32), w_ok.to(self.device, torch.float32)]
        )
        packed = torch.cat([torch.stack([self._sums[k] for k in keys]), tail]) if keys else tail
        values = packed.tolist()  # the one device -> host transfer
        self.cum = {**self._host, **dict(zip(keys, values[: len(keys)]))}
        step, code, ok = int(values[-3]), int(values[-2]), values[-1]
        if step >= 0:
            return WATCHED[code], step
        if ok < 0.5:
            return "weights", -1
        return None

    def interval_means(self) -> dict[str, float]:
        """Means since the previous call, from the last :meth:`read` (host only)."""
        out = {}
        for k, total in self.cum.items():
            n = self.counts[k]
            prev_total, prev_n = self._logged.get(k, (0.0, 0))
            if n > prev_n:
                out[k] = (total - prev_total) / (n - prev_n)
            self._logged[k] = (total, n)
        return out

    def epoch_means(self) -> dict[str, float]:
        """Means over the epoch so far, from the last :meth:`read` (host only)."""
        return {k: v / self.counts[k] for k, v in self.cum.items() if self.counts.get(k)}
