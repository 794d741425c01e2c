"""The batched degradation: blur, camera stage, noise statistics, labels, seeding, reference cross-check."""

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nasfe.config import DegradeConfig
from nasfe.degrade.albu import NASFEDegrade
from nasfe.degrade.camera import ResponseCurves, demosaic, mosaic
from nasfe.degrade.kernels import KernelBank
from nasfe.degrade.pipeline import NOISE_MODELS, DegradeContext, DegradeParams, Degrader, blur, degrade, sample_params
from nasfe.degrade.reference import degrade_image


@pytest.fixture(scope="module")
def bank():
    return KernelBank.build(16, 4, seed=0)


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(4, 3, 8, 6, generator=g)
    return F.interpolate(base, size=(40, 32), mode="bilinear", align_corners=False).clamp(0, 1)


def test_blur_is_a_true_convolution_with_reflect_padding(x, bank):
    k = bank.kernels[[0, 5, 9, 17]]
    y = blur(x, k)
    p = k.shape[-1] // 2
    xp = F.pad(x, (p, p, p, p), mode="reflect")
    ref = torch.cat([F.conv2d(xp[i : i + 1], k[i].flip(0, 1).expand(3, 1, -1, -1), groups=3) for i in range(4)])
    assert torch.allclose(y, ref, atol=1e-5)


def test_mosaic_demosaic():
    flat = torch.full((1, 3, 6, 8), 0.3)
    flat[:, 1] = 0.6
    raw = mosaic(flat)
    assert raw[0, 0, 0, 0] == pytest.approx(0.3) and raw[0, 0, 0, 1] == pytest.approx(0.6)
    assert raw[0, 0, 1, 1] == pytest.approx(0.3)
    assert torch.allclose(demosaic(raw), flat, atol=1e-6)  # a flat colour survives, borders included


def test_response_curves_round_trip():
    for curves in (ResponseCurves.parametric(), ResponseCurves.linear()):
        v = torch.linspace(0, 1, 101).view(1, 1, 1, -1)
        ids = torch.tensor([curves.count - 1])
        assert torch.allclose(curves.to_brightness(curves.to_irradiance(v, ids), ids), v, atol=1e-4)
    p = ResponseCurves.parametric()
    mid = torch.full((1, 1, 1, 1), 0.5)
    # the camera curve brightens: irradiance of mid-grey is below 0.5, more so for steeper curves
    irr = [p.to_irradiance(mid, torch.tensor([i])).item() for i in (0, p.count - 1)]
    assert 0 < irr[1] < irr[0] < 0.5


def test_noise_has_the_stated_variance():
    n, h, w = 2, 64, 64
    level = 0.4
    x = torch.full((n, 3, h, w), level)
    curves = ResponseCurves.linear()
    p = DegradeParams.explicit([-1, -1], [1.0, 0.5], [0.1, 0.1], [0.05, 0.02], [0, 0])
    y = degrade(x, p, None, curves, torch.Generator().manual_seed(1))
    red = y[:, 0, 0::2, 0::2]  # red at red Bayer sites is the raw sample itself
    for i, (r, ss, sc) in enumerate([(1.0, 0.1, 0.05), (0.5, 0.1, 0.02)]):
        L = level * r
        assert red[i].mean().item() == pytest.approx(L, abs=0.01)
        assert red[i].std().item() == pytest.approx(np.sqrt(L * ss**2 + sc**2), rel=0.1)


def test_lowlight_darkens_through_the_curve(x):
    curves = ResponseCurves.parametric()
    p = DegradeParams.explicit([-1] * 4, [0.5, 0.1, 1.0, 0.3], [0.0] * 4, [0.0] * 4, [0, 5, 10, 20])
    y = degrade(x, p, None, curves)  # no noise: no generator needed
    m = y.mean((1, 2, 3))
    assert m[1] < m[0] < x.mean() and m[1] < m[3]
    assert (y >= 0).all() and (y <= 1).all()


