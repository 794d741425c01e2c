"""Tables, montage, bar chart and the Markdown report: files, formats, sizes, links."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nasfe.evaluate.report import (
    bar_chart,
    format_value,
    markdown_table,
    montage,
    montage_size,
    write_report,
    write_table,
)

ROWS = [
    {"method": "input", "psnr": 8.17123456789, "ssim": 0.2234567, "top1": 0.385, "n": 100},
    {"method": "histeq", "psnr": 12.2849, "ssim": 0.39, "top1": 0.41333333, "n": 100},
    {"method": "same", "psnr": math.inf, "ssim": 1.0, "top1": None, "n": 7},
]
COLS = ["method", "psnr", "ssim", "top1", "n"]


def test_format_rules():
    assert format_value("psnr", 21.756) == "21.76"
    assert format_value("val_PSNR", 9.0) == "9.00"
    assert format_value("ssim", 0.85049) == "0.850"
    assert format_value("top5", 0.8183) == "81.8"
    assert format_value("cls_acc", 0.5) == "50.0"
    assert format_value("psnr", math.inf) == "inf"
    assert format_value("psnr", None) == "-"
    assert format_value("method", "NASFE") == "NASFE"
    assert format_value("psnr", torch.tensor(20.0)) == "20.00"


def test_write_table_markdown_and_csv_round_trip(tmp_path):
    md, cv = write_table(ROWS, COLS, tmp_path / "t.md", tmp_path / "sub" / "t.csv")
    text = md.read_text()
    lines = text.strip().splitlines()
    assert lines[0] == "| method | psnr | ssim | top1 (%) | n |"
    assert lines[2] == "| input | 8.17 | 0.223 | 38.5 | 100 |"
    assert lines[3] == "| histeq | 12.28 | 0.390 | 41.3 | 100 |"
    assert lines[4] == "| same | inf | 1.000 | - | 7 |"
    with open(cv, newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == COLS
    for row, got in zip(ROWS, back):
        assert got["method"] == row["method"]
        assert float(got["psnr"]) == row["psnr"]  # full precision, inf included
        assert float(got["ssim"]) == row["ssim"]
        assert int(got["n"]) == row["n"]
        assert (got["top1"] == "") if row["top1"] is None else float(got["top1"]) == row["top1"]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_write_table_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no columns"):
        write_table(ROWS, [], tmp_path / "a.md", tmp_path / "a.csv")
    with pytest.raises(ValueError, match="duplicate"):
        write_table(ROWS, ["psnr", "psnr"], tmp_path / "a.md", tmp_path / "a.csv")
    with pytest.raises(TypeError, match="row 0"):
        write_table([[1, 2]], ["psnr"], tmp_path / "a.md", tmp_path / "a.csv")


def test_montage_size_and_pixels(tmp_path):
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(6, 3, 22, 18, generator=g)
    dark = clean * 0.2
    path = montage({"degraded": dark, "method": clean.flip(-1), "clean": clean}, tmp_path / "m.png", max_rows=3)
    im = Image.open(path)
    im.verify()
    im = np.asarray(Image.open(path).convert("RGB"))
    w, h = montage_size(3, 3, 22, 18)
    assert im.shape == (h, w, 3)
    # The first clean tile is copied unresampled (integer enlargement, nearest neighbour).
    from nasfe.evaluate import report

    s = max(1, report.MONTAGE_MIN_TILE_W // 18)
    x0 = report.MONTAGE_PAD + 2 * (s * 18 + report.MONTAGE_PAD)
    y0 = report.MONTAGE_TITLE_H
    tile = im[y0 : y0 + 22 * s : s, x0 : x0 + 18 * s : s]
    want = clean[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(tile.astype(int) - want.astype(int)).max() <= 1
    # The title band has dark text pixels on white.
    assert im[:y0].min() < 128 and im[0, 0].tolist() == [255, 255, 255]


def test_montage_rejects_mismatched_panels(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        montage({"a": torch.rand(2, 3, 16, 16), "b": torch.rand(2, 3, 16, 12)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="panel 'a'"):
        montage({"a": torch.rand(3, 16, 16)}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_bar_chart_and_report_links(tmp_path):
    results = {
        "input": {"psnr": 8.2, "ssim": 0.22},
        "classical": {"psnr": 15.1, "ssim": 0.41, "psnr_std": 1.2},
        "identical": {"psnr": math.inf, "ssim": 1.0},
    }
    chart = bar_chart(results, tmp_path / "figs" / "bars.png", "Test-BNL")
    assert Image.open(chart).format == "PNG" and Image.open(chart).size[0] >= 600
    with pytest.raises(ValueError, match="lacks"):
        bar_chart({"x": {"psnr": 1.0}}, tmp_path / "bad.png")
    md, _ = write_table(ROWS, COLS, tmp_path / "t.md", tmp_path / "t.csv")
    rep = write_report(
        tmp_path,
        {"Test-BNL": md, "inline": ([{"psnr": 1.234}], ["psnr"])},
        {"PSNR and SSIM": chart},
        notes="Synthetic faces.",
    )
    text = rep.read_text()
    assert rep == tmp_path / "report.md"
    assert "![PSNR and SSIM](figs/bars.png)" in text
    assert "| input | 8.17 |" in text and "| 1.23 |" in text and "Synthetic faces." in text
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_report(tmp_path, {}, {"x": tmp_path / "missing.png"})


def test_markdown_table_escapes_pipes():
    text = markdown_table([{"method": "a|b", "psnr": 1.0}], ["method", "psnr"])
    assert "a\\|b" in text
