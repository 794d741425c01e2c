"""Identity room: alignment, backbones (VGGFace, MobileFaceNet), AdaIN (Eq. 7) and I_iden."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from nasfe.config import ConfigError, IdentityConfig
from nasfe.identity.adain import IdentityInfo, adain, sample_ref_mask
from nasfe.identity.align import ARCFACE_TEMPLATE, CELEBA_LANDMARKS, align_faces, alignment_matrix
from nasfe.identity.backbones import MobileFaceNet, VGGFace, build_backbone
from nasfe.identity.mobilefacenet import MobileFaceNetNet, load_mobilefacenet_state
from nasfe.identity.vggface import VGG_POOL3_LAYOUT
from tests.conftest import shared_path

MFN = ("models", "mobilefacenet", "mobilefacenet.pt")
MFN_ONNX = ("models", "mobilefacenet", "MobileFaceNet.onnx")


def load_celeba_id(n_ids: int, per_id: int) -> tuple[torch.Tensor, list[str]]:
    """First ``n_ids`` identities of ../shared/data/celeba-id with >= per_id images, as (N,3,176,144)."""
    from PIL import Image

    root = shared_path("data", "celeba-id")
    imgs, labels = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(d.glob("*.jpg"))
        if len(files) < per_id:
            continue
        for f in files[:per_id]:
            imgs.append(np.asarray(Image.open(f).convert("RGB")))
            labels.append(d.name)
        if len(labels) == n_ids * per_id:
            break
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return x, labels


# ---------------------------------------------------------------- alignment


def test_alignment_is_a_similarity_that_fits_the_template():
    m = alignment_matrix(176, 144)
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])
    mapped = np.c_[CELEBA_LANDMARKS, np.ones(5)] @ m.T
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 3.5  # 5 points, 4 dof: small residual
    # A resized crop maps its (scaled) landmarks onto the same template.
    m2 = alignment_matrix(88, 72)
    scaled = (CELEBA_LANDMARKS + 0.5) * 0.5 - 0.5
    np.testing.assert_allclose(np.c_[scaled, np.ones(5)] @ m2.T, mapped, atol=1e-6)


def test_align_faces_matches_opencv_warp_and_is_differentiable():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.random((176, 144, 3)).astype(np.float32)
    ref = cv2.warpAffine(
        img,
        alignment_matrix(176, 144),
        (112, 112),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    x = torch.from_numpy(img).permute(2, 0, 1)[None].requires_grad_()
    out = align_faces(x)
    assert out.shape == (1, 3, 112, 112)
    np.testing.assert_allclose(out[0].detach().permute(1, 2, 0).numpy(), ref, atol=1e-3)
    out.sum().backward()
    assert x.grad.abs().sum() > 0


# ---------------------------------------------------------------- VGGFace


def _fake_vgg_face_dag(width_ok: bool = True) -> dict[str, torch.Tensor]:
    """A state dict with vgg_face_dag's key names; pool3 shapes real, later layers tiny stand-ins."""
    g = torch.Generator().manual_seed(1)
    sd, cin = {}, 3
    for name, c in VGG_POOL3_LAYOUT:
        if name == "pool":
            continue
        sd[f"{name}.weight"] = torch.randn(c, cin, 3, 3, generator=g) * 0.05
        sd[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        cin = c
    for name in ("conv4_1", "conv5_3", "fc6", "fc7", "fc8"):  # ignored by the pool3 loader
        sd[f"{name}.weight"] = torch.zeros(2, 2)
        sd[f"{name}.bias"] = torch.zeros(2)
    return sd


def test_vggface_loads_dag_state_dict_by_name_and_normalises(tmp_path):
    sd = _fake_vgg_face_dag()
    path = tmp_path / "vgg_face_dag.pth"
    torch.save(sd, path)
    net = VGGFace(str(path))
    assert torch.equal(net.net.conv2_1.weight, sd["conv2_1.weight"])
    x = torch.rand(2, 3, 40, 32)
    # Independent computation: 0-255 RGB minus the VGGFace mean, conv+ReLU, 2x2 max pools.
    h = x * 255 - torch.tensor([129.186, 104.762, 93.594]).view(1, 3, 1, 1)
    for name, _ in VGG_POOL3_LAYOUT:
        h = (
            nn.functional.max_pool2d(h, 2)
            if name == "pool"
            else torch.relu(nn.functional.conv2d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1))
        )
    f = net.features(x)
    assert f.shape == (2, 256, 5, 4) and net.feature_channels == 256
    torch.testing.assert_close(f, h, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(net.embedding(x), h.mean(dim=(2, 3)), rtol=1e-4, atol=1e-3)


def test_vggface_loader_names_file_and_bad_keys(tmp_path):
    sd = _fake_vgg_face_dag()
    del sd["conv3_2.bias"]
    sd["conv2_2.weight"] = torch.zeros(128, 64, 5, 5)
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        VGGFace(str(path))
    msg = str(err.value)
    assert "broken.pth" in msg and "conv3_2.bias" in msg and "conv2_2.weight" in msg and "extra.weight" in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VGGFace(str(tmp_path / "nope.pth"))
    torch.save(_fake_vgg_face_dag(), tmp_path / "ok.pth")
    with pytest.raises(ConfigError, match="width"):
        VGGFace(str(tmp_path / "ok.pth"), width=0.5)


def test_vggface_seeded_default_is_deterministic_warned_and_scaled(caplog):
    with caplog.at_level(logging.WARNING):
        a = build_backbone(IdentityConfig(backbone="vggface", width=0.25))
    assert "not meaningful" in caplog.text
    b = build_backbone(IdentityConfig(backbone="vggface", width=0.25))
    assert a.feature_channels == 64
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert a.features(torch.rand(1, 3, 176, 144)).shape == (1, 64, 22, 18)


def test_backbone_is_frozen_but_differentiable_wrt_input():
    bb = build_backbone(IdentityConfig(backbone="vggface", width=0.125))
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), bb)
    parent.train()
    assert parent[0].training and not bb.training
    assert not any(p.requires_grad for p in bb.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    bb.embedding(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())


def test_build_backbone_rejects_unknown_name_and_bad_width():
    with pytest.raises(ConfigError, match="identity.backbone"):
        build_backbone(IdentityConfig(backbone="resnet"))
    with pytest.raises(ConfigError, match="identity.width"):
        build_backbone(IdentityConfig(width=0.0))


# ---------------------------------------------------------------- MobileFaceNet


def test_mobilefacenet_layout_and_strict_loader_errors(tmp_path):
    net = MobileFaceNetNet(width=1.0)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.0e6, rel=0.05)
    sd = net.state_dict()
    del sd["features.7.conv.1.1.running_var"]
    sd["conv3.weight"] = torch.zeros(64, 512, 1, 1)
    path = tmp_path / "mfn_bad.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_mobilefacenet_state(MobileFaceNetNet(), path)
    msg = str(err.value)
    assert "mfn_bad.pt" in msg and "features.7.conv.1.1.running_var" in msg and "conv3.weight" in msg


