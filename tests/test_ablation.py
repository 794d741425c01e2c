"""``nasfe ablation``: two Table 6 rows (BN, BN-NAS) with a minimal budget, then a resumed rerun."""

from __future__ import annotations

import json

import pytest

from nasfe.cli import main as cli
from nasfe.config import load_space
from nasfe.evaluate.ablation import ROWS, row_space, schedule_from_args


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    args = [
        "ablation",
        "--out",
        str(out),
        "--rows",
        "bn",
        "bn_nas",
        "--search-epochs",
        "1",
        "--retrain-epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--test-images",
        "2",
        "--max-images",
        "4",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert cli(args) == 0
    return out, args


def test_rows_beside_the_paper(ablation):
    out, _ = ablation
    data = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in data["rows"]] == [
        "input (baseline)",
        "histeq (baseline)",
        "classical (baseline)",
        "BN",
        "BN-NAS",
    ]
    base = {r["row"].split()[0]: r for r in data["rows"][:3]}
    assert base["input"]["images"] == 4 and base["classical"]["bnl_psnr"] != base["input"]["bnl_psnr"]
    rows = data["rows"][3:]
    for r, spec in zip(rows, ROWS[:2]):
        assert (r["paper_bn_psnr"], r["paper_bnl_ssim"]) == (spec.paper_bn[0], spec.paper_bnl[1])
        assert 0 < r["bn_ssim"] <= 1 and 0 < r["bnl_ssim"] <= 1 and r["images"] == 4
    assert rows[0]["genotype_id"] is None and rows[1]["genotype_id"]  # only BN-NAS is searched
    assert rows[0]["params_M"] != rows[1]["params_M"]
    md = (out / "ablation.md").read_text()
    assert "19.72" in md and "BN-NAS" in md
    assert len((out / "ablation.csv").read_text().splitlines()) == 6
    # the built test sets come from the base space's test identities, which training never sees
    from nasfe.data.faces import open_faces
    from nasfe.data.splits import split_identities

    space = load_space("tiny")
    train_ids = {r.identity for r in split_identities(open_faces(space.data), space.data)["train"]}
    built = {p.name for p in (out / "test_faces").iterdir()}
    assert built and not built & train_ids


def test_rerun_reuses_finished_rows(ablation):
    out, args = ablation
    before = json.loads((out / "ablation.json").read_text())["rows"]
    stamp = (out / "rows" / "bn" / "model.pt").stat().st_mtime_ns
    assert cli(args) == 0
    after = json.loads((out / "ablation.json").read_text())["rows"]
    assert (out / "rows" / "bn" / "model.pt").stat().st_mtime_ns == stamp  # not retrained
    assert [r["bn_psnr"] for r in after] == [r["bn_psnr"] for r in before]


def test_row_spaces_follow_table_6():
    sched = schedule_from_args(2, 3, 4)
    spaces = {r.slug: row_space("tiny", r, sched) for r in ROWS}
    assert spaces["bn"].model.fusion == "res2" and not spaces["bn"].model.use_identity
    assert spaces["bn_nas"].model.fusion == "nas" and not spaces["bn_nas"].model.use_classifier
    assert spaces["cls"].model.use_classifier and not spaces["cls"].model.use_identity
    assert spaces["iden"].model.use_identity and spaces["iden"].loss.lambda_per == 0
    assert spaces["per"].loss.lambda_per == 0.04 and spaces["per"].loss.lambda_iden == 0
    assert spaces["final"].loss.lambda_iden == 0.003
    # the loss rows share the identity row's search (same model section)
    assert spaces["iden"].space_hash() == spaces["per"].space_hash() == spaces["final"].space_hash()
    assert spaces["final"].retrain.epochs == 3 and spaces["final"].search.steps_per_epoch == 4


