"""``nasfe evaluate`` on a tiny trained network and small test sets built from a face folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nasfe.cli import main as cli
from nasfe.data.testsets import TestSet, build_testsets
from nasfe.evaluate.evaluate_cmd import FaceIndex, build_gallery, open_face_index, pick_refs
from nasfe.evaluate.metrics import psnr, ssim
from conftest import shared_path, train_tiny_model, write_synthetic_faces


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model.pt, face folder, test-set folder): 4 identities x 4 faces of 48x40, Test-BNL of 3 faces."""
    base = tmp_path_factory.mktemp("evaluate")
    train_tiny_model(base / "run")
    faces = write_synthetic_faces(base / "faces", identities=4, images_per_identity=4)
    build_testsets(base / "ts", faces=str(faces), sets=["Test-BNL"], images=3, progress=False)
    return base / "run" / "model.pt", faces, base / "ts"


def _evaluate(setup, out, *extra):
    model_pt, faces, ts = setup
    return cli(
        [
            "evaluate",
            str(model_pt),
            "--testsets",
            str(ts),
            "--out",
            str(out),
            "--max-images",
            "6",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--quiet",
            *extra,
        ]
    )


def test_table_json_and_figures(setup, tmp_path):
    model_pt, faces, ts = setup
    out = tmp_path / "ev"
    assert (
        _evaluate(
            setup, out, "--faces", str(faces), "--recognizer", "none", "--y-channel", "--baseline-model", str(model_pt)
        )
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in data["summary"]]
    assert methods == ["input", "histeq", "classical", "BN", "NASFE w/o I_iden", "NASFE"]
    assert len(data["per_image"]) == 6 * len(methods)
    # the "input" row is the PSNR of the degraded files against the clean ones, measured independently
    test = TestSet(ts, "Test-BNL")
    files = {r["image"] for r in data["per_image"] if r["method"] == "input"}
    idx = [i for i, rec in enumerate(test.records) if rec["file"] in files]
    assert len(idx) == 6
    y = torch.stack([test[i]["y"] for i in idx])
    x = torch.stack([test[i]["x"] for i in idx])
    row = data["summary"][0]
    assert row["psnr"] == pytest.approx(float(psnr(y, x).mean()), abs=1e-9)
    assert all("psnr_y" in r and "ssim_y" in r for r in data["summary"])
    assert all(0 < r["ssim"] <= 1 for r in data["summary"])
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(methods)
    report = (out / "report.md").read_text()
    for png in ("montage_Test-BNL.png", "bars_Test-BNL.png"):
        assert png in report
        with Image.open(out / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    # BN row is the same network given the same references: identical numbers to NASFE's
    nasfe = [r for r in data["per_image"] if r["method"] == "NASFE"]
    bn = [r for r in data["per_image"] if r["method"] == "BN"]
    assert [r["psnr"] for r in nasfe] == [r["psnr"] for r in bn]


def test_references_matter_and_need_faces(setup, tmp_path):
    out = tmp_path / "refs"
    assert _evaluate(setup, out, "--faces", str(setup[1]), "--recognizer", "none", "--baselines") == 0
    data = json.loads((out / "results.json").read_text())
    with_refs = [r["psnr"] for r in data["per_image"] if r["method"] == "NASFE"]
    without = [r["psnr"] for r in data["per_image"] if r["method"] == "NASFE w/o I_iden"]
    assert len(with_refs) == len(without) == 6 and with_refs != without
    assert data["info"]["probes_without_refs"] == 0
    out2 = tmp_path / "norefs"
    assert _evaluate(setup, out2, "--recognizer", "none", "--baselines", "input") == 0
    data2 = json.loads((out2 / "results.json").read_text())
    assert [r["method"] for r in data2["summary"]] == ["input", "NASFE w/o I_iden"]
    # the same images without refs give the same numbers in both runs
    assert [r["psnr"] for r in data2["per_image"] if r["method"] == "NASFE w/o I_iden"] == without


def test_references_exclude_the_probe_and_the_gallery_image(setup):
    _, faces, ts = setup
    manifest = json.loads((ts / "manifest.json").read_text())
    clean = manifest["clean"]
    index = open_face_index(faces, 48, 40)
    images, ids, gallery_key, fallback = build_gallery(clean, ts, index)
    assert fallback == 0 and len(images) == len(set(ids)) == len({c["identity"] for c in clean})
    assert not set(gallery_key.values()) & {c["key"] for c in clean}
    for ci, c in enumerate(clean):
        refs = pick_refs(c, index, gallery_key, 5, seed=0, clean_index=ci)
        assert len(refs) == 5 and all(r.identity == c["identity"] for r in refs)
        assert not {r.key for r in refs} & {c["key"], gallery_key[c["identity"]]}
        assert [r.key for r in refs] == [r.key for r in pick_refs(c, index, gallery_key, 5, 0, ci)]
    assert pick_refs(clean[0], FaceIndex(index.faces, {}), {}, 3, 0, 0) == []


def test_recognition_with_the_shared_recogniser(setup, tmp_path):
    onnx_path = shared_path("models", "mobilefacenet", "MobileFaceNet.onnx")
    out = tmp_path / "rec"
    assert (
        _evaluate(setup, out, "--faces", str(setup[1]), "--recognizer", f"onnx:{onnx_path}", "--baselines", "input")
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    n_ids = len({c["identity"] for c in json.loads((setup[2] / "manifest.json").read_text())["clean"]})
    for r in data["summary"]:
        assert -1 <= r["identity_cos"] <= 1 and 0 <= r["identity_deg"] <= 180
        assert 0 <= r["top1"] <= r["top5"] <= 1
        assert r["gallery_identities"] == n_ids
    per = [r for r in data["per_image"] if r["method"] == "input"]
    assert all(
        np.isclose(np.degrees(np.arccos(np.clip(r["identity_cos"], -1, 1))), r["identity_deg"], atol=1e-3) for r in per
    )


def test_bad_arguments_are_one_line_errors(setup, tmp_path, capsys):
    model_pt, _, ts = setup
    assert cli(["evaluate", str(model_pt), "--testsets", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "--testsets" in capsys.readouterr().err
    assert (
        cli(["evaluate", str(model_pt), "--testsets", str(ts), "--out", str(tmp_path / "o"), "--baselines", "bm3d"])
        == 2
    )
    assert "bm3d" in capsys.readouterr().err
    assert (
        cli(
            [
                "evaluate",
                str(model_pt),
                "--testsets",
                str(ts),
                "--out",
                str(tmp_path / "o"),
                "--recognizer",
                "none",
                "--model",
                "nameonly",
            ]
        )
        == 2
    )
    assert "NAME=PATH" in capsys.readouterr().err
    assert (
        cli(
            [
                "evaluate",
                str(model_pt),
                "--testsets",
                str(ts),
                "--out",
                str(tmp_path / "o"),
                "--recognizer",
                "none",
                "--sets",
                "Test-X",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Test-X" in err and "Traceback" not in err


def test_ssim_convention_adds_its_column(setup, tmp_path):
    """--ssim-convention grey adds ssim_grey (MATLAB rgb2gray SSIM of the same images) beside the
    unchanged RGB ssim column, and records the choice in the settings."""
    out = tmp_path / "grey"
    assert _evaluate(setup, out, "--recognizer", "none", "--baselines", "input", "--ssim-convention", "grey") == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["ssim_convention"] == "grey"
    test = TestSet(setup[2], "Test-BNL")
    files = {r["image"] for r in data["per_image"] if r["method"] == "input"}
    idx = [i for i, rec in enumerate(test.records) if rec["file"] in files]
    y = torch.stack([test[i]["y"] for i in idx])
    x = torch.stack([test[i]["x"] for i in idx])
    row = data["summary"][0]
    assert row["ssim_grey"] == pytest.approx(float(ssim(y, x, convention="grey").mean()), abs=1e-9)
    assert row["ssim"] == pytest.approx(float(ssim(y, x).mean()), abs=1e-9)
    assert "ssim_grey" in (out / "results.md").read_text()
