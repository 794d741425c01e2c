"""``nasfe compare``: side-by-side table, exact diff, cell PNGs, histogram, W&B table, errors."""

from __future__ import annotations

import csv
import io
import json
import sys
import types

import pytest

from nasfe.cli import main as cli_main
from nasfe.config import load_space
from nasfe.evaluate.compare import compare
from nasfe.genotype import BlockGene, Genotype

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def space():
    return load_space("tiny")


def genotype(space, cell, path):
    return Genotype(
        cells=[[BlockGene(list(i), list(o)) for i, o in cell]],
        path=path,
        operators=list(space.model.operators),
        blocks=space.model.blocks,
        space_hash=space.space_hash(),
        meta={"space": space.name},
    )


@pytest.fixture
def two(tmp_path, space):
    """Two hand-made tiny genotypes differing in one operator and in the network path."""
    a = genotype(space, [((0, 1), ("sep_conv_3x3", "res_op")), ((1, 2), ("fft_op", "deveil_op"))], [0, 0])
    b = genotype(space, [((0, 1), ("sep_conv_3x3", "res_op")), ((1, 2), ("fft_op", "skip_connect"))], [1, 0])
    pa = a.to_json(tmp_path / "alpha.json")
    run_b = tmp_path / "run_b"
    b.to_json(run_b / "genotype.json")
    (run_b / "search_summary.json").write_text(
        json.dumps({"final": {"val_psnr": 21.5, "val_ssim": 0.61}, "best_val_psnr": 21.75})
    )
    return pa, run_b


def test_diff_reports_exactly_the_differences(two, tmp_path):
    report = compare(list(two), out_dir=tmp_path / "out", measure=False)
    assert [e.label for e in report.entries] == ["alpha", "run_b"]
    assert report.diffs == [
        ("alpha", "run_b", ["cell 0 block 1 input 2: deveil_op -> skip_connect", "path: [0, 0] -> [1, 0]"])
    ]
    rows = dict(report.rows)
    metric_rows = {"search val PSNR (dB)", "search val SSIM", "search best val PSNR (dB)"}
    differing = sorted(k for k, (va, vb) in rows.items() if va != vb and k not in metric_rows)
    assert differing == ["cell 0 block 1 edge 1", "genotype id", "network path"]
    assert rows["cell 0 block 1 edge 1"] == ["deveil_op <- block 0", "skip_connect <- block 0"]
    assert rows["cell 0 block 0 edge 0"] == ["sep_conv_3x3 <- c_{k-2}"] * 2
    # metrics come from the run directory's summary; the bare file has none
    assert rows["search val PSNR (dB)"] == ["-", "21.500"] and rows["search best val PSNR (dB)"] == ["-", "21.750"]
    md = report.markdown
    assert "## Diff: alpha -> run_b" in md and "- path: [0, 0] -> [1, 0]" in md
    assert "| cell 0 block 1 edge 1 | deveil_op <- block 0 | skip_connect <- block 0 |" in md


def test_outputs_csv_pngs_and_histogram(two, tmp_path):
    out = tmp_path / "out"
    report = compare(list(two), out_dir=out, measure=False)
    table = list(csv.reader(io.StringIO((out / "compare.csv").read_text())))
    assert table[0] == ["attribute", "alpha", "run_b"]
    assert ["network path", "0 0", "1 0"] in table
    assert (out / "compare.md").read_text() == report.markdown
    for png in ("cells/alpha_cell0.png", "cells/run_b_cell0.png", "op_histogram.png"):
        assert (out / png).read_bytes()[:8] == PNG, png
    assert report.histogram == {
        "fft_op": [1, 1],
        "res_op": [1, 1],
        "sep_conv_3x3": [1, 1],
        "deveil_op": [1, 0],
        "skip_connect": [0, 1],
    }


def test_parameters_flops_latency_measured(two, space):
    report = compare([two[0]], space="tiny", latency_runs=1)
    cost = report.entries[0].cost
    assert cost["params"] > 1000 and cost["gflops"] > 0 and cost["latency_ms"] > 0
    rows = dict(report.rows)
    assert float(rows["parameters (M)"][0]) == pytest.approx(cost["params"] / 1e6, abs=1e-4)


