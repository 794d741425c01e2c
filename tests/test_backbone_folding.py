"""The frozen MobileFaceNet runs with its batch norms folded into its convolutions: same results
(to float32 rounding), same weights on disk, and weights loaded after building are the ones run."""

from __future__ import annotations

import torch
from torch import nn

from nasfe.identity.backbones import MobileFaceNet
from nasfe.identity.packaged import MOBILEFACENET
from nasfe.identity.weights import read_state_dict


def _outputs(backbone: MobileFaceNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Feature map, embedding and the gradient of a loss through both w.r.t. the input image."""
    x = x.clone().requires_grad_(True)
    f, e = backbone.features(x), backbone.embedding(x)
    (f.square().mean() + e.square().mean()).backward()
    assert x.grad is not None
    return [f.detach(), e.detach(), x.grad]


def test_folded_batch_norms_change_features_embedding_and_input_gradient_only_by_float32_rounding():
    # Tolerance from the arithmetic itself: folding reorders float32 operations, so the folded
    # network may differ from the exact (float64) result by no more than a small multiple of the
    # float32 rounding error the unfolded network already carries (plus a floor of a few float32
    # ulps of the output's scale, for outputs the unfolded pass happens to round exactly).
    backbone = MobileFaceNet(str(MOBILEFACENET))
    x = torch.rand(2, 3, 112, 96, generator=torch.Generator().manual_seed(0))
    backbone.fold_bn = False
    unfolded = _outputs(backbone, x)
    backbone.fold_bn = True
    folded = _outputs(backbone, x)
    exact = _outputs(MobileFaceNet(str(MOBILEFACENET), fold_bn=False).double(), x.double())
    eps = torch.finfo(torch.float32).eps
    for name, u, f, ref in zip(("features", "embedding", "input gradient"), unfolded, folded, exact):
        scale = ref.abs().max().item()
        err_unfolded = (u.double() - ref).abs().max().item()
        err_folded = (f.double() - ref).abs().max().item()
        assert err_unfolded > 0, name
        assert err_folded <= 4 * err_unfolded + 8 * eps * scale, (name, err_folded, err_unfolded, scale)


def test_folded_network_has_no_batch_norms_and_the_state_dict_keeps_the_packaged_weights_keys():
    backbone = MobileFaceNet(str(MOBILEFACENET))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.folded.modules())
    assert list(backbone.folded.parameters()) == []
    packaged = read_state_dict(MOBILEFACENET, "MobileFaceNet")
    state = backbone.state_dict()
    assert sorted(state) == sorted(f"net.{k}" for k in packaged)
    for k, v in packaged.items():
        assert torch.equal(state[f"net.{k}"], v), k


def test_weights_loaded_from_a_weights_only_checkpoint_after_building_are_the_ones_run(tmp_path):
    trained = MobileFaceNet(str(MOBILEFACENET))
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": trained.state_dict()}, path)  # as a checkpoint holding the backbone stores it
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = trained.features(x), trained.embedding(x)

    fresh = MobileFaceNet(None, warn=False)  # seeded init, folded at build
    fresh.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"], strict=True)
    with torch.inference_mode():  # refolding under inference mode still gives weights autograd can use
        got = fresh.features(x), fresh.embedding(x)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
    xg = x.clone().requires_grad_(True)
    fresh.features(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
