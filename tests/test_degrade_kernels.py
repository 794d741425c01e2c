"""Blur kernels: normalisation, centring, support, Gaussian shape, seeded bank and its cache."""

import math

import numpy as np
import pytest
import torch

from nasfe.config import DegradeConfig
from nasfe.degrade.kernels import KernelBank, gaussian_kernel, kernel_centroid, motion_kernels


@pytest.fixture(scope="module")
def bank():
    return KernelBank.build(64, 8, seed=5)


def test_kernels_sum_to_one_and_are_centred(bank):
    k = bank.kernels.double().numpy()
    assert np.allclose(k.sum((1, 2)), 1.0, atol=1e-5)
    assert (k >= 0).all()
    centre = (bank.canvas - 1) / 2
    assert np.abs(kernel_centroid(k) - centre).max() < 1e-3
    # not min-max rescaled: the peak is far below 1 for spread-out kernels
    assert k.max((1, 2)).min() < 0.5


def _assert_inside_supports(bank):
    k = bank.kernels.numpy()
    c = bank.canvas // 2
    for i, s in enumerate(bank.sizes.tolist()):
        h = s // 2
        inside = np.zeros_like(k[i], dtype=bool)
        inside[c - h : c + h + 1, c - h : c + h + 1] = True
        assert k[i][~inside].sum() == 0, f"kernel {i} of size {s} leaks outside its support"


def test_kernels_stay_in_their_support(bank):
    _assert_inside_supports(bank)
    assert set(bank.sizes[:64].tolist()) == {13, 15, 17, 19, 21, 23, 25, 27}
    assert bank.kinds[:64] == ["motion"] * 64 and bank.kinds[64:] == ["gaussian"] * 8


def test_motion_kernels_are_spread_out():
    k = motion_kernels([27] * 32, np.random.default_rng(0))
    support = (k > 1e-6).sum((1, 2))
    # a blur, not a dot: most kernels cover many pixels
    assert np.median(support) > 20


def test_gaussian_kernel_has_requested_axes():
    s1, s2, th = 3.0, 1.0, math.pi / 6
    k = gaussian_kernel(s1, s2, th, 27)
    ax = np.arange(27) - 13
    xx, yy = np.meshgrid(ax, ax)
    u = math.cos(th) * xx + math.sin(th) * yy
    v = -math.sin(th) * xx + math.cos(th) * yy
    assert (k * u * u).sum() == pytest.approx(s1**2, rel=0.03)
    assert (k * v * v).sum() == pytest.approx(s2**2, rel=0.03)
    assert abs((k * u * v).sum()) < 1e-3


def test_bank_is_seeded():
    a = KernelBank.build(20, 3, seed=1)
    b = KernelBank.build(20, 3, seed=1)
    c = KernelBank.build(20, 3, seed=2)
    assert torch.equal(a.kernels, b.kernels)
    assert not torch.equal(a.kernels, c.kernels)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        motion_kernels([12], np.random.default_rng(0), canvas=27)


def test_load_or_build_caches_atomically(tmp_path):
    cfg = DegradeConfig(motion_kernels=10, gaussian_kernels=2, bank_seed=3, cache_dir=str(tmp_path))
    a = KernelBank.load_or_build(cfg)
    files = list((tmp_path / "kernels").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temp file left behind
    raw = torch.load(files[0], weights_only=True)
    assert torch.equal(raw["kernels"], a.kernels)
    b = KernelBank.load_or_build(cfg)
    assert torch.equal(a.kernels, b.kernels) and a.kinds == b.kinds and torch.equal(a.sizes, b.sizes)
    # a corrupt cache is rebuilt, not trusted
    files[0].write_bytes(b"not a torch file")
    c = KernelBank.load_or_build(cfg)
    assert torch.equal(a.kernels, c.kernels)
    # another seed is another cache entry
    KernelBank.load_or_build(DegradeConfig(motion_kernels=10, gaussian_kernels=2, bank_seed=4, cache_dir=str(tmp_path)))
    assert len(list((tmp_path / "kernels").iterdir())) == 2


def test_load_names_the_file(tmp_path):
    p = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="bad.pt"):
        KernelBank.load(p)


def test_paper_compatible_mode_leaves_motion_kernels_off_centre():
    """'paper-compatible' places the whole path by its bounding box (DeblurGAN): with the whole path
    exposed the box is centred up to that code's rounding (ceil and +1: 0.5 to 2 px towards higher
    indices), the mass is not; the default centres the mass."""
    sizes = [27, 21, 15] * 8
    kw = dict(exposure_range=(1.0, 1.0))
    paper = motion_kernels(sizes, np.random.default_rng(3), mode="paper-compatible", **kw)
    centred = motion_kernels(sizes, np.random.default_rng(3), **kw)
    c = (27 - 1) / 2
    off = np.hypot(*(kernel_centroid(paper) - c).T)
    assert np.abs(kernel_centroid(centred) - c).max() < 1e-6
    assert off.max() > 2.0 and (off > 1.0).sum() >= 6
    for k in paper:
        ys, xs = np.nonzero(k > 0)
        assert -0.5 <= (ys.min() + ys.max()) / 2 - c <= 2.5 and -0.5 <= (xs.min() + xs.max()) / 2 - c <= 2.5
    assert np.allclose(paper.sum((1, 2)), 1.0)
    with pytest.raises(ValueError, match="kernel mode"):
        motion_kernels([13], np.random.default_rng(0), mode="shifted")


def test_paper_compatible_bank_stays_in_support_and_is_cached_apart(tmp_path):
    bank = KernelBank.build(16, 4, seed=5, mode="paper-compatible")
    _assert_inside_supports(bank)
    k = bank.kernels.numpy()
    # Gaussians stay centred in both modes (SRMD's kernels are)
    assert np.abs(kernel_centroid(k[16:].astype(np.float64)) - (bank.canvas - 1) / 2).max() < 1e-3
    default_key = KernelBank.cache_key(16, 4, [13, 27], 5)
    assert default_key == KernelBank.cache_key(16, 4, [13, 27], 5, "centred")
    assert default_key != KernelBank.cache_key(16, 4, [13, 27], 5, "paper-compatible")
    cfg = DegradeConfig(
        motion_kernels=16, gaussian_kernels=4, kernel_mode="paper-compatible", bank_seed=5, cache_dir=str(tmp_path)
    )
    again = KernelBank.load_or_build(cfg)
    assert torch.equal(again.kernels, bank.kernels) and again.mode == "paper-compatible"
    bank.save(tmp_path / "b.pt")
    assert KernelBank.load(tmp_path / "b.pt").mode == "paper-compatible"