def test_space_mismatch_leaves_costs_out(two):
    # the genotype was made for the tiny space; built against paper its hash does not match
    report = compare([two[0]], space="paper", latency_runs=0)
    entry = report.entries[0]
    assert entry.space is None and "space_hash" in entry.space_note and entry.cost == {}
    assert dict(report.rows)["GFLOPs"] == ["-"]


def test_logs_a_wandb_table_when_a_run_is_active(two, monkeypatch):
    logged = []

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    fake = types.SimpleNamespace(
        Table=Table, Image=lambda p: ("image", p), run=types.SimpleNamespace(log=logged.append)
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    report = compare(list(two), measure=False)
    assert report.wandb_logged
    table = logged[0]["compare/table"]
    assert table.columns == ["attribute", "alpha", "run_b"]
    assert ["network path", "0 0", "1 0"] in table.data
    fake.run = None
    assert not compare(list(two), measure=False).wandb_logged


def test_cli_prints_markdown_and_rejects_bad_input(two, tmp_path, capsys):
    assert cli_main(["compare", *map(str, two), "--no-measure"]) == 0
    assert "## Diff: alpha -> run_b" in capsys.readouterr().out
    assert cli_main(["compare", str(tmp_path / "missing"), "--no-measure"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such genotype file or run directory" in err[0]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert cli_main(["compare", str(broken), "--no-measure"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_metrics_are_labelled_with_their_phase(two, tmp_path):
    # run_b has both summaries; a third run only a retrain summary: no row mixes the phases
    pa, run_b = two
    (run_b / "retrain_summary.json").write_text(json.dumps({"final": {"val_psnr": 25.25, "val_ssim": 0.7}}))
    run_c = tmp_path / "run_c"
    Genotype.from_json(run_b / "genotype.json").to_json(run_c / "genotype.json")
    (run_c / "retrain_summary.json").write_text(json.dumps({"final": {"val_psnr": 24.0}}))
    rows = dict(compare([pa, run_b, run_c], measure=False).rows)
    assert "val PSNR (dB)" not in rows
    assert rows["search val PSNR (dB)"] == ["-", "21.500", "-"]
    assert rows["retrain val PSNR (dB)"] == ["-", "25.250", "24.000"]
    assert rows["retrain val SSIM"] == ["-", "0.7000", "-"]


def test_latency_median_and_spread_over_repeats_or_left_out(two, capsys, monkeypatch):
    from nasfe.evaluate import compare as cmp

    calls = []
    real = cmp.measure_latency

    def spy(models, runs, warmup=3):
        calls.append((len(models), runs, warmup))
        return real(models, runs, warmup)

    monkeypatch.setattr(cmp, "measure_latency", spy)
    report = compare([two[0], two[0]], space="tiny", latency_runs=4, warmup=2)
    assert calls == [(2, 4, 2)]  # both networks timed together, in turns, after their warm-up
    for e in report.entries:
        c = e.cost
        assert c["latency_runs"] == 4 and c["latency_warmup"] == 2
        assert 0 < c["latency_q1_ms"] <= c["latency_ms"] <= c["latency_q3_ms"]
    label = next(k for k in dict(report.rows) if k.startswith("latency"))
    assert label == "latency (ms, CPU, median [q1-q3] of 4)"
    assert all("[" in v for v in dict(report.rows)[label])
    # left out when asked: no latency row at all, and nothing timed
    calls.clear()
    assert cli_main(["compare", str(two[0]), "--space", "tiny", "--no-latency"]) == 0
    assert cli_main(["compare", str(two[0]), "--space", "tiny", "--latency-runs", "0"]) == 0
    out = capsys.readouterr().out
    assert calls == [] and "latency (ms" not in out and "GFLOPs" in out


def test_unsteady_latency_is_flagged(two, monkeypatch):
    from nasfe.evaluate import compare as cmp

    monkeypatch.setattr(
        cmp,
        "measure_latency",
        lambda models, runs, warmup=3: [
            {
                "latency_ms": 20.0,
                "latency_q1_ms": 19.0,
                "latency_q3_ms": 21.0,
                "latency_runs": runs,
                "latency_warmup": 3,
            },
            {
                "latency_ms": 40.0,
                "latency_q1_ms": 20.0,
                "latency_q3_ms": 380.0,
                "latency_runs": runs,
                "latency_warmup": 3,
            },
        ],
    )
    report = compare([two[0], two[0]], space="tiny", latency_runs=5)
    assert "**Warning**: latency unsteady for alpha-2" in report.markdown
