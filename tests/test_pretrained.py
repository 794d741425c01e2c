"""The packaged default model (nasfe/pretrained): under 1 MiB, with its NOTICE, the default of
``nasfe restore`` and ``nasfe evaluate``, and ``pack_model`` refusing what does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nasfe.cli import main as cli
from nasfe.data.faces import SyntheticFaces
from nasfe.evaluate.metrics import psnr
from nasfe.evaluate.model_io import load_trained
from nasfe.imageio import read_image, to_tensor
from nasfe.pretrained import DEFAULT_MODEL, MAX_BYTES, NOTICE, pack_model
from conftest import write_synthetic_faces


def test_packaged_file_is_small_and_loads_weights_only():
    assert DEFAULT_MODEL.is_file()
    assert DEFAULT_MODEL.stat().st_size <= MAX_BYTES
    payload = torch.load(DEFAULT_MODEL, map_location="cpu", weights_only=True)
    floats = [v for v in payload["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert all(torch.isfinite(v).all() for v in floats)
    model, space, _ = load_trained(DEFAULT_MODEL)
    assert space.data.height == 176 and space.data.width == 144  # trained at the paper's crop size
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_notice_names_celeba_and_its_licence():
    text = NOTICE.read_text()
    assert "CelebA" in text and "non-commercial" in text.lower()


def test_package_data_lists_the_model_and_notice(monkeypatch):
    import runpy
    from pathlib import Path

    import setuptools

    seen: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "setup.py"))
    assert "nasfe.pretrained" in seen["packages"]
    assert {"cpu_default.pt", "NOTICE"} <= set(seen["package_data"]["nasfe.pretrained"])


def _dark_face(tmp_path):
    """A clean synthetic 176x144 face and a darkened, noisy JPEG of it."""
    x = SyntheticFaces(identities=1, images_per_identity=1, height=176, width=144, seed=5)
    rec = x.records[0]
    clean = x.load(rec)
    rng = np.random.default_rng(0)
    dark = np.clip(clean.astype(np.float32) * 0.2 + rng.normal(0, 4, clean.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "photo.jpg"
    Image.fromarray(dark).save(path, quality=95)
    return clean, path


def test_restore_without_a_model_argument_restores_a_photo(tmp_path, capsys):
    clean, photo = _dark_face(tmp_path)
    out = tmp_path / "out"
    assert cli(["restore", "-i", str(photo), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "packaged model" in captured.err and "a BN network" in captured.err
    assert "network: BN" in captured.out  # the packaged model is the hand-made BN fusion, not a searched one
    restored = read_image(out / "photo.png")
    assert restored.shape == clean.shape
    x = to_tensor(clean)[None]
    gain = float(psnr(to_tensor(restored)[None], x)) - float(psnr(to_tensor(read_image(photo))[None], x))
    assert gain > 3.0  # the dark photo is brightened towards the clean face


def test_evaluate_defaults_to_the_packaged_model(tmp_path, capsys):
    from nasfe.data.testsets import build_testsets

    faces = write_synthetic_faces(tmp_path / "faces", identities=2, images_per_identity=2)
    build_testsets(tmp_path / "ts", faces=str(faces), sets=["Test-BNL"], images=2, progress=False)
    out = tmp_path / "ev"
    assert (
        cli(
            [
                "evaluate",
                "--testsets",
                str(tmp_path / "ts"),
                "--out",
                str(out),
                "--max-images",
                "4",
                "--baselines",
                "input",
                "--recognizer",
                "none",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert "packaged model" in capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["summary"]
    assert [r["method"] for r in rows] == ["input", "BN"] and rows[1]["images"] == 4
    assert json.loads((out / "results.json").read_text())["settings"]["model_kind"] == "BN"


def test_the_packaged_model_is_refused_with_space_or_genotype(tmp_path, capsys):
    assert cli(["restore", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--space", "tiny"]) == 2
    assert "packaged" in capsys.readouterr().err


def _tiny_run(run_dir, **overrides):
    """A tiny derived network retrained for one step with ``overrides``; returns its model.pt."""
    from nasfe.config import load_space
    from nasfe.engine.retrain import run_retrain
    from nasfe.genotype import derive_genotype
    from nasfe.model.registry import create_model
    from conftest import TINY_RETRAIN

    space = load_space("tiny", {**TINY_RETRAIN, **overrides})
    torch.manual_seed(0)
    genotype = derive_genotype(*(lambda n: (n.alphas, n.betas))(create_model(space)), space)
    run_retrain(space, genotype, run_dir)
    return run_dir / "model.pt"


def _same_output(a_pt, b_pt):
    full, _, _ = load_trained(a_pt)
    half, _, _ = load_trained(b_pt)
    y = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(full(y).restored, half(y).restored, atol=2e-2)


def test_pack_model_round_trip_and_limits(tmp_path):
    model_pt = _tiny_run(tmp_path / "plain", **{"model.use_identity": False})
    info = pack_model(model_pt, tmp_path / "packed.pt", note="test")
    assert info["bytes"] == (tmp_path / "packed.pt").stat().st_size <= MAX_BYTES
    assert _same_output(model_pt, tmp_path / "packed.pt")
    with pytest.raises(ValueError, match="limit"):
        pack_model(model_pt, tmp_path / "big.pt", note="x" * (MAX_BYTES + 1))
    assert not (tmp_path / "big.pt").exists()


def test_pack_leaves_the_face_backbone_out(tmp_path, capsys):
    from nasfe.pretrained import BACKBONE_PREFIX

    # a backbone without weights: the one rebuilt at load is not the one trained with
    model_pt = _tiny_run(tmp_path / "iden", **{"identity.backbone": "vggface", "identity.weights": None})
    pack_model(model_pt, tmp_path / "packed.pt")
    state = torch.load(tmp_path / "packed.pt", weights_only=True)["model"]
    full = torch.load(model_pt, weights_only=True)["model"]
    assert any(k.startswith(BACKBONE_PREFIX) for k in full)
    assert not any(k.startswith(BACKBONE_PREFIX) for k in state) and len(state) < len(full)
    assert _same_output(model_pt, tmp_path / "packed.pt")  # without references the backbone is unused
    model, _, _ = load_trained(tmp_path / "packed.pt")
    assert model.refs_usable is False  # no identity.weights: the rebuilt backbone is not the real one
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(photo)
    assert (
        cli(
            [
                "restore",
                str(tmp_path / "packed.pt"),
                "-i",
                str(photo),
                "-o",
                str(tmp_path / "o"),
                "--refs",
                str(photo),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 2
    )
    assert "backbone" in capsys.readouterr().err


def test_a_packed_model_rebuilds_the_packaged_face_backbone_and_takes_references(tmp_path):
    from nasfe.pretrained import BACKBONE_PREFIX

    model_pt = _tiny_run(tmp_path / "iden")  # tiny: the packaged MobileFaceNet
    pack_model(model_pt, tmp_path / "packed.pt")
    state = torch.load(tmp_path / "packed.pt", weights_only=True)["model"]
    assert not any(k.startswith(BACKBONE_PREFIX) for k in state)
    model, _, _ = load_trained(tmp_path / "packed.pt")
    assert model.refs_usable is True
    full, _, _ = load_trained(model_pt)
    y = torch.rand(1, 3, 48, 40)
    refs = torch.rand(1, 2, 3, 48, 40)
    with torch.no_grad():
        packed, trained = model(y, refs=refs).restored, full(y, refs=refs).restored
        # float16 weights move outputs by about 1e-4; a random backbone moves them by far more
        torch.testing.assert_close(packed, trained, atol=2e-3, rtol=0)