def test_a_budget_is_required(tmp_path, capsys):
    assert cli(["ablation", "--out", str(tmp_path)]) == 2
    assert "budget" in capsys.readouterr().err
    assert cli(["ablation", "--out", str(tmp_path), "--budget-minutes", "1", "--retrain-epochs", "1"]) == 2
    assert cli(["ablation", "--out", str(tmp_path), "--budget-minutes", "1", "--space-budget"]) == 2
    assert cli(["ablation", "--out", str(tmp_path), "--space-budget", "--lambda-scale", "0"]) == 2
    assert cli(["ablation", "--out", str(tmp_path), "--space", "nope", "--budget-minutes", "1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_seeds_give_mean_and_spread(tmp_path):
    out = tmp_path / "seeds"
    args = [
        "ablation",
        "--out",
        str(out),
        "--rows",
        "bn",
        "--seeds",
        "0",
        "1",
        "--baselines",
        "input",
        "--search-epochs",
        "1",
        "--retrain-epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--test-images",
        "2",
        "--max-images",
        "4",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert cli(args) == 0
    data = json.loads((out / "ablation_seeds.json").read_text())
    assert data["finished_seeds"] == [0, 1] and [r["row"] for r in data["rows"]] == ["input (baseline)", "BN"]
    per = [data["per_seed"][s][1]["bn_psnr"] for s in ("0", "1")]
    bn = data["rows"][1]
    assert per[0] != per[1]  # the seed reaches training
    assert bn["bn_psnr"] == pytest.approx(sum(per) / 2) and bn["bn_psnr_std"] > 0
    assert data["rows"][0]["bn_psnr_std"] == 0  # the baseline is measured once, on the same images
    # both seeds were measured on one shared pair of test sets
    assert {json.loads((out / f"seed{s}" / "ablation.json").read_text())["testsets"] for s in (0, 1)} == {
        str(out / "testsets")
    }
    assert "bn_psnr_std" in (out / "ablation_seeds.md").read_text()
    # --only-finished tabulates what is there and trains nothing (bn_nas was never trained)
    i = args.index("bn")
    assert cli(args[: i + 1] + ["bn_nas", "--only-finished"] + args[i + 1 :]) == 0
    again = json.loads((out / "ablation_seeds.json").read_text())
    assert [r["row"] for r in again["rows"]] == ["input (baseline)", "BN"] and again["rows"][1]["bn_psnr"] == bn[
        "bn_psnr"
    ]
    assert not (out / "seed0" / "rows" / "bn_nas").exists() and not (out / "seed0" / "search").exists()


def test_aggregate_seeds():
    from nasfe.evaluate.ablation import aggregate_seeds

    row = lambda v: {
        "row": "BN",
        "bn_psnr": v,
        "bn_ssim": 0.5,
        "bnl_psnr": v - 1,
        "bnl_ssim": 0.4,  # noqa: E731
        "params_M": 0.1,
        "train_seconds": 10.0,
    }
    agg = aggregate_seeds({0: [row(20.0)], 1: [row(22.0)], 2: [row(21.0)]})[0]
    assert agg["seeds"] == [0, 1, 2] and agg["bn_psnr"] == pytest.approx(21.0)
    assert agg["bn_psnr_std"] == pytest.approx(1.0) and (agg["bn_psnr_min"], agg["bn_psnr_max"]) == (20.0, 22.0)
    assert agg["bn_ssim_std"] == 0 and agg["table"].startswith("21.00 ± 1.00")


def test_data_folder_must_exist(tmp_path, capsys):
    assert cli(["ablation", "--out", str(tmp_path), "--budget-minutes", "1", "--data", str(tmp_path / "none")]) == 2
    assert "--data" in capsys.readouterr().err


def test_lambda_scale_keeps_l2_only_rows_at_zero():
    from nasfe.evaluate.ablation import scale_lambdas

    rows = {r.slug: r for r in scale_lambdas(ROWS, 1e-3)}
    assert rows["final"].overrides["loss.lambda_per"] == pytest.approx(4e-5)
    assert rows["final"].overrides["loss.lambda_iden"] == pytest.approx(3e-6)
    assert rows["bn"].overrides["loss.lambda_per"] == 0 and rows["bn_nas"].overrides["loss.lambda_iden"] == 0
    assert ROWS[-1].overrides["loss.lambda_per"] == 0.04  # the table itself is untouched
