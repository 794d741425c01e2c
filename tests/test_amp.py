"""bf16 autocast on the CPU: every edge operator and a search step stay finite and close to float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nasfe.config import load_space
from nasfe.engine.search import run_search
from nasfe.model.ops import OPS, DilConv, Float32Conv2d, build_op
from tests.test_extensions import TINY_RUN

#: operator width of the paper space's mixed operation at rehearsal size (C = 8)
WIDTH = 8
#: oneDNN's faulty bf16 depthwise dilated kernel is picked from about 32 x 32 pixels up
SIDE = 32


def _poison_freed_memory() -> None:
    """Fill and free blocks of many sizes with NaN, so a kernel reading uninitialised memory gives
    NaN every time instead of whatever the last freed tensor held."""
    blocks = [torch.full((2**k,), float("nan")) for k in range(4, 22)]
    del blocks


def _grads(op: nn.Module, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Output, input gradient and parameter gradients of ``op(x).square().mean()``."""
    op.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    _poison_freed_memory()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        y = op(x)
    _poison_freed_memory()
    y.float().square().mean().backward()
    assert x.grad is not None
    return y.detach().float(), x.grad, {n: p.grad.clone() for n, p in op.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(OPS))
def test_operator_under_bf16_autocast_gives_finite_outputs_and_gradients_close_to_float32(name):
    torch.manual_seed(0)
    op = build_op(name, WIDTH).to(memory_format=torch.channels_last)  # the layout the CPU runs
    if name == "self_attn":
        with torch.no_grad():
            op.gamma.fill_(0.5)  # 0 at initialisation: the attention would not reach the output
    x = torch.randn(1, WIDTH, SIDE, SIDE).contiguous(memory_format=torch.channels_last)
    ref_y, ref_dx, ref_g = _grads(op, x, amp=False)
    y, dx, g = _grads(op, x, amp=True)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    assert set(g) == set(ref_g)
    for n, grad in g.items():
        assert torch.isfinite(grad).all(), f"{name}: non-finite gradient of {n}"
        # bf16 keeps ~3 significant digits: a few per cent of the largest entry, never garbage
        scale = ref_g[n].abs().max().item() + 1e-12
        assert (grad - ref_g[n]).abs().max().item() <= 0.25 * scale, f"{name}: gradient of {n} far from float32"
    assert (y - ref_y).abs().max().item() <= 0.1 * (ref_y.abs().max().item() + 1e-12)


def test_dilated_convolution_is_unchanged_without_autocast():
    torch.manual_seed(0)
    plain = nn.Conv2d(WIDTH, WIDTH, 3, padding=2, dilation=2, groups=WIDTH, bias=False)
    wide = Float32Conv2d(WIDTH, WIDTH, 3, padding=2, dilation=2, groups=WIDTH, bias=False)
    wide.load_state_dict(plain.state_dict())
    x = torch.randn(2, WIDTH, 12, 10)
    assert torch.equal(wide(x), plain(x))
    assert wide.double()(x.double()).dtype == torch.float64
    assert list(DilConv(WIDTH, 3).state_dict()) == ["op.1.weight", "op.2.weight", "op.2.bias"]


def test_dilated_convolution_runs_in_float32_under_bf16_autocast():
    conv = Float32Conv2d(WIDTH, WIDTH, 3, padding=2, dilation=2, groups=WIDTH, bias=True)
    x = torch.randn(1, WIDTH, 12, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x.bfloat16())
    assert y.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(y, conv(x.bfloat16().float()))


def test_bf16_search_step_with_every_convolution_operator_is_finite(tmp_path):
    # the tiny space with the paper's convolutions on every edge, in channels_last (the CPU's layout)
    ops = ["dil_conv_3x3", "dil_conv_5x5", "sep_conv_3x3", "res_op", "skip_connect", "zero"]
    space = load_space(
        "tiny",
        {
            **TINY_RUN,
            "model.operators": ops,
            "model.channels_last": True,
            "search.amp": True,
            "data.height": 64,  # the fusion cells run at half size: 32 x 32
            "data.width": 64,
        },
    )
    _poison_freed_memory()
    summary = run_search(space, tmp_path)  # raises DivergenceError on a non-finite loss or gradient
    assert summary["steps"] == 1
