"""The paper space's identity features are real by default: MobileFaceNet's weights ship inside the
package, ``identity.weights`` takes ``packaged``, a path or a URI, and a restored model never claims
a random backbone when its weights come from the checkpoint."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

from nasfe.config import ConfigError, load_space
from nasfe.identity.backbones import build_backbone, resolve_weights
from nasfe.identity.packaged import MOBILEFACENET

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "models" / "mobilefacenet"


def test_the_package_ships_mobilefacenet_with_its_licence():
    here = MOBILEFACENET.parent
    assert MOBILEFACENET.is_file() and (here / "LICENSE").is_file() and (here / "NOTICE").is_file()
    assert "Apache License" in (here / "LICENSE").read_text()
    state = torch.load(MOBILEFACENET, map_location="cpu", weights_only=True)
    assert len(state) == 307
    if (SHARED / "mobilefacenet.pt").is_file():  # the same bytes as the source
        digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
        assert digest(MOBILEFACENET) == digest(SHARED / "mobilefacenet.pt")


def test_paper_and_its_rehearsal_default_to_the_pretrained_mobilefacenet(caplog):
    for name in ("paper",):
        space = load_space(name)
        assert space.identity.backbone == "mobilefacenet" and space.identity.weights == "packaged"
        with caplog.at_level(logging.WARNING):
            bb = build_backbone(space.identity)
        assert bb.pretrained and "no weights" not in caplog.text


# every shipped space trains with L_per and L_iden on real face features, except the paper's BN
# row, trained with L_mse only by design (Table 6)
L2_ONLY_BY_DESIGN = {"bn"}


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_no_shipped_space_trains_l2_only(path):
    import yaml

    from nasfe.engine.network import build_network

    if "phase" in yaml.safe_load(path.read_text()):  # a sweep file, not a space
        pytest.skip("sweep definition")
    space = load_space(path)
    if space.name in L2_ONLY_BY_DESIGN:
        assert space.loss.lambda_per == 0 and space.loss.lambda_iden == 0 and not space.model.use_identity
        return
    w = resolve_weights(space.identity.weights)
    assert w is not None, f"{space.name}: identity.weights is empty: L_per and L_iden would be off"
    assert Path(w).is_file(), f"{space.name}: identity.weights {w} is not a file"
    _, loss = build_network(space)  # the loss the engine trains with (a random backbone switches terms off)
    assert loss.lambda_per > 0 and loss.lambda_iden > 0, f"{space.name} trains L2 only"


def test_the_test_bench_space_trains_on_real_identity_features_at_its_own_size():
    """tiny.yaml's faces are 48x40: the packaged MobileFaceNet still tells people apart there
    (real CelebA faces resized to 48x40, embedded as the identity loss embeds them)."""
    import numpy as np

    from tests.test_identity import load_celeba_id

    space = load_space("tiny")
    bb = build_backbone(space.identity)
    assert bb.pretrained and space.loss.lambda_iden > 0 and space.loss.iden_samples >= 1
    x, labels = load_celeba_id(n_ids=10, per_id=3)
    small = torch.nn.functional.interpolate(
        x, size=(space.data.height, space.data.width), mode="bilinear", align_corners=False, antialias=True
    )
    with torch.no_grad():
        e = torch.nn.functional.normalize(bb.embedding(small), dim=1)
    sim = e @ e.T
    lab = np.array(labels)
    same = torch.from_numpy((lab[:, None] == lab[None]) & ~np.eye(len(lab), dtype=bool))
    diff = torch.from_numpy(lab[:, None] != lab[None])
    assert sim[same].mean() > sim[diff].mean() + 0.25
    sim.fill_diagonal_(-2.0)
    nearest_same = (lab[sim.argmax(1).numpy()] == lab).mean()
    assert nearest_same >= 0.8  # chance: 2 of 29


def test_real_weights_with_another_width_are_refused_before_any_build():
    for space, width in (("tiny", 0.25), ("paper", 0.5)):
        with pytest.raises(ConfigError, match="identity.width = .*full width"):
            load_space(space, overrides={"identity.width": width})
    # a narrower random backbone stays possible
    assert load_space("tiny", overrides={"identity.width": 0.25, "identity.weights": None}).identity.width == 0.25


def test_packaged_weights_need_the_mobilefacenet_backbone():
    with pytest.raises(ConfigError, match="packaged MobileFaceNet"):
        load_space("paper", overrides={"identity.backbone": "vggface"})


def test_weights_given_as_a_uri_are_fetched_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NASFE_DATA_CACHE", str(tmp_path / "cache"))
    uri = MOBILEFACENET.as_uri()  # file:///...: the same code path as s3://bucket/key
    local = Path(resolve_weights(uri))
    assert local.is_file() and str(local).startswith(str(tmp_path / "cache"))
    assert local.read_bytes() == MOBILEFACENET.read_bytes()
    assert Path(resolve_weights(uri)) == local
    space = load_space("paper", overrides={"identity.weights": uri})
    assert build_backbone(space.identity).pretrained
    from nasfe.errors import DataFetchError

    with pytest.raises(DataFetchError, match="no such file"):
        resolve_weights((tmp_path / "missing.pt").as_uri())


def test_vggface_pool3_stays_available_when_its_weights_are_given(tmp_path):
    from nasfe.identity.vggface import VGGFacePool3

    net = VGGFacePool3(1.0)
    path = tmp_path / "vgg.pt"
    torch.save(net.state_dict(), path)
    space = load_space("paper", overrides={"identity.backbone": "vggface", "identity.weights": str(path)})
    bb = build_backbone(space.identity)
    assert bb.pretrained and bb.feature_channels == 256


def test_a_model_whose_backbone_file_is_missing_loads_without_the_random_init_warning(tmp_path, caplog):
    from nasfe.evaluate.model_io import build_and_load
    from nasfe.engine.network import build_network

    space = load_space(
        "tiny",
        overrides={
            "identity.backbone": "mobilefacenet",
            "identity.weights": str(tmp_path / "not-here.pt"),
            "model.fusion": "res2",
        },
    )
    ok = load_space(
        "tiny", overrides={"identity.backbone": "mobilefacenet", "identity.weights": "packaged", "model.fusion": "res2"}
    )
    model, _ = build_network(ok, with_loss=False)
    with caplog.at_level(logging.INFO):
        loaded = build_and_load(space, None, model.state_dict(), "model.pt")
    assert "no weights" not in caplog.text and "seeded random init" not in caplog.text
    assert loaded.refs_usable
