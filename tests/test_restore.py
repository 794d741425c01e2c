"""``nasfe restore`` on a tiny trained network: odd sizes, gray, RGBA, corrupt files, tiles, refs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nasfe.cli import main as cli
from nasfe.engine.checkpoint import CheckpointError
from nasfe.evaluate.model_io import load_trained
from nasfe.evaluate.restore import output_names, restore_tiled, run_network
from nasfe.imageio import read_image
from nasfe.model.nasfe import NASFEOutput
from conftest import train_tiny_model


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    """A tiny derived network (genotype from the supernet's initial alphas) trained for one step."""
    return train_tiny_model(tmp_path_factory.mktemp("restore_run"))[2]


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def photos(tmp_path):
    """A folder of awkward inputs; returns (folder, {name: expected (h, w) or None for unreadable})."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    _save(d / "face.png", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    _save(d / "face.jpg", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))  # same stem as face.png
    gray = rng.integers(0, 256, (37, 51), dtype=np.uint8)
    _save(d / "gray.png", gray)
    _save(d / "gray_as_rgb.png", np.repeat(gray[..., None], 3, axis=2))
    _save(d / "rgba.png", rng.integers(0, 256, (21, 13, 4), dtype=np.uint8))  # also smaller than MIN_SIDE
    _save(d / "tall.png", rng.integers(0, 256, (150, 33, 3), dtype=np.uint8))  # tiled at --tile 64
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    expected = {
        "face_png.png": (48, 40),
        "face_jpg.png": (48, 40),
        "gray.png": (37, 51),
        "gray_as_rgb.png": (37, 51),
        "rgba.png": (21, 13),
        "tall.png": (150, 33),
    }
    return d, expected


def test_restore_folder_reports_bad_files_and_keeps_going(model_pt, photos, tmp_path, capsys):
    src, expected = photos
    out = tmp_path / "out"
    rc = cli(
        [
            "restore",
            str(model_pt),
            "-i",
            str(src),
            "-o",
            str(out),
            "--tile",
            "64",
            "--overlap",
            "8",
            "--batch-size",
            "3",
            "--compare",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1  # two files could not be read
    assert "broken.jpg" in captured.err and "empty.png" in captured.err
    assert "restored 6 image(s)" in captured.out and "2 unreadable" in captured.out
    assert "1 non-image file(s)" in captured.out
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == sorted(expected)
    for name, (h, w) in expected.items():
        img = read_image(out / name)
        assert img.shape == (h, w, 3), name
        side = read_image(out / "compare" / name)
        assert side.shape[0] == h and side.shape[1] > 2 * w
    # a grayscale file restores exactly like the same picture stored as RGB
    assert np.array_equal(read_image(out / "gray.png"), read_image(out / "gray_as_rgb.png"))


def test_batched_equals_one_by_one(model_pt, photos, tmp_path):
    src, _ = photos
    files = [str(src / "face.png"), str(src / "face.jpg")]
    assert (
        cli(["restore", str(model_pt), "-i", *files, "-o", str(tmp_path / "b2"), "--batch-size", "2", "--quiet"]) == 0
    )
    assert (
        cli(["restore", str(model_pt), "-i", *files, "-o", str(tmp_path / "b1"), "--batch-size", "1", "--quiet"]) == 0
    )
    for name in ("face_png.png", "face_jpg.png"):
        a = read_image(tmp_path / "b2" / name).astype(int)
        b = read_image(tmp_path / "b1" / name).astype(int)
        assert np.abs(a - b).max() <= 1  # float batching order may flip one rounding


def test_refs_change_the_result(model_pt, photos, tmp_path, capsys):
    src, _ = photos
    face = str(src / "face.png")
    assert cli(["restore", str(model_pt), "-i", face, "-o", str(tmp_path / "plain"), "--quiet"]) == 0
    assert (
        cli(
            [
                "restore",
                str(model_pt),
                "-i",
                face,
                "-o",
                str(tmp_path / "refs"),
                "--quiet",
                "--refs",
                str(src / "face.jpg"),
                str(src / "broken.jpg"),
            ]
        )
        == 0
    )
    assert "broken.jpg" in capsys.readouterr().err  # an unreadable reference is named, the others used
    a = read_image(tmp_path / "plain" / "face.png")
    b = read_image(tmp_path / "refs" / "face.png")
    assert not np.array_equal(a, b)
    assert (
        cli(
            [
                "restore",
                str(model_pt),
                "-i",
                face,
                "-o",
                str(tmp_path / "x"),
                "--quiet",
                "--refs",
                str(src / "broken.jpg"),
            ]
        )
        == 2
    )
    assert "none of 1 reference" in capsys.readouterr().err


class _Pointwise(torch.nn.Module):
    """A per-pixel 'network': tiling must give exactly the whole-image result."""

    def forward(self, y, refs=None):
        return NASFEOutput(0.5 * y + 0.25, torch.zeros(len(y), 3))


def test_tiles_blend_without_seams():
    y = torch.rand(2, 3, 130, 75, generator=torch.Generator().manual_seed(1))
    whole = run_network(_Pointwise(), y)
    tiled = restore_tiled(_Pointwise(), y, tile=40, overlap=10, batch_size=3)
    assert torch.allclose(tiled, whole, atol=1e-6)


def test_tiling_on_the_real_network_is_close_to_whole(model_pt):
    model, _, _ = load_trained(model_pt)
    y = torch.rand(1, 3, 96, 40, generator=torch.Generator().manual_seed(2))
    whole = run_network(model, y)
    tiled = restore_tiled(model, y, tile=64, overlap=16)
    assert tiled.shape == whole.shape
    # tiles see less context (CN prior, padding) but must agree closely away from the tile edges
    assert (tiled - whole).abs().mean() < 0.05


def test_output_names_never_collide():
    from pathlib import Path

    rels = [Path("a.jpg"), Path("a.png"), Path("b.png"), Path("sub/a.png"), Path("b.png")]
    names = output_names(rels)
    assert len(set(names)) == len(names)
    assert names[:2] == [Path("a_jpg.png"), Path("a_png.png")]
    assert names[3] == Path("sub/a.png")  # another folder: no clash
    assert {names[2], names[4]} == {Path("b_png.png"), Path("b_png_2.png")}  # the same name twice


def test_missing_input_and_bad_model_are_one_line_errors(model_pt, tmp_path, capsys):
    assert cli(["restore", str(model_pt), "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    # no model argument: the packaged model runs; an empty input folder is the one-line error
    assert cli(["restore", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "packaged model" in err and "no images found" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="search checkpoint|not a readable|no 'model'|neither"):
        bogus = tmp_path / "bogus.pt"
        torch.save({"a": 1}, bogus)
        load_trained(bogus)


def test_weights_space_genotype_route_equals_model_pt(model_pt, tmp_path):
    from nasfe.engine.checkpoint import load_checkpoint
    from nasfe.genotype import Genotype, GenotypeError

    payload = load_checkpoint(model_pt)
    weights = tmp_path / "weights.pt"
    torch.save(payload["model"], weights)  # a plain state dict, no space inside
    geno = tmp_path / "genotype.json"
    Genotype.from_dict(payload["genotype"]).to_json(geno)
    a, _, _ = load_trained(model_pt)
    b, space, g = load_trained(weights=weights, space="tiny", genotype=geno)
    y = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(run_network(a, y), run_network(b, y))
    with pytest.raises(GenotypeError, match="no genotype"):
        load_trained(weights=weights, space="tiny")
    with pytest.raises(CheckpointError, match="holds no search space"):
        load_trained(weights=weights, genotype=geno)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_trained(model_pt, space=str(_res2_space(tmp_path)))


def _res2_space(tmp_path):
    """The tiny space with the BN baseline's fusion: the trained weights cannot fit it."""
    import yaml

    from nasfe.config import SPACES_DIR

    data = yaml.safe_load((SPACES_DIR / "tiny.yaml").read_text())
    data["model"]["fusion"] = "res2"
    path = tmp_path / "res2.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
