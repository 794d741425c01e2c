"""nasfe.imageio: reading any image to HxWx3 uint8 RGB, bad files, atomic writes, tensor conversion."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nasfe import imageio
from nasfe.imageio import (
    ImageReadError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_image,
    to_tensor,
    to_uint8,
    write_png_atomic,
)


def _rgb(h=12, w=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip_is_exact(tmp_path):
    a = _rgb()
    write_png_atomic(tmp_path / "sub" / "a.png", a)
    assert np.array_equal(read_image(tmp_path / "sub" / "a.png"), a)


def test_grayscale_is_replicated(tmp_path):
    g = np.arange(60, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    for ch in range(3):
        assert np.array_equal(out[..., ch], g)


def test_rgba_is_composited_on_black(tmp_path):
    a = np.zeros((2, 3, 4), dtype=np.uint8)
    a[..., :3] = (200, 100, 50)
    a[0, :, 3] = 255
    a[1, 0, 3] = 0
    a[1, 1, 3] = 128
    a[1, 2, 3] = 64
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[1, 0].tolist() == [0, 0, 0]
    assert out[1, 1].tolist() == [round(200 * 128 / 255), round(100 * 128 / 255), round(50 * 128 / 255)]
    assert out[1, 2, 0] == round(200 * 64 / 255)


def test_gray_alpha_and_palette_with_transparency(tmp_path):
    la = np.stack([np.full((2, 2), 100, np.uint8), np.array([[255, 0], [255, 0]], np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out[:, 0].tolist() == [[100] * 3] * 2 and out[:, 1].tolist() == [[0] * 3] * 2
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 1
    p.save(tmp_path / "p.png", transparency=1)
    out = read_image(tmp_path / "p.png")
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [0, 0, 0]


def test_16bit_is_scaled(tmp_path):
    v = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / "w.png")  # 16-bit grayscale PNG
    out = read_image(tmp_path / "w.png")
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_jpeg_reads_close_to_source(tmp_path):
    a = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (16, 1, 3))
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == a.shape
    assert np.abs(out.astype(int) - a).mean() < 3


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing", "folder"])
def test_bad_files_raise_naming_the_file(tmp_path, kind):
    p = tmp_path / f"bad_{kind}.jpg"
    if kind == "truncated":
        Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg", quality=90)
        data = (tmp_path / "full.jpg").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "folder":
        p.mkdir()
    with pytest.raises(ImageReadError) as err:
        read_image(p)
    assert str(p) in str(err.value)
    assert err.value.path == str(p)
    assert isinstance(err.value, ValueError)


def test_to_tensor_and_back():
    a = _rgb(5, 7)
    t = to_tensor(a)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert torch.allclose(t[:, 2, 3] * 255, torch.tensor(a[2, 3], dtype=torch.float32))
    assert np.array_equal(to_uint8(t), a)


def test_to_uint8_rounds_and_clamps():
    t = torch.tensor([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 7.0]).view(1, 1, 6).expand(3, 1, 6)
    assert to_uint8(t)[0, :, 0].tolist() == [0, 0, 0, 1, 255, 255]


def test_conversion_shape_errors():
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(1, 3, 4, 4))


def test_atomic_writes(tmp_path):
    atomic_write_text(tmp_path / "a" / "t.txt", "héllo")
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_json(tmp_path / "j.json", {"b": [1, 2], "a": 0.5})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": 0.5, "b": [1, 2]}
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_interrupted_write_leaves_old_content_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"v": 1})

    def boom(src, dst):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(imageio.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(target, {"v": 2})
    with pytest.raises(KeyboardInterrupt):
        write_png_atomic(tmp_path / "new.png", _rgb())
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_write_png_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_png_atomic(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "x.png").exists()