def test_labels_and_records(bank):
    p = DegradeParams.explicit([3, -1, 18], [1.0, 0.2, 0.4], [0.0, 0.1, 0.0], [0.0, 0.05, 0.0], [-1, 2, 1], bank=bank)
    assert p.labels().tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 1]]
    recs = p.records()
    assert (
        recs[0]["kernel_kind"] == "motion" and recs[2]["kernel_kind"] == "gaussian" and recs[1]["kernel_kind"] == "none"
    )
    assert recs[1]["r"] == pytest.approx(0.2) and recs[1]["crf_id"] == 2 and recs[1]["c"] == [0, 1, 1]
    with pytest.raises(ValueError, match="r must"):
        DegradeParams.explicit([-1], [1.5], [0], [0], [-1])
    with pytest.raises(ValueError, match="same length"):
        DegradeParams.explicit([-1, 2], [1.0], [0], [0], [-1])


def test_sample_params_ranges_and_seed(bank):
    cfg = DegradeConfig(motion_kernels=16, gaussian_kernels=4)
    curves = ResponseCurves.parametric()
    a = sample_params(2000, cfg, bank, curves, torch.Generator().manual_seed(3))
    b = sample_params(2000, cfg, bank, curves, torch.Generator().manual_seed(3))
    assert torch.equal(a.kernel_ids, b.kernel_ids) and torch.equal(a.r, b.r) and torch.equal(a.sigma_s, b.sigma_s)
    c = a.labels()
    assert (c.sum(1) >= 1).all()  # every training sample is degraded
    assert 0.75 < c[:, 0].mean() < 0.86  # p_blur 0.8 plus the forced ones
    low = a.r[a.has_lowlight()]
    assert low.min() >= 0.05 and low.max() <= 0.5
    ss = a.sigma_s[a.has_noise()]
    sc = a.sigma_c[a.has_noise()]
    assert ss.min() >= 0.01 and ss.max() <= 0.16 and sc.min() >= 0.01 and sc.max() <= 0.06
    assert (a.crf_ids[~a.uses_camera()] == -1).all() and (a.crf_ids[a.uses_camera()] >= 0).all()
    assert set(a.kernel_ids[a.has_blur()].tolist()) == set(range(len(bank)))


def test_degrader_is_reproducible_and_device_independent(x, bank):
    cfg = DegradeConfig(motion_kernels=16, gaussian_kernels=4)
    d = Degrader(cfg, bank=bank)
    y1, p1 = d(x, torch.Generator().manual_seed(7))
    y2, p2 = d(x, torch.Generator().manual_seed(7))
    y3, _ = d(x, torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2) and p1.records() == p2.records()
    assert not torch.equal(y1, y3)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    if torch.cuda.is_available():
        yg, _ = d(x.cuda(), torch.Generator().manual_seed(7))
        assert torch.allclose(yg.cpu(), y1, atol=2e-4)


@pytest.mark.parametrize("size", [(40, 32), (39, 31)], ids=["even", "odd"])
def test_reference_matches_batched(x, bank, size):
    x = x[..., : size[0], : size[1]].contiguous()
    curves = ResponseCurves.parametric()
    p = DegradeParams.explicit(
        [2, -1, 17, 9], [0.3, 1.0, 1.0, 0.1], [0.1, 0.05, 0.0, 0.16], [0.05, 0.1, 0.0, 0.06], [3, 0, -1, 20]
    )
    eps = torch.randn(4, 1, *size, generator=torch.Generator().manual_seed(0))
    y = degrade(x, p, bank, curves, noise=eps)
    for i, rec in enumerate(p.records()):
        k = bank.kernels[rec["kernel_id"]].numpy() if rec["kernel_id"] >= 0 else None
        ref = degrade_image(
            x[i].permute(1, 2, 0).numpy(),
            k,
            rec["r"],
            rec["sigma_s"],
            rec["sigma_c"],
            curves,
            rec["crf_id"],
            eps=eps[i, 0].numpy(),
        )
        assert np.abs(ref - y[i].permute(1, 2, 0).numpy()).max() < 2e-3, f"sample {i}"


