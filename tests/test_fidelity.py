"""Fidelity to the paper: input PSNR/SSIM of each test set on real CelebA faces vs the paper's "input" columns.

Subset: 30 images (one per identity, seeded; fewer faces made the low-light figures swing by 1 dB
with the faces' brightness), and per face a strided share of the set's grid, offset by the face
index, so the subset covers every kernel / noise / low-light value of Table 4. Response curves: the
201 DoRF curves of ../shared/isp/dorf, the set CBDNet's synthesis (which the paper follows) draws from.
Scores: RGB in [0, 1] after 8-bit quantisation (what the PNG files hold), full image, data range 1,
per-image PSNR and SSIM (Gaussian window 11, sigma 1.5, valid filtering, mean over pixels then
channels) averaged. PSNR comes from nasfe.evaluate.metrics; SSIM from a separable float32 helper
below (the shared metric's 2-D float64 filter is ~30x slower on CPU), checked against it.
Readings that cannot reach a paper figure are marked xfail(strict) with the reason; see
docs/DEGRADATION.md for the numbers.
"""

import numpy as np
import pytest
import torch

import torch.nn.functional as F

import nasfe.data.testsets as ts
from nasfe.degrade.camera import ResponseCurves
from nasfe.evaluate.metrics import psnr, ssim
from nasfe.imageio import read_image, to_tensor
from tests.conftest import shared_path

PAPER = {"Test-N": (17.63, 0.50), "Test-B": (19.64, 0.61), "Test-L": (8.25, 0.14), "Test-BNL": (8.17, 0.22)}
FACES = 30
STRIDE = {"Test-N": 3, "Test-B": 26, "Test-L": 8, "Test-BNL": 52}
MISSES = {
    "Test-B": "centred kernels limited to 27 px and Gaussians sigma<=3 cannot blur CelebA faces down to 19.64 dB "
    "(a straight 27 px line gives 20.8 dB, a Gaussian sigma 3 gives 24.3 dB; zero instead of reflect "
    "padding only reaches 23.2 dB); we land near 24 dB; --kernel-mode paper-compatible reaches it",
}


def _fast_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, same convention as nasfe.evaluate.metrics.ssim, with a separable window."""
    t = torch.arange(-5, 6, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    g = g / g.sum()
    c = a.shape[1]

    def filt(v):
        v = F.conv2d(v, g.view(1, 1, 1, 11).expand(c, 1, 1, 11), groups=c)
        return F.conv2d(v, g.view(1, 1, 11, 1).expand(c, 1, 11, 1), groups=c)

    c1, c2 = 0.01**2, 0.03**2
    ma, mb = filt(a), filt(b)
    va, vb, cov = filt(a * a) - ma**2, filt(b * b) - mb**2, filt(a * b) - ma * mb
    m = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    return m.flatten(1).mean(1)


def test_fast_ssim_agrees_with_metrics():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 20, generator=g)
    b = (a + 0.1 * torch.randn(2, 3, 24, 20, generator=g)).clamp(0, 1)
    assert torch.allclose(_fast_ssim(a, b).double(), ssim(a, b).double(), atol=1e-4)


@pytest.fixture(scope="module")
def scores():
    root = shared_path("data", "celeba-id")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the one heavy computation here; every other test runs on one thread
    try:
        return _scores(root)
    finally:
        torch.set_num_threads(threads)


def _scores(root):
    files = sorted(root.glob("*/*.jpg"))
    by_id = {}
    for f in files:
        by_id.setdefault(f.parent.name, []).append(f)
    rng = np.random.default_rng(0)
    ids = sorted(rng.choice(sorted(by_id), FACES, replace=False))
    faces = [to_tensor(read_image(by_id[i][rng.integers(len(by_id[i]))])) for i in ids]
    bank = ts.test_bank(0)
    curves = ResponseCurves.from_dorf(shared_path("isp", "dorf"))
    out = {}
    for name, stride in STRIDE.items():
        p_all, s_all = [], []
        n = len(ts.variants(name))
        for face, x in enumerate(faces):
            only = list(range(face % stride, n, stride))
            y, _, _ = ts.degrade_face(x, name, face, 0, bank, curves, only=only)
            y = (y * 255).round() / 255
            xx = x[None].expand_as(y)
            p_all.append(psnr(y, xx))
            s_all.append(_fast_ssim(y, xx))
        out[name] = (torch.cat(p_all).mean().item(), torch.cat(s_all).mean().item())
    # Test-B with the paper-compatible kernel mode (DeblurGAN's off-centre kernels, zero padding, min-max)
    paper_bank, p_all = ts.test_bank(0, "paper-compatible"), []
    for face, x in enumerate(faces):
        y, _, _ = ts.degrade_face(x, "Test-B", face, 0, paper_bank, curves, only=list(range(face % 26, 52, 26)))
        p_all.append(psnr((y * 255).round() / 255, x[None].expand_as(y)))
    out["Test-B paper-compatible"] = (torch.cat(p_all).mean().item(), float("nan"))
    print({k: (round(v[0], 2), round(v[1], 3)) for k, v in out.items()})
    return out


@pytest.mark.slow  # the module's scores: about 30 s of degradation
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=MISSES[n])) if n in MISSES else n for n in PAPER],
)
def test_input_psnr_near_paper(scores, name):
    ours, paper = scores[name][0], PAPER[name][0]
    assert abs(ours - paper) <= 1.5, f"{name}: input PSNR {ours:.2f} dB vs paper {paper:.2f} dB"


@pytest.mark.slow
def test_paper_compatible_kernels_reach_the_papers_test_b(scores):
    """The cited generator's habits (off-centre kernels, zero padding, min-max rescaling) bring Test-B
    from ~24 dB to the paper's 19.64 dB; the default (centred) kernels stay milder."""
    ours = scores["Test-B paper-compatible"][0]
    assert abs(ours - PAPER["Test-B"][0]) <= 1.5, f"paper-compatible Test-B {ours:.2f} dB"
    assert ours < scores["Test-B"][0] - 2


@pytest.mark.slow
def test_ordering_matches_paper(scores):
    """Whatever the offsets, the sets rank as in the paper: N > L and B > BNL, and low light is the worst."""
    assert scores["Test-N"][0] > scores["Test-L"][0] + 5
    assert scores["Test-B"][0] > scores["Test-BNL"][0] + 5
    assert scores["Test-L"][1] < 0.3 and scores["Test-BNL"][1] < 0.35
