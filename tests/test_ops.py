"""The operator table: shapes, the FFT operator against NumPy, parameter formulas, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nasfe.config import PAPER_OPERATORS
from nasfe.model.ops import FFT_EPS, OPS, FFTOp, op_param_count, wiener_deconvolve


def test_the_built_in_operators_are_the_papers_in_order():
    assert list(OPS)[: len(PAPER_OPERATORS)] == PAPER_OPERATORS


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("c", [6, 8])
def test_op_keeps_shape_and_matches_param_formula(name, c):
    torch.manual_seed(0)
    op = OPS[name](c)
    x = torch.randn(2, c, 10, 7)  # odd width: FFT and pooling must cope
    y = op(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert sum(p.numel() for p in op.parameters()) == op_param_count(name, c)


@pytest.mark.parametrize("name", [n for n in OPS if n not in ("zero", "skip_connect")])
def test_gradients_reach_every_weight(name):
    torch.manual_seed(0)
    op = OPS[name](8)
    if name == "self_attn":
        torch.nn.init.constant_(op.gamma, 0.5)  # gamma starts at 0, which blocks q/k/v gradients
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    op(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"


def test_zero_and_skip():
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(OPS["skip_connect"](4)(x), x)
    assert torch.count_nonzero(OPS["zero"](4)(x)) == 0


def _numpy_wiener(x1, x2, eps):
    X1 = np.fft.fft2(x1, norm="ortho")
    X2 = np.fft.fft2(x2, norm="ortho")
    return np.real(np.fft.ifft2(np.conj(X2) * X1 / (np.abs(X2) ** 2 + eps), norm="ortho"))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 9, 6)])
def test_wiener_matches_numpy_full_fft(shape):
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal(shape)
    x2 = rng.standard_normal(shape)
    got = wiener_deconvolve(torch.tensor(x1, dtype=torch.float32), torch.tensor(x2, dtype=torch.float32), FFT_EPS)
    np.testing.assert_allclose(got.numpy(), _numpy_wiener(x1, x2, FFT_EPS), rtol=1e-4, atol=1e-4)


def test_wiener_inverts_a_circular_blur():
    # x1 = k (*) s circularly; deconvolving by k recovers s up to the eps regularisation
    rng = np.random.default_rng(1)
    s = rng.standard_normal((16, 16))
    k = np.zeros((16, 16))
    k[0, 0], k[0, 1], k[1, 0] = 0.6, 0.2, 0.2
    blurred = np.real(np.fft.ifft2(np.fft.fft2(s) * np.fft.fft2(k)))
    kn = k * 16  # ortho FFT: FFT(k conv s) = sqrt(HW) K S, so the "kernel" map is sqrt(HW) k
    out = wiener_deconvolve(
        torch.tensor(blurred, dtype=torch.float32)[None, None],
        torch.tensor(kn, dtype=torch.float32)[None, None],
        FFT_EPS,
    )[0, 0].numpy()
    assert np.abs(out - s).mean() < 0.1 * np.abs(s).mean()


def test_fft_op_uses_both_halves_and_eq2():
    torch.manual_seed(0)
    op = FFTOp(6)
    x = torch.randn(1, 6, 8, 8)
    x1, x2 = op.conv1(x[:, :3]), op.conv2(x[:, 3:])
    want = op.out(
        torch.tensor(
            _numpy_wiener(x1.detach().double().numpy(), x2.detach().double().numpy(), FFT_EPS), dtype=torch.float32
        )
    )
    torch.testing.assert_close(op(x), want, rtol=1e-4, atol=1e-4)


# ---- self-attention: a head size every fused CUDA kernel accepts ---------------------------------


def _attention_widths() -> list[int]:
    """Every width self_attn sees in the paper space: C, C/K of paper.yaml, and the other K the
    benchmarks use (1, 2, 4, 8)."""
    from nasfe.config import load_space

    m = load_space("paper").model
    return sorted({m.channels, m.channels // m.partial_channels} | {m.channels // k for k in (1, 2, 4, 8)})


def _mem_efficient_accepts(q, k, v) -> list[str]:
    """Why PyTorch's memory-efficient CUDA kernel would refuse (q, k, v) on an sm80+ GPU (H100/H200),
    following ``can_use_mem_efficient_attention`` in aten/.../cuda/sdp_utils.cpp: dtype, 4-D dense
    inputs, head size divisible by the GEMM alignment (4 in fp32, 8 in fp16/bf16), last stride 1 and
    an aligned storage offset. Empty list: accepted."""
    why = []
    if not (q.dtype == k.dtype == v.dtype and q.dtype in (torch.float32, torch.float16, torch.bfloat16)):
        why.append(f"dtype {q.dtype}/{k.dtype}/{v.dtype}")
    if not (q.dim() == k.dim() == v.dim() == 4):
        why.append("not 4-D")
    align = 4 if q.dtype == torch.float32 else 8
    if q.shape[-1] != k.shape[-1] or q.shape[-1] % align or v.shape[-1] % align:
        why.append(f"head sizes q={q.shape[-1]} k={k.shape[-1]} v={v.shape[-1]} (need q == k, multiples of {align})")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            why.append(f"{name} last stride {t.stride(-1)}")
        if (t.storage_offset() * t.element_size()) % (align * t.element_size()):
            why.append(f"{name} storage offset {t.storage_offset()}")
    return why


def _flash_accepts(q, k, v) -> list[str]:
    """Why the flash kernel would refuse: fp16/bf16 only, equal q/k/v head sizes <= 256, last stride 1."""
    why = []
    if q.dtype not in (torch.float16, torch.bfloat16):
        why.append(f"dtype {q.dtype}")
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1] <= 256):
        why.append(f"head sizes {q.shape[-1]}/{k.shape[-1]}/{v.shape[-1]}")
    why += [f"{n} last stride" for n, t in (("q", q), ("k", k), ("v", v)) if t.stride(-1) != 1]
    return why


def _sdpa_calls(monkeypatch, c: int, dtype, device="cpu"):
    """Run SelfAttention(c) forward + backward at level-0-like size and return the (q, k, v) it
    handed to ``scaled_dot_product_attention``."""
    import torch.nn.functional as F

    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append((q.detach(), k.detach(), v.detach(), args, kwargs))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    op = OPS["self_attn"](c).to(device)
    x = torch.randn(2, c, 12, 10, device=device, requires_grad=True)
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        op(x).float().square().mean().backward()
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize("c", _attention_widths())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_self_attention_passes_a_fused_kernel_head_size(monkeypatch, c, dtype):
    """The paper space's K = 4 gives self_attn 6 channels: an unpadded head of 6 (or q/k padded to 6)
    fails the memory-efficient kernel's alignment in fp32 and the flash kernel's dtype, so CUDA
    would run the math kernel and store the whole HW x HW/4 matrix (about 144 GB to recompute one
    checkpointed cell at batch 40)."""
    q, k, v, args, kwargs = _sdpa_calls(monkeypatch, c, dtype)
    assert not args and kwargs.get("attn_mask") is None and not kwargs.get("is_causal", False)
    assert q.shape[-1] % 8 == 0 and q.shape[-1] == k.shape[-1] == v.shape[-1], (q.shape, k.shape, v.shape)
    assert _mem_efficient_accepts(q, k, v) == []
    if dtype == torch.bfloat16:
        assert q.dtype == torch.bfloat16
        assert _flash_accepts(q, k, v) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's kernel-selection checks need a CUDA device")
@pytest.mark.parametrize("c", _attention_widths())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_self_attention_kernel_selection_on_cuda(monkeypatch, c, dtype):
    """The same, asked of PyTorch itself on the GPU (runs where CUDA is present, e.g. the device check)."""
    from torch.backends.cuda import SDPAParams, can_use_efficient_attention, can_use_flash_attention

    q, k, v, _, _ = _sdpa_calls(monkeypatch, c, dtype, device="cuda")
    params = SDPAParams(q, k, v, None, 0.0, False, False)
    assert can_use_efficient_attention(params, True)
    if dtype == torch.bfloat16:
        assert can_use_flash_attention(params, True)


@pytest.mark.parametrize("c", [3, 6, 8, 24])
def test_self_attention_matches_the_explicit_formula(c):
    """Padding changes nothing numerically: x + gamma * softmax(q k^T / sqrt(d)) v with pooled k, v."""
    import torch.nn.functional as F

    torch.manual_seed(1)
    op = OPS["self_attn"](c)
    torch.nn.init.constant_(op.gamma, 0.7)
    x = torch.randn(2, c, 10, 8)
    q = op.q(x).flatten(2).transpose(1, 2)
    k = F.max_pool2d(op.k(x), 2).flatten(2)
    v = F.max_pool2d(op.v(x), 2).flatten(2).transpose(1, 2)
    att = torch.softmax(q @ k / q.shape[-1] ** 0.5, dim=-1)
    want = x + 0.7 * (att @ v).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(op(x), want, rtol=1e-5, atol=1e-5)