@pytest.mark.parametrize("size", [(40, 32), (39, 31)], ids=["even", "odd"])
def test_result_does_not_depend_on_chunking(x, bank, size):
    """CPU batches run a few images at a time; any chunk size gives the whole-batch result."""
    x = torch.cat([x, x.flip(-1)])[..., : size[0], : size[1]].contiguous()  # 8 samples
    curves = ResponseCurves.parametric()
    everything = DegradeParams.explicit([3] * 8, [0.2] * 8, [0.1] * 8, [0.05] * 8, [4] * 8)
    mixed = DegradeParams.explicit(
        [2, -1, 17, 9, -1, 0, 5, -1],
        [0.3, 1.0, 1.0, 0.1, 0.5, 1.0, 0.05, 1.0],
        [0.1, 0.05, 0.0, 0.16, 0.0, 0.0, 0.02, 0.0],
        [0.05, 0.1, 0.0, 0.06, 0.0, 0.0, 0.01, 0.0],
        [3, 0, -1, 20, 1, -1, 7, -1],
    )
    eps = torch.randn(8, 1, *size, generator=torch.Generator().manual_seed(3))
    for p in (everything, mixed):
        whole = degrade(x, p, bank, curves, noise=eps, chunk=8)
        assert whole.is_contiguous() and whole.min() >= 0 and whole.max() <= 1
        for chunk in (1, 3, None):
            assert torch.allclose(degrade(x, p, bank, curves, noise=eps, chunk=chunk), whole, atol=1e-6, rtol=0), chunk
    assert torch.equal(whole[7], x[7])  # no degradation at all: the image passes through


def test_params_subset_keeps_rows(bank):
    p = sample_params(
        6,
        DegradeConfig(motion_kernels=16, gaussian_kernels=4),
        bank,
        ResponseCurves.parametric(),
        torch.Generator().manual_seed(0),
    )
    assert p.subset(slice(2, 5)).records() == p.records()[2:5]
    assert p.subset([5, 0]).records() == [p.records()[5], p.records()[0]]


def test_degrade_rejects_bad_input(x, bank):
    p = DegradeParams.explicit([-1] * 4, [0.5] * 4, [0.1] * 4, [0.1] * 4, [0] * 4)
    with pytest.raises(ValueError, match="generator"):
        degrade(x, p, bank, ResponseCurves.linear())
    with pytest.raises(ValueError, match="shape"):
        degrade(x[:, :1], p, bank, ResponseCurves.linear())
    with pytest.raises(ValueError, match="crf_ids"):
        degrade(
            x, DegradeParams.explicit([-1] * 4, [0.5] * 4, [0] * 4, [0] * 4, [5] * 4), bank, ResponseCurves.linear()
        )


def test_albumentations_wrapper(bank):
    cfg = DegradeConfig(motion_kernels=16, gaussian_kernels=4)
    img = (np.random.default_rng(0).random((40, 32, 3)) * 255).astype(np.uint8)
    outs = []
    for _ in range(2):
        t = A.Compose([NASFEDegrade(cfg, bank=bank)], seed=11)
        outs.append(t(image=img)["image"])
    assert outs[0].dtype == np.uint8 and outs[0].shape == img.shape
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], img)
    assert t.transforms[0].last_params.labels().sum() >= 1


def test_subgrid_demosaic_matches_per_kernel_filtering_on_odd_sizes():
    """The one-conv sub-image demosaic equals filtering with each Malvar kernel and picking per site."""
    import cv2

    from nasfe.degrade.camera import DEMOSAIC_PLAN, MALVAR_KERNELS

    raw = torch.rand(2, 1, 13, 10, generator=torch.Generator().manual_seed(5))
    out = demosaic(raw)
    assert out.shape == (2, 3, 13, 10)
    for n in range(2):
        r = raw[n, 0].numpy()
        filt = [cv2.filter2D(r, -1, k.numpy(), borderType=cv2.BORDER_REFLECT_101) for k in MALVAR_KERNELS]
        for (py, px), plan in DEMOSAIC_PLAN.items():
            for c, k in enumerate(plan):
                ref = (r if k < 0 else filt[k])[py::2, px::2]
                assert np.allclose(out[n, c, py::2, px::2].numpy(), ref, atol=1e-5), (py, px, c)


