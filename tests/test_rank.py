"""``nasfe rank``: the genotype sampler, the supernet's scores, tau and percentile, and one tiny
study through Ray (Tune trials, each a Ray Train retraining) that writes rank.json."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from nasfe.config import load_space
from nasfe.genotype import Genotype, check_path, sample_genotypes, valid_paths

#: a shrunken tiny space: every phase a step or two
TINY = {
    "search.epochs": 2,
    "search.warmup_epochs": 1,
    "search.steps_per_epoch": 1,
    "search.batch_size": 4,
    "search.val_batches": 1,
    "search.checkpoint_every": 0,
    "search.selection": "strength",
    "search.selection_batches": 1,
    "retrain.epochs": 1,
    "retrain.steps_per_epoch": 2,
    "retrain.batch_size": 4,
    "retrain.val_batches": 1,
    "retrain.checkpoint_every": 0,
    "identity.refs": 1,
    "data.height": 32,
    "data.width": 32,
    "model.channels": 4,
    "model.encoder_channels": 4,
    "model.identity_channels": 4,
    "identity.backbone": "vggface",  # a quarter-width random backbone (real weights are full width)
    "identity.weights": None,
    "identity.width": 0.25,
}


def test_sampled_genotypes_are_valid_distinct_and_seeded():
    space = load_space("search_spaces/cpu.yaml")
    drawn = sample_genotypes(space, 20, seed=3)
    assert len({g.genotype_id() for g in drawn}) == 20
    for g in drawn:
        Genotype.from_dict(g.to_dict(), space=space)  # raises on anything invalid
        assert check_path(g.path, space.model.cells, space.model.levels) is None
        assert all("zero" not in gene.ops for cell in g.cells for gene in cell)
    assert [g.genotype_id() for g in sample_genotypes(space, 20, seed=3)] == [g.genotype_id() for g in drawn]
    assert [g.genotype_id() for g in sample_genotypes(space, 20, seed=4)] != [g.genotype_id() for g in drawn]
    # a larger draw starts with the smaller one (a study grows by adding random genotypes)
    assert [g.genotype_id() for g in sample_genotypes(space, 25, seed=3)[:20]] == [g.genotype_id() for g in drawn]


def test_sampler_reaches_every_path_and_operator():
    space = load_space("search_spaces/cpu.yaml")
    drawn = sample_genotypes(space, 200, seed=0)
    assert {tuple(g.path) for g in drawn} == {tuple(p) for p in valid_paths(2, 2)}
    ops = {o for g in drawn for cell in g.cells for gene in cell for o in gene.ops}
    assert ops == set(space.model.operators) - {"zero"}


def test_valid_paths_are_exactly_the_paths_check_path_accepts():
    import itertools

    for cells, levels in ((2, 2), (4, 3), (5, 4)):
        every = [list(p) for p in itertools.product(range(levels), repeat=cells)]
        assert sorted(valid_paths(cells, levels)) == sorted(p for p in every if check_path(p, cells, levels) is None)


def test_asking_for_more_genotypes_than_the_space_holds_is_refused():
    from nasfe.errors import GenotypeError

    space = load_space("tiny", {"model.blocks": 1, "model.operators": ["res_op", "zero"]})
    assert len(sample_genotypes(space, 2)) == 2  # one cell ([0, 1], res_op twice) x two paths
    with pytest.raises(GenotypeError, match="holds 2 distinct genotypes"):
        sample_genotypes(space, 3)


def test_supernet_scores_follow_alpha_beta_and_strength():
    from nasfe.engine.ranking import Supernet, supernet_scores

    space = load_space("search_spaces/cpu.yaml")
    m = space.model
    ops = list(m.operators)
    alphas = torch.zeros(1, 5, len(ops))
    alphas[..., ops.index("res_op")] = 3.0
    betas = torch.zeros(m.cells, m.levels, 3)
    op_strength = torch.zeros(1, 5, len(ops), dtype=torch.float64)
    op_strength[..., ops.index("sep_conv_3x3")] = 2.0
    trans = torch.zeros(m.cells, m.levels, 3, dtype=torch.float64)
    trans[1, 0, 2] = 10.0  # layer 1 at level 0 from level 1: the path [1, 0]
    net = Supernet("x", alphas, betas, op_strength=op_strength, transition_strength=trans)

    def geno(op, path):
        return Genotype.from_dict(
            {
                "schema_version": 1,
                "space_hash": space.space_hash(),
                "blocks": 2,
                "operators": ops,
                "path": path,
                "cells": [[{"inputs": [0, 1], "ops": [op, op]}, {"inputs": [0, 2], "ops": [op, op]}]],
            }
        )

    res, sep = (
        supernet_scores(geno("res_op", [0, 0]), net, space),
        supernet_scores(geno("sep_conv_3x3", [0, 0]), net, space),
    )
    assert res["alpha"] > sep["alpha"] and sep["strength"] == 8.0 and res["strength"] == 0.0
    p = torch.softmax(alphas[0, 0], -1)[ops.index("res_op")].item()
    # four edges of log p; the path: layer 0 has one source (log 1), layer 1 two (log 1/2 at beta = 0)
    assert res["alpha"] == pytest.approx(4 * math.log(p) + math.log(0.5))
    assert supernet_scores(geno("sep_conv_3x3", [1, 0]), net, space)["strength"] == 18.0


def test_kendall_tau_and_interval_on_known_rankings():
    from nasfe.evaluate.rank_report import kendall_tau

    same = kendall_tau([1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60])
    assert same["tau"] == pytest.approx(1.0) and same["ci_low"] == pytest.approx(1.0)
    reverse = kendall_tau([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
    assert reverse["tau"] == pytest.approx(-1.0)
    one_swap = kendall_tau([1, 2, 3, 4], [1, 2, 4, 3])  # 5 concordant pairs, 1 discordant of 6
    assert one_swap["tau"] == pytest.approx(4 / 6)
    assert one_swap["ci_low"] <= one_swap["tau"] <= one_swap["ci_high"]
    assert kendall_tau([1, 2], [2, 1])["tau"] is None and kendall_tau([1, 1, 1], [1, 2, 3])["tau"] is None


def test_budget_comparison_matches_rows_by_id_and_ranks_bn_at_each_budget():
    from nasfe.evaluate.rank_report import compare_budgets

    def row(i, val, bn, bnl):
        return {"id": i, "val_psnr": val, "bn_psnr": bn, "bnl_psnr": bnl}

    short = [
        row("hand_bn", 14.0, 16.0, 12.0),
        row("r0", 15.0, 18.0, 14.0),
        row("r1", 14.5, 17.0, 13.0),
        row("r2", 14.8, 17.5, 13.5),
        row("untrained", 16.0, 19.0, 15.0),
    ]
    # the long budget: BN best, the random rows in the short budget's order
    long_ = [
        row("hand_bn", 17.0, 21.0, 17.0),
        row("r0", 16.5, 20.0, 16.0),
        row("r1", 15.5, 19.0, 15.0),
        row("r2", 16.0, 19.5, 15.5),
    ]
    out = compare_budgets(short, long_)
    for m in ("val_psnr", "test_psnr"):
        assert sorted(out[m]["ids"]) == ["hand_bn", "r0", "r1", "r2"] and out[m]["n"] == 4
        assert out[m]["tau"] == pytest.approx(0.0)  # BN's 3 pairs swapped, the other 3 kept
        assert (out[m]["hand_rank_short"], out[m]["hand_rank_long"]) == (4, 1)
    same = compare_budgets(short, short[:4])
    assert same["val_psnr"]["tau"] == pytest.approx(1.0) and same["val_psnr"]["hand_rank_long"] == 4


def test_percentile_counts_randoms_below_and_ties_as_half():
    from nasfe.evaluate.rank_report import percentile_among, summarize

    assert percentile_among(5.0, [1.0, 2.0, 3.0, 4.0]) == 100.0
    assert percentile_among(0.0, [1.0, 2.0]) == 0.0
    assert percentile_among(2.0, [1.0, 2.0, 3.0, 4.0]) == 37.5
    rows = [{"kind": "random", "val_psnr": v, "score_alpha": v, "score_strength": -v} for v in (1.0, 2.0, 3.0, 4.0)]
    rows += [
        {"kind": "searched", "val_psnr": 4.5, "score_alpha": 9.0, "score_strength": 0.0},
        {"kind": "searched", "val_psnr": 2.5, "score_alpha": 0.0, "score_strength": 0.0},
        {"kind": "hand", "val_psnr": 9.0},
    ]
    s = summarize(rows)
    assert s["searched_percentile"] == pytest.approx((100.0 + 50.0) / 2)
    assert s["kendall_tau"]["alpha"] > 0.5 and s["kendall_tau"]["strength"] < 0
    assert s["kendall_tau_test_psnr"]["alpha"]["tau"] is None  # no test scores in these rows
    assert s["searched_percentile_by_column"]["bn_psnr"] is None
    assert s["groups"]["hand"]["val_psnr"]["mean"] == 9.0 and s["groups"]["best_random"]["val_psnr"] == 4.0


@pytest.mark.ray
def test_rank_study_on_ray_writes_rank_json_and_resumes(tmp_path, monkeypatch):
    """One random genotype, one searched, BN: three Tune trials of one Ray Train retraining each."""
    ray = pytest.importorskip("ray")
    from nasfe.distributed import rank_job
    from nasfe.engine.search import run_search

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    search = tmp_path / "search"
    run_search(load_space("tiny", TINY), search, device="cpu")
    argv = [
        "--space",
        "tiny",
        "--random",
        "1",
        "--searched",
        str(search),
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "r",
        "--test-images",
        "2",
        "--max-images",
        "4",
        "--wandb-mode",
        "offline",
        "--quiet",
    ]
    parser = argparse.ArgumentParser()
    rank_job.add_arguments(parser)
    args = parser.parse_args(argv + [a for kv in TINY.items() for a in ("--set", f"{kv[0]}={json.dumps(kv[1])}")])
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "RAY_TRAIN_V2_ENABLED": "1",
                "OMP_NUM_THREADS": "1",
                "WANDB_MODE": "offline",
                "WANDB_SILENT": "true",
            }
        },
    )
    try:
        assert rank_job.main(args) == 0
        first = json.loads((tmp_path / "runs" / "r" / "rank.json").read_text())
        assert rank_job.main(args) == 0  # a rerun trains nothing again
    finally:
        ray.shutdown()
    data = json.loads((tmp_path / "runs" / "r" / "rank.json").read_text())
    assert set(data["kendall_tau"]) == {"alpha", "strength"}
    assert 0.0 <= data["searched_percentile"] <= 100.0
    assert sorted(r["kind"] for r in data["rows"]) == ["hand", "random", "searched"]
    for r in data["rows"]:
        for k in ("genotype_id", "val_psnr", "bn_psnr", "bn_ssim", "bnl_psnr", "bnl_ssim"):
            assert k in r
        assert math.isfinite(r["val_psnr"]) and math.isfinite(r["bn_psnr"])
        assert (r["genotype_id"] is None) == (r["kind"] == "hand")
        info = json.loads((Path(r["run_dir"]) / "trial.json").read_text())
        assert info["starts"] == 1, f"{r['label']} was trained twice"
    assert [r["val_psnr"] for r in data["rows"]] == [r["val_psnr"] for r in first["rows"]]
    assert (tmp_path / "runs" / "r" / "rank.md").is_file() and (tmp_path / "runs" / "r" / "rank.png").is_file()


def test_model_kind_names_bn_random_draws_and_searched_genotypes():
    from nasfe.evaluate.model_io import model_kind

    space = load_space("search_spaces/cpu.yaml")
    drawn = sample_genotypes(space, 3, seed=0)
    assert [model_kind(space, g) for g in drawn] == ["random #0", "random #1", "random #2"]
    searched = Genotype.from_dict({**drawn[0].to_dict(), "meta": {"space": "cpu"}}, space=space)
    assert model_kind(space, searched) == "NASFE"
    assert model_kind(load_space("search_spaces/cpu.yaml", {"model.fusion": "res2"}), None) == "BN"


def test_a_study_grows_but_refuses_a_changed_candidate(tmp_path):
    from nasfe.distributed.rank_job import build_candidates, check_same_candidates
    from nasfe.errors import CommandError

    space = load_space("search_spaces/cpu.yaml")
    first, _ = build_candidates(space, 2, 0, [], ["bn"])
    (tmp_path / "candidates.json").write_text(json.dumps({"candidates": first}))
    grown, _ = build_candidates(space, 3, 0, [], ["bn"])
    assert [c["id"] for c in check_same_candidates(tmp_path / "candidates.json", grown)] == [
        "random_00",
        "random_01",
        "random_02",
        "hand_bn",
    ]
    other, _ = build_candidates(space, 2, 1, [], ["bn"])  # another draw under the same ids
    with pytest.raises(CommandError, match="random_00"):
        check_same_candidates(tmp_path / "candidates.json", other)
    with pytest.raises(CommandError, match="model.fusion"):
        build_candidates(load_space("search_spaces/cpu.yaml", {"model.fusion": "res2"}), 2, 0, [], [])


def test_rank_table_is_logged_to_wandb_offline(tmp_path):
    pytest.importorskip("wandb")
    from nasfe.tracking.wandb_logger import WandbSettings
    from nasfe.tracking.wandb_rank import log_rank

    rows = [
        {
            "label": f"random #{i}",
            "kind": "random",
            "genotype_id": str(i),
            "val_psnr": float(i),
            "score_alpha": float(i),
            "score_strength": None,
        }
        for i in range(3)
    ]
    where = log_rank(
        WandbSettings(project="nasfe-test", mode="offline"),
        "r",
        {"rows": rows, "kendall_tau": {"alpha": 1.0}, "searched_percentile": None},
        tmp_path / "missing.png",
        tmp_path,
    )
    assert where is not None and where.startswith("offline")
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    # a broken settings object is a warning, never an error
    assert log_rank(object(), "r", {"rows": rows}, tmp_path / "x.png", tmp_path) is None


def test_the_study_plans_as_many_trials_at_once_as_the_cluster_config_can_grow_to(tmp_path, monkeypatch):
    """A cold cluster (the head alone up): the shipped cluster.yaml's 8 GPU workers hold 8 trials."""
    import nasfe.distributed.sweep as sweep_mod
    from nasfe.distributed import rank_job

    class Planned(Exception):
        pass

    def tuner(ctx, ids, storage, root, max_concurrent):
        raise Planned(max_concurrent)

    monkeypatch.setenv("NASFE_CLUSTER_CONFIG", str(Path(__file__).resolve().parents[1] / "cluster.yaml"))
    monkeypatch.setattr(sweep_mod, "cluster_nodes", lambda: [{"CPU": 0}])  # nothing but the head is up
    monkeypatch.setattr(rank_job, "open_cluster", lambda args, workers: True)  # the workers ask for GPUs
    monkeypatch.setattr(rank_job, "_tuner", tuner)
    parser = argparse.ArgumentParser()
    rank_job.add_arguments(parser)
    args = parser.parse_args(["--space", "tiny", "--random", "2", "--storage", str(tmp_path), "--name", "c"])
    with pytest.raises(Planned) as planned:
        rank_job.main(args)
    assert planned.value.args == (8,)


