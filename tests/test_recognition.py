"""Face recognition for evaluation: Top-k protocol, cosine/angle, ONNX and torch recognisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasfe.evaluate.recognition import (
    OnnxRecognizer,
    TorchMobileFaceNetRecognizer,
    cosine_and_degrees,
    load_recognizer,
    recognition_topk,
)
from tests.conftest import shared_path
from tests.test_identity import MFN, MFN_ONNX, load_celeba_id


def _unit(*vecs):
    return torch.nn.functional.normalize(torch.tensor(vecs, dtype=torch.float32), dim=1)


def test_topk_ranks_identities_by_cosine():
    # Gallery: identities 0..5 along distinct directions in 6-d.
    gallery = torch.eye(6)
    gids = list(range(6))
    # Probe of id 0 closest to id 0; probe of id 1 closest to id 2, then id 1; probe of id 3 ranks 6th.
    probes = _unit([1, 0.1, 0, 0, 0, 0], [0, 0.5, 0.9, 0, 0, 0], [0.2, 0.3, 0.4, 0.0, 0.5, 0.6])
    res = recognition_topk(probes, [0, 1, 3], gallery, gids, ks=(1, 2, 5))
    assert res["top1"] == pytest.approx(1 / 3) and res["top2"] == pytest.approx(2 / 3)
    assert res["top5"] == pytest.approx(2 / 3)
    assert res["n_probes"] == 3 and res["n_identities"] == 6


def test_topk_max_vs_mean_over_gallery_images_and_ties():
    # Identity "a" has one matching and one opposite gallery image; "b" one moderately similar.
    gallery = _unit([1, 0], [-1, 0], [0.6, 0.8])
    probe = _unit([1, 0])
    assert recognition_topk(probe, ["a"], gallery, ["a", "a", "b"], ks=(1,), reduce="max")["top1"] == 1.0
    assert recognition_topk(probe, ["a"], gallery, ["a", "a", "b"], ks=(1,), reduce="mean")["top1"] == 0.0
    # A constant embedder ties every identity: ties count against the probe.
    const = torch.ones(4, 3)
    assert recognition_topk(const, [0, 1, 2, 3], const, [0, 1, 2, 3], ks=(1,))["top1"] == 0.0


def test_topk_rejects_probe_identity_without_gallery_and_bad_shapes():
    with pytest.raises(ValueError, match="no gallery image"):
        recognition_topk(torch.eye(2), [0, 9], torch.eye(2), [0, 1])
    with pytest.raises(ValueError, match="ids"):
        recognition_topk(torch.eye(2), [0], torch.eye(2), [0, 1])
    with pytest.raises(ValueError, match="embeddings"):
        recognition_topk(torch.eye(2), [0, 1], torch.eye(3), [0, 1, 2])


def test_cosine_and_degrees():
    a = _unit([1, 0], [0, 1])
    cos, deg = cosine_and_degrees(a, a)
    assert cos == pytest.approx(1.0) and deg == pytest.approx(0.0, abs=0.1)
    cos, deg = cosine_and_degrees(a, _unit([0, 1], [1, 1]))
    assert cos == pytest.approx((0 + math.sqrt(0.5)) / 2, rel=1e-5)
    assert deg == pytest.approx((90 + 45) / 2, rel=1e-4)


def test_recognizers_report_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxRecognizer(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TorchMobileFaceNetRecognizer(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="recogniser format"):
        load_recognizer(tmp_path / "model.bin")


def test_onnx_recognizer_clean_probes_top1_near_one():
    rec = load_recognizer(shared_path(*MFN_ONNX))
    x, labels = load_celeba_id(n_ids=20, per_id=2)
    e = rec.embed(x)
    assert e.shape == (40, 128)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(40))
    lab = np.array(labels)
    gal, probe = np.arange(0, 40, 2), np.arange(1, 40, 2)  # a different clean image as gallery
    res = recognition_topk(e[probe], lab[probe], e[gal], lab[gal])
    assert res["top1"] >= 0.9 and res["top5"] >= res["top1"]
    # Same-person pairs are far more similar than a shifted (different-person) pairing.
    same_cos, same_deg = cosine_and_degrees(e[probe], e[gal])
    diff_cos, diff_deg = cosine_and_degrees(e[probe], e[np.roll(gal, 1)])
    assert same_cos > diff_cos + 0.3 and same_deg < diff_deg


def test_torch_and_onnx_recognizers_agree():
    x, _ = load_celeba_id(n_ids=2, per_id=2)
    onnx_e = OnnxRecognizer(shared_path(*MFN_ONNX)).embed(x)
    torch_e = TorchMobileFaceNetRecognizer(shared_path(*MFN), batch_size=3).embed(x)
    assert (onnx_e * torch_e).sum(1).min() > 0.9999