def _closed_form(model: str, c: float, r: float, ss: float, sc: float, curves: ResponseCurves, crf: int) -> float:
    """The defining formula of each noise model for a flat grey ``c`` and eps = 1 everywhere (a flat
    raw mosaic demosaics to itself, so the result is the formula pushed through the curve)."""
    grid, inv = curves.numpy_curve(crf, inverse=True)
    _, fwd = curves.numpy_curve(crf)
    L0 = float(np.interp(c, grid, inv))  # the irradiance before r
    raw = {
        "after-r": r * L0 + np.sqrt(r * L0 * ss**2 + sc**2),
        "scene-variance": r * L0 + np.sqrt(L0 * ss**2 + sc**2),
        "before-r": r * min(1.0, L0 + np.sqrt(L0 * ss**2 + sc**2)),
        "display-r": (lambda L: L + np.sqrt(L * ss**2 + sc**2))(float(np.interp(r * c, grid, inv))),
    }[model]
    return float(np.interp(min(raw, 1.0), grid, fwd))


@pytest.mark.parametrize("model", NOISE_MODELS)
def test_noise_models_follow_their_definition(model):
    """Each reading on a flat grey image with a unit noise field: the batched pipeline, the
    per-image reference and the closed form agree; at r = 1 every reading is the default."""
    curves = ResponseCurves.parametric()
    cases = [(0.6, 0.2, 0.10, 0.05, 3), (0.4, 0.5, 0.15, 0.02, 17), (0.5, 1.0, 0.10, 0.05, 8)]
    x = torch.cat([torch.full((1, 3, 12, 10), c) for c, *_ in cases])
    p = DegradeParams.explicit(
        [-1] * 3,
        [r for _, r, *_ in cases],
        [s for *_, s, _, _ in cases],
        [c for *_, c, _ in cases],
        [f for *_, f in cases],
    )
    eps = torch.ones(3, 1, 12, 10)
    y = degrade(x, p, None, curves, noise=eps, noise_model=model)
    y_default = degrade(x, p, None, curves, noise=eps)
    for i, (c, r, ss, sc, crf) in enumerate(cases):
        want = _closed_form(model, c, r, ss, sc, curves, crf)
        assert y[i].min().item() == pytest.approx(want, abs=2e-3) and y[i].max().item() == pytest.approx(want, abs=2e-3)
        ref = degrade_image(
            x[i].permute(1, 2, 0).numpy(), None, r, ss, sc, curves, crf, eps=eps[i, 0].numpy(), noise_model=model
        )
        assert np.abs(ref - y[i].permute(1, 2, 0).numpy()).max() < 2e-3
    assert torch.equal(y[2], y_default[2])  # r = 1
    if model != "after-r":
        assert (y[:2] - y_default[:2]).abs().max() > 0.01


def test_before_r_noise_scales_with_r():
    """'before-r' is noise on the undarkened irradiance, scaled by r: on the raw samples (linear
    curve, red sites) its std is r times the r = 1 std; 'after-r' keeps sigma_c whole."""
    x = torch.full((2, 3, 64, 64), 0.5)
    p = DegradeParams.explicit([-1, -1], [1.0, 0.25], [0.1, 0.1], [0.05, 0.05], [0, 0])
    eps = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(2)).expand(2, -1, -1, -1).contiguous()
    red = {
        m: degrade(x, p, None, ResponseCurves.linear(), noise=eps, noise_model=m)[:, 0, 0::2, 0::2]
        for m in ("before-r", "after-r")
    }
    assert red["before-r"][1].std().item() == pytest.approx(0.25 * red["before-r"][0].std().item(), rel=0.02)
    assert red["after-r"][1].std().item() > 1.5 * red["before-r"][1].std().item()


