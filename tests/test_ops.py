"""The operator table: shapes, the FFT operator against NumPy, parameter formulas, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nasfe.config import PAPER_OPERATORS
from nasfe.model.ops import FFT_EPS, OPS, FFTOp, op_param_count, wiener_deconvolve


def test_ops_table_has_exactly_the_paper_names():
    assert list(OPS) == PAPER_OPERATORS


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
    out = wiener_deconvolve(torch.tensor(blurred, dtype=torch.float32)[None, None],
                            torch.tensor(kn, dtype=torch.float32)[None, None], FFT_EPS)[0, 0].numpy()
    assert np.abs(out - s).mean() < 0.1 * np.abs(s).mean()


def test_fft_op_uses_both_halves_and_eq2():
    torch.manual_seed(0)
    op = FFTOp(6)
    x = torch.randn(1, 6, 8, 8)
    x1, x2 = op.conv1(x[:, :3]), op.conv2(x[:, 3:])
    want = op.out(torch.tensor(_numpy_wiener(x1.detach().double().numpy(), x2.detach().double().numpy(), FFT_EPS),
                               dtype=torch.float32))
    torch.testing.assert_close(op(x), want, rtol=1e-4, atol=1e-4)