def test_mobilefacenet_random_init_shapes():
    bb = MobileFaceNet(None, width=0.25)
    x = torch.rand(2, 3, 176, 144)
    assert bb.features(x).shape == (2, bb.feature_channels, 22, 18)
    assert bb.embedding(x).shape == (2, 128)


def test_mobilefacenet_weights_match_onnx_export():
    ort = pytest.importorskip("onnxruntime")
    bb = MobileFaceNet(str(shared_path(*MFN)))
    sess = ort.InferenceSession(str(shared_path(*MFN_ONNX)), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 176, 144, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = bb.embedding(x).numpy()
        inp = bb._normalise(bb.to_template(x)).numpy()
    theirs = np.concatenate([sess.run(None, {"input0": inp[i : i + 1]})[0] for i in range(2)])
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() > 0.9999
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_mobilefacenet_same_person_more_similar_than_different_people():
    bb = MobileFaceNet(str(shared_path(*MFN)))
    x, labels = load_celeba_id(n_ids=8, per_id=2)
    with torch.no_grad():
        e = nn.functional.normalize(bb.embedding(x), dim=1)
    sim = e @ e.T
    lab = np.array(labels)
    same = torch.from_numpy((lab[:, None] == lab[None]) & ~np.eye(len(lab), dtype=bool))
    diff = torch.from_numpy(lab[:, None] != lab[None])
    assert sim[same].mean() > sim[diff].mean() + 0.3
    assert sim[same].mean() > 0.4 and abs(float(sim[diff].mean())) < 0.2


# ---------------------------------------------------------------- AdaIN and I_iden


def test_adain_matches_eq7():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 3, 4, 5, 6, generator=g) * 3 + 1  # (N,k,C,h,w)
    y = torch.randn(2, 4, 5, 6, generator=g) * 0.5 - 2
    out = adain(ref, y, eps=1e-5)
    r, yy = ref.double().numpy(), y.double().numpy()
    for n in range(2):
        for i in range(3):
            for c in range(4):
                fc, fy = r[n, i, c], yy[n, c]
                expect = np.sqrt(fy.var() + 1e-5) * (fc - fc.mean()) / np.sqrt(fc.var() + 1e-5) + fy.mean()
                np.testing.assert_allclose(out[n, i, c].numpy(), expect, rtol=1e-4, atol=1e-5)
    # The re-styled features carry y's per-channel statistics.
    torch.testing.assert_close(out.mean((-2, -1)), y.mean((-2, -1)).unsqueeze(1).expand(2, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.std((-2, -1), unbiased=False),
        y.std((-2, -1), unbiased=False).unsqueeze(1).expand(2, 3, 4),
        atol=1e-3,
        rtol=1e-3,
    )
    # 4-D reference works the same as a single-reference 5-D one.
    torch.testing.assert_close(adain(ref[:, 0], y), out[:, 0])
    # bf16 features (autocast) keep their dtype; statistics are taken in float32.
    half = adain(ref.bfloat16(), y.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), adain(ref.bfloat16().float(), y.bfloat16().float()), atol=0.05, rtol=0.02)