@pytest.mark.drill
@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_a_study_with_storage_on_s3_trains_scores_and_resumes_from_s3(tmp_path, monkeypatch):
    """Storage on a local S3 server (moto): the trials, candidates and report land on S3, nothing in
    a local runs folder, and a rerun from a fresh driver folder trains nothing again."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("moto")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from localcluster import S3Server

    from nasfe.distributed import rank_job

    s3 = S3Server().start()
    try:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("NASFE_WORK_DIR", str(tmp_path / "driver"))
        monkeypatch.chdir(tmp_path)
        argv = ["--space", "tiny", "--random", "1", "--storage", f"s3://{s3.bucket}/ranks", "--name", "r"]
        argv += ["--test-images", "2", "--max-images", "4", "--wandb-mode", "disabled", "--quiet"]
        argv += [a for kv in TINY.items() for a in ("--set", f"{kv[0]}={json.dumps(kv[1])}")]
        parser = argparse.ArgumentParser()
        rank_job.add_arguments(parser)
        args = parser.parse_args(argv)
        env = {"RAY_TRAIN_V2_ENABLED": "1", "OMP_NUM_THREADS": "1", **s3.env}
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}
        )
        try:
            assert rank_job.main(args) == 0
            first = json.loads(s3.read("ranks/r/rank.json"))
            monkeypatch.setenv("NASFE_WORK_DIR", str(tmp_path / "other-driver"))
            assert rank_job.main(args) == 0  # another driver folder: resumed from S3, nothing retrained
        finally:
            ray.shutdown()
        keys = s3.keys("ranks/r/")
        for name in ("candidates.json", "rank.json", "rank.md"):  # no rank.png: nothing has a supernet score
            assert f"ranks/r/{name}" in keys, sorted(keys)[:40]
        for cand in ("random_00", "hand_bn"):
            for name in ("model.pt", "retrain_summary.json", "trial.json"):
                assert f"ranks/r/trials/{cand}/{name}" in keys, sorted(keys)[:40]
            assert json.loads(s3.read(f"ranks/r/trials/{cand}/trial.json"))["starts"] == 1, f"{cand} trained twice"
        assert any(k.startswith("ranks/r/tune-") for k in keys)
        assert not (tmp_path / "runs").exists()  # no local study folder: S3 holds it
        data = json.loads(s3.read("ranks/r/rank.json"))
        assert sorted(r["kind"] for r in data["rows"]) == ["hand", "random"]
        for r in data["rows"]:
            assert math.isfinite(r["val_psnr"]) and math.isfinite(r["bn_psnr"])
            assert r["run_dir"] == f"s3://{s3.bucket}/ranks/r/trials/{r['id']}"
        assert [r["val_psnr"] for r in data["rows"]] == [r["val_psnr"] for r in first["rows"]]
    finally:
        s3.stop()