def test_degrader_uses_the_configured_noise_model(x):
    cfg = DegradeConfig(motion_kernels=16, gaussian_kernels=4, p_lowlight=1.0, p_noise=1.0, noise_model="before-r")
    d = Degrader(cfg, bank=KernelBank.build(16, 4, seed=0), curves=ResponseCurves.parametric())
    y, params = d(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    d.sample(4, g)
    assert torch.equal(y, degrade(x, params, d.bank, d.curves, g, noise_model="before-r"))
    with pytest.raises(ValueError, match="noise_model"):
        degrade(x, params, d.bank, d.curves, g, noise_model="later")


def test_config_names_a_bad_noise_model_or_kernel_mode():
    from nasfe.config import ConfigError, load_space

    assert load_space("tiny", {"degrade.noise_model": "before-r"}).degrade.noise_model == "before-r"
    with pytest.raises(ConfigError, match="degrade.noise_model"):
        load_space("tiny", {"degrade.noise_model": "later"})
    with pytest.raises(ConfigError, match="degrade.kernel_mode"):
        load_space("tiny", {"degrade.kernel_mode": "shifted"})


def test_paper_compatible_blur_is_zero_padded_and_min_max_rescaled(x):
    """A paper-compatible bank blurs as DeblurGAN's blur_image: 'same' convolution with zeros
    outside the image, then the image rescaled to [0, 1] over all channels (so the kernel's scale
    does not matter); the per-image reference agrees."""
    from scipy.signal import convolve2d

    bank = KernelBank.build(8, 2, seed=1, mode="paper-compatible")
    k = bank.kernels[[0, 3, 9, 5]]
    y = blur(x, k, "paper-compatible")
    for i in range(4):
        z = np.stack([convolve2d(x[i, c].double().numpy(), k[i].double().numpy(), mode="same") for c in range(3)])
        z = (z - z.min()) / (z.max() - z.min())
        assert np.abs(y[i].double().numpy() - z).max() < 1e-5
        assert y[i].min().item() == pytest.approx(0, abs=1e-6) and y[i].max().item() == pytest.approx(1, abs=1e-6)
    assert torch.allclose(blur(x, 3 * k, "paper-compatible"), y, atol=1e-5)
    assert not torch.allclose(blur(x, k), y, atol=1e-2)  # the default stays reflect-padded, not rescaled
    p = DegradeParams.explicit(
        [0, 3, 9, 5], [1.0, 0.3, 1.0, 0.5], [0.0, 0.1, 0.05, 0.0], [0.0, 0.05, 0.1, 0.0], [-1, 2, 7, 4], bank=bank
    )
    eps = torch.randn(4, 1, 40, 32, generator=torch.Generator().manual_seed(5))
    curves = ResponseCurves.parametric()
    yd = degrade(x, p, bank, curves, noise=eps)
    assert torch.allclose(yd[0], y[0].clamp(0, 1), atol=1e-6)
    for i, rec in enumerate(p.records()):
        ref = degrade_image(
            x[i].permute(1, 2, 0).numpy(),
            bank.kernels[rec["kernel_id"]].numpy(),
            rec["r"],
            rec["sigma_s"],
            rec["sigma_c"],
            curves,
            rec["crf_id"],
            eps=eps[i, 0].numpy(),
            kernel_mode="paper-compatible",
        )
        assert np.abs(ref - yd[i].permute(1, 2, 0).numpy()).max() < 2e-3, f"sample {i}"


def test_stage_without_its_bank_curves_or_noise_names_what_is_missing():
    ctx = DegradeContext(bank=None, curves=None, noise=None)
    with pytest.raises(ValueError, match="kernel bank"):
        ctx.need_bank()
    with pytest.raises(ValueError, match="response curves"):
        ctx.need_curves()
    with pytest.raises(ValueError, match="noise field"):
        ctx.need_noise()
    with pytest.raises(ValueError, match="response curves"):
        degrade_image(np.zeros((4, 4, 3), np.float32), None, 0.5, 0.0, 0.0, None, 0)
