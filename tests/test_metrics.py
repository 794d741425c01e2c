"""PSNR / SSIM conventions against closed forms and an independent NumPy/SciPy SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from nasfe.evaluate.metrics import MetricAccumulator, psnr, rgb_to_y, ssim


def _images(n=2, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def _ssim_reference(a: np.ndarray, b: np.ndarray, data_range=1.0) -> float:
    """Wang et al. SSIM of one HxW channel: Gaussian sigma 1.5 truncated to radius 5 (11 taps),
    interior ('valid') part of the map only."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    f = lambda t: ndimage.gaussian_filter(t, sigma=1.5, truncate=5 / 1.5, mode="reflect")
    mu_a, mu_b = f(a), f(b)
    var_a = f(a * a) - mu_a**2
    var_b = f(b * b) - mu_b**2
    cov = f(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(m[5:-5, 5:-5].mean())


def test_psnr_constant_offset_is_closed_form():
    a = torch.full((3, 3, 16, 16), 0.5)
    b = a.clone()
    b[0] -= 0.25
    b[1] += 0.125
    b[2] -= 0.0625
    got = psnr(a, b)
    want = torch.tensor([-10 * math.log10(d * d) for d in (0.25, 0.125, 0.0625)], dtype=torch.float64)
    assert got.shape == (3,)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_psnr_matches_mse_definition_and_data_range():
    a, b = _images(seed=1), _images(seed=2)
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1)
    assert torch.allclose(psnr(a, b), 10 * torch.log10(1 / mse))
    # Same images in [0, 255] with data_range=255 give the same PSNR.
    assert torch.allclose(psnr(a * 255, b * 255, data_range=255.0), psnr(a, b), atol=1e-9)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    a = _images()
    p = psnr(a, a.clone())
    assert torch.isinf(p).all() and (p > 0).all()
    assert torch.allclose(ssim(a, a.clone()), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_ssim_matches_independent_numpy_implementation():
    a = _images(n=2, h=30, w=26, seed=3)
    b = (a + 0.1 * _images(n=2, h=30, w=26, seed=4)).clamp(0, 1)
    got = ssim(a, b)
    for i in range(2):
        ref = np.mean([_ssim_reference(a[i, c].double().numpy(), b[i, c].double().numpy()) for c in range(3)])
        assert got[i].item() == pytest.approx(ref, abs=1e-10)


def test_ssim_y_channel_matches_reference_on_luma():
    a = _images(n=1, h=22, w=22, seed=5)
    b = (a * 0.8 + 0.05).clamp(0, 1)
    ad, bd = a.double(), b.double()
    ya = 16 / 255 + (65.481 * ad[0, 0] + 128.553 * ad[0, 1] + 24.966 * ad[0, 2]) / 255
    yb = 16 / 255 + (65.481 * bd[0, 0] + 128.553 * bd[0, 1] + 24.966 * bd[0, 2]) / 255
    assert ssim(a, b, y_channel=True).item() == pytest.approx(_ssim_reference(ya.numpy(), yb.numpy()), abs=1e-10)
    mse = ((ya - yb) ** 2).mean()
    assert psnr(a, b, y_channel=True).item() == pytest.approx(float(10 * torch.log10(1 / mse)), abs=1e-9)


def test_rgb_to_y_known_values():
    x = torch.zeros(1, 3, 1, 3)
    x[0, :, 0, 1] = 1.0  # white
    x[0, 0, 0, 2] = 1.0  # pure red
    y = rgb_to_y(x)[0, 0, 0]
    assert y[0].item() == pytest.approx(16 / 255)
    assert y[1].item() == pytest.approx(235 / 255, abs=1e-4)
    assert y[2].item() == pytest.approx((16 + 65.481) / 255)
    with pytest.raises(ValueError):
        rgb_to_y(torch.zeros(1, 1, 4, 4))


def test_symmetry_range_and_ordering():
    a = _images(n=3, h=32, w=32, seed=6)
    noise = _images(n=3, h=32, w=32, seed=7) - 0.5
    small, large = (a + 0.05 * noise).clamp(0, 1), (a + 0.4 * noise).clamp(0, 1)
    assert torch.allclose(ssim(a, small), ssim(small, a))
    assert torch.allclose(psnr(a, small), psnr(small, a))
    s_small, s_large = ssim(a, small), ssim(a, large)
    assert ((s_large > -1) & (s_large < s_small) & (s_small < 1)).all()
    assert (psnr(a, large) < psnr(a, small)).all()


def test_crop_border_only_looks_inside():
    a = _images(n=1, h=30, w=30, seed=8)
    b = a.clone()
    b[..., :4, :] = 1 - b[..., :4, :]  # damage a 4-pixel band at the top
    assert torch.isinf(psnr(a, b, crop_border=4)).all()
    assert ssim(a, b, crop_border=4).item() == pytest.approx(1.0, abs=1e-12)
    assert psnr(a, b).item() < 20


def test_chw_input_and_bad_inputs():
    a = _images(n=1)[0]
    assert psnr(a, a * 0.5).shape == (1,)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(_images(n=1), _images(n=2))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="crop_border"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), crop_border=4)