def test_identity_info_is_mean_of_adain_and_handles_no_refs_and_masks():
    bb = build_backbone(IdentityConfig(backbone="vggface", width=0.125))
    info = IdentityInfo(bb)
    assert info.out_channels == bb.feature_channels == 32
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 3, 32, 24, generator=g)
    refs = torch.rand(2, 3, 3, 32, 24, generator=g)
    out = info(y, refs)
    assert out.shape == (2, 32, 4, 3)
    f_y = bb.features(y)
    manual = torch.stack([adain(bb.features(refs[:, i]), f_y) for i in range(3)]).mean(0)
    torch.testing.assert_close(out, manual, rtol=1e-4, atol=1e-4)
    assert info(y, None) is None  # restoring without references
    mask = torch.tensor([[True, False, True], [False, False, False]])
    masked = info(y, refs, mask)
    torch.testing.assert_close(
        masked[0], (adain(bb.features(refs[0, [0, 2]]), f_y[:1].expand(2, -1, -1, -1))).mean(0), rtol=1e-4, atol=1e-4
    )
    assert torch.count_nonzero(masked[1]) == 0
    # References of another size are resized to y's feature map.
    assert info(y, torch.rand(2, 2, 3, 64, 48, generator=g)).shape == (2, 32, 4, 3)
    with pytest.raises(ValueError, match="refs"):
        info(y, refs[0])


def test_sample_ref_mask_drops_whole_samples_reproducibly():
    m1 = sample_ref_mask(2000, 3, 0.25, torch.Generator().manual_seed(3))
    m2 = sample_ref_mask(2000, 3, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(m1, m2) and m1.shape == (2000, 3)
    assert torch.all(m1.all(1) | ~m1.any(1))  # all or nothing per sample
    assert abs((~m1[:, 0]).float().mean().item() - 0.25) < 0.04
    assert sample_ref_mask(5, 2, 0.0, torch.Generator()).all()
    assert not sample_ref_mask(5, 2, 1.0, torch.Generator()).any()


def test_traced_reference_features_use_the_traced_input_not_a_memo():
    """An export traces the network right after an eager call on the same refs; a memoised feature
    map must not become a constant of the traced graph."""
    backbone = build_backbone(IdentityConfig(backbone="vggface", weights=None, width=0.25)).eval()
    g = torch.Generator().manual_seed(0)
    refs, other = torch.rand(1, 2, 3, 32, 32, generator=g), torch.rand(1, 2, 3, 32, 32, generator=g)
    with torch.no_grad():
        backbone.reference_features(refs)  # eager call: fills the memo for this tensor
        traced = torch.jit.trace(lambda r: backbone.reference_features(r), (refs,), check_trace=False)
        assert torch.allclose(traced(other), backbone.features(other.flatten(0, 1)), atol=1e-5)


def test_mobilefacenet_folds_batchnorm_into_its_convolutions_when_frozen(monkeypatch):
    import nasfe.identity.mobilefacenet as mfn

    bb = MobileFaceNet(str(shared_path(*MFN)))
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)
    calls = []
    real_bn = nn.functional.batch_norm
    monkeypatch.setattr(nn.functional, "batch_norm", lambda *a, **k: calls.append(1) or real_bn(*a, **k))
    e = bb.embedding(x)
    (g,) = torch.autograd.grad(e.square().sum(), x)
    assert calls == []  # every BN folded: no batch-norm pass forward or backward
    monkeypatch.setattr(mfn, "conv_bn", lambda conv, bn, t: bn(conv(t)))  # the layers one by one
    x2 = x.detach().clone().requires_grad_()
    e2 = bb.embedding(x2)
    (g2,) = torch.autograd.grad(e2.square().sum(), x2)
    assert calls  # the unfolded path does run BN
    torch.testing.assert_close(e, e2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g, g2, rtol=1e-3, atol=1e-3 * g2.abs().max().item())
    net = MobileFaceNetNet(width=0.25).train()  # training mode: batch statistics, not folded
    calls.clear()
    net(torch.rand(2, 3, 112, 112))
    assert calls


def test_mobilefacenet_fold_bn_off_runs_its_batch_norms_with_the_same_result(monkeypatch):
    bb = MobileFaceNet(str(shared_path(*MFN)))
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    calls = []
    real_bn = nn.functional.batch_norm
    monkeypatch.setattr(nn.functional, "batch_norm", lambda *a, **k: calls.append(1) or real_bn(*a, **k))
    with torch.no_grad():
        folded = bb.embedding(x)
        assert bb.fold_bn is True and calls == []
        bb.fold_bn = False
        unfolded = bb.embedding(x)
    assert bb.fold_bn is False and calls
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-4)
