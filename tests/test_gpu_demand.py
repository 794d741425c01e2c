"""GPU demand is declared (flag or cluster config), never detected from what is up at submit time;
a worker Ray gives a GPU that torch cannot use stops the job with one clear line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _args(**kw):
    base = dict(gpus="auto", gpus_per_worker=None, address=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_gpus_come_from_the_cluster_config_not_from_the_nodes_up_now(monkeypatch):
    import nasfe.distributed.search_job as sj
    from nasfe.distributed.search_job import open_cluster

    # the head right after `ray up`: no GPU node yet (min_workers: 0), the config declares them
    monkeypatch.setenv("NASFE_CLUSTER_CONFIG", str(REPO / "cluster.yaml"))
    monkeypatch.delenv("NASFE_GPUS_PER_WORKER", raising=False)
    monkeypatch.setattr(sj, "connect", lambda *a, **k: "joined a cluster with no GPU up")  # no Ray here
    monkeypatch.setattr(sj, "cluster_gpus", lambda: 0)
    assert open_cluster(_args(), workers=8) is True
    assert open_cluster(_args(gpus="no"), workers=8) is False

    from nasfe.distributed.search_job import declared_gpus

    gpus, where = declared_gpus(_args())
    assert gpus == 1.0 and "gpu_worker" in where and "cluster.yaml" in where
    assert declared_gpus(_args(gpus_per_worker=0.5)) == (0.5, "--gpus-per-worker")
    monkeypatch.setenv("NASFE_GPUS_PER_WORKER", "0.5")
    assert declared_gpus(_args())[0] == 0.5
    monkeypatch.delenv("NASFE_GPUS_PER_WORKER")
    monkeypatch.setenv("NASFE_CLUSTER_CONFIG", str(REPO / "no-such-config.yaml"))
    assert declared_gpus(_args())[0] == 0.0  # a laptop: CPU


def test_the_trainer_declares_the_gpus_it_needs():
    pytest.importorskip("ray")
    from nasfe.config import load_space
    from nasfe.distributed.ray_train import build_trainer

    trainer = build_trainer(load_space("tiny"), "demand", "/tmp/nasfe-demand-unused", num_workers=2, gpus_per_worker=1)
    sc = trainer.scaling_config
    assert sc.use_gpu and sc.num_workers == 2 and sc.resources_per_worker["GPU"] == 1
    assert trainer.backend_config.backend == "nccl"


@pytest.mark.ray
def test_a_worker_promised_a_gpu_without_cuda_stops_with_one_line(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from nasfe.cli import main
    from nasfe.distributed.cluster import worker_env

    # fake GPUs: Ray hands them out, torch (a CPU build here) cannot use them
    ray.init(
        num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": worker_env()}
    )
    try:
        rc = main(
            [
                "search",
                "--gpus-per-worker",
                "1",
                "--workers",
                "2",
                "--storage",
                str(tmp_path),
                "--name",
                "nocuda",
                "--wandb-mode",
                "disabled",
                "--max-failures",
                "0",
                "--no-retrain",
            ]
        )
    finally:
        ray.shutdown()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("nasfe search: error: a Train worker on "), err
    assert "cannot see CUDA" in err[0] and "CPU-only torch build" in err[0]


def test_a_multi_gpu_node_type_gets_one_worker_per_gpu(tmp_path, monkeypatch):
    import yaml

    from nasfe.distributed.cluster import declared_gpus_per_worker
    from nasfe.distributed.search_job import declared_gpus
    from nasfe.errors import CommandError

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    worker = next(t for n, t in raw["available_node_types"].items() if n != raw["head_node_type"])
    worker["resources"] = {"CPU": 48, "GPU": 4}  # a g5.12xlarge type
    worker["node_config"]["InstanceType"] = "g5.12xlarge"
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("NASFE_GPUS_PER_WORKER", raising=False)
    gpus, where = declared_gpus_per_worker(config)
    assert gpus == 1.0 and "GPU: 4 per node: one worker each" in where
    with pytest.raises(CommandError, match="at most|between 0 and 1"):
        declared_gpus(_args(gpus_per_worker=4.0))