def test_accumulator_mean_std_count_per_test_set():
    acc = MetricAccumulator()
    acc.add("Test-B", {"psnr": torch.tensor([20.0, 22.0]), "ssim": [0.5, 0.7]}, names=["a", "b"])
    acc.add("Test-B", {"psnr": [24.0], "ssim": torch.tensor([0.9])})
    acc.add("Test-N", {"psnr": [30.0], "ssim": [0.95]})
    s = acc.summary()
    assert s["Test-B"]["psnr"]["mean"] == pytest.approx(22.0)
    assert s["Test-B"]["psnr"]["std"] == pytest.approx(np.std([20, 22, 24]))
    assert s["Test-B"]["ssim"]["count"] == 3 and s["Test-N"]["psnr"]["count"] == 1
    assert acc.values("Test-B", "ssim") == pytest.approx([0.5, 0.7, 0.9])
    assert [r["image"] for r in acc.rows() if r["test_set"] == "Test-B"] == ["a", "b", "2"]
    with pytest.raises(ValueError, match="different lengths"):
        acc.add("Test-B", {"psnr": [1.0, 2.0], "ssim": [0.1]})
    with pytest.raises(KeyError, match="Test-X"):
        acc.values("Test-X", "psnr")


def test_accumulator_update_and_inf_reporting():
    a = _images(n=2, h=16, w=16)
    acc = MetricAccumulator()
    acc.update("same", a, a.clone())
    acc.update("diff", (a * 0.9), a)
    s = acc.summary()
    assert s["same"]["psnr"]["n_inf"] == 2 and math.isinf(s["same"]["psnr"]["mean"])
    assert s["diff"]["psnr"]["n_inf"] == 0
    assert s["diff"]["psnr"]["mean"] == pytest.approx(psnr(a * 0.9, a).mean().item())
    other = MetricAccumulator()
    other.update("diff", a * 0.8, a)
    acc.merge(other)
    assert acc.count("diff") == 4


def test_ssim_conventions_measure_what_they_say():
    """convention='y' is SSIM of hand-made BT.601 luma, 'grey' of MATLAB rgb2gray (0.2989, 0.5870,
    0.1140, no offset), 'rgb' the default; float32 stays within 1e-6 of float64."""
    a = _images(n=2, h=26, w=24, seed=7)
    b = (0.7 * a + 0.3 * _images(n=2, h=26, w=24, seed=8)).clamp(0, 1)
    ad, bd = a.double().numpy(), b.double().numpy()
    luma = lambda t: 16 / 255 + (65.481 * t[:, 0] + 128.553 * t[:, 1] + 24.966 * t[:, 2]) / 255
    grey = lambda t: 0.2989 * t[:, 0] + 0.5870 * t[:, 1] + 0.1140 * t[:, 2]
    for conv, fn in (("y", luma), ("grey", grey)):
        ta, tb = fn(ad), fn(bd)
        got = ssim(a, b, convention=conv)
        for i in range(2):
            assert got[i].item() == pytest.approx(_ssim_reference(ta[i], tb[i]), abs=1e-10)
        mse = ((ta - tb) ** 2).reshape(2, -1).mean(1)
        assert psnr(a, b, convention=conv).numpy() == pytest.approx(10 * np.log10(1 / mse), abs=1e-9)
    assert torch.equal(ssim(a, b, convention="rgb"), ssim(a, b))
    assert torch.equal(ssim(a, b, convention="y"), ssim(a, b, y_channel=True))
    assert ssim(a, b, convention="grey").numpy() != pytest.approx(ssim(a, b, convention="y").numpy(), abs=1e-4)
    assert ssim(a, b, dtype=torch.float32).double().numpy() == pytest.approx(ssim(a, b).numpy(), abs=1e-6)
    with pytest.raises(ValueError, match="convention"):
        ssim(a, b, convention="lab")
    with pytest.raises(ValueError, match="contradicts"):
        ssim(a, b, y_channel=True, convention="grey")
