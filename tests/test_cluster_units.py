"""Fast checks of the cluster path's parts: no secret in the workers' runtime_env, data fetched once
per node, the W&B run id kept in the run's storage, finished phases, a W&B run closed after a failure."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest


def test_the_wandb_key_is_not_sent_through_rays_runtime_env(monkeypatch):
    from nasfe.distributed.cluster import worker_env

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    env = worker_env()
    assert "k" * 40 not in json.dumps(env) and env["WANDB_MODE"] == "offline"


def _faces(root: Path) -> Path:
    for ident in ("a", "b"):
        (root / ident).mkdir(parents=True)
        for i in range(3):
            (root / ident / f"{i}.png").write_bytes(b"png" + bytes([i]))
    return root


def test_data_from_a_uri_is_fetched_once_per_node_and_reused(tmp_path, monkeypatch):
    from nasfe.data import remote

    src = _faces(tmp_path / "bucket" / "faces")
    uri = src.as_uri()  # file:///... : any pyarrow filesystem URI takes the same path as s3://
    monkeypatch.setenv("NASFE_DATA_CACHE", str(tmp_path / "cache"))
    calls = []
    real = remote._copy
    monkeypatch.setattr(remote, "_copy", lambda u, d: (calls.append(u), real(u, d)))
    got = []
    threads = [threading.Thread(target=lambda: got.append(remote.fetch_once(uri))) for _ in range(4)]
    for t in threads:  # four workers of one node at once
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(got)) == 1
    local = got[0]
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.png")) == [
        "a/0.png",
        "a/1.png",
        "a/2.png",
        "b/0.png",
        "b/1.png",
        "b/2.png",
    ]
    assert json.loads((local / remote.MARKER).read_text())["files"] == 6
    assert remote.fetch_once(uri) == local and len(calls) == 1  # a later run reuses it
    assert remote.fetch_once(str(src)) == src  # local paths unchanged
    with pytest.raises(remote.DataFetchError, match="no such folder"):
        remote.fetch_once((tmp_path / "nope").as_uri())


def test_localized_space_points_at_the_cache(tmp_path, monkeypatch):
    from nasfe.config import load_space
    from nasfe.data.remote import localize_space

    src = _faces(tmp_path / "faces")
    monkeypatch.setenv("NASFE_DATA_CACHE", str(tmp_path / "cache"))
    space = load_space("tiny", {"data.source": "folder", "data.root": src.as_uri()})
    local = localize_space(space)
    assert Path(local.data.root).parent == tmp_path / "cache" and local.data.source == "folder"
    assert space.data.root == src.as_uri()  # the space the job sends stays node-independent


def test_wandb_run_id_lives_in_the_runs_storage(tmp_path):
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.ray_train import wandb_run_id

    st = RunStorage.create(str(tmp_path / "runs"), "r1")
    first = wandb_run_id(st, "search")
    assert wandb_run_id(st, "search") == first  # every resumed segment continues it
    moved = RunStorage.create(str(tmp_path / "runs") + "/", "r1")  # same run, spelled otherwise
    assert wandb_run_id(moved, "search") == first
    assert json.loads((tmp_path / "runs" / "r1" / "wandb_ids.json").read_text())["search"] == first
    assert wandb_run_id(st, "retrain") != first
    assert wandb_run_id(st, "search", fresh=True) != first  # --no-resume: a new W&B run


def test_a_finished_phase_is_recognised_only_with_the_same_settings(tmp_path, capsys):
    from nasfe.config import load_space
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.ray_train import _config_hash, finished_phase

    space = load_space("tiny")
    st = RunStorage.create(str(tmp_path / "runs"), "done")
    assert finished_phase(st, "search", space) is None
    (tmp_path / "runs" / "done").mkdir(parents=True)
    (tmp_path / "runs" / "done" / "search_summary.json").write_text(json.dumps({"steps": 6}))
    st.write_json("search_done.json", {"config_hash": _config_hash(space), "finished": 0})
    res = finished_phase(st, "search", space)
    assert res is not None and res.summary["steps"] == 6 and "finished on" in capsys.readouterr().out
    assert finished_phase(st, "search", load_space("tiny", {"search.epochs": 5})) is None
    from nasfe.distributed.resume import set_aside_phase

    set_aside_phase(st, "search")  # --no-resume
    assert finished_phase(st, "search", space) is None


def test_a_wandb_run_closed_after_a_failure_keeps_its_history(tmp_path, monkeypatch):
    from nasfe.config import load_space
    from nasfe.engine.callbacks import TrainState
    from nasfe.tracking.wandb_logger import WandbLogger, WandbSettings, read_offline_records

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = WandbLogger(WandbSettings(mode="offline", run_id="seg0123456789ab"))
    st = TrainState(phase="search", run_dir=tmp_path, epochs=1, steps_per_epoch=4)
    logger.on_start(st, {"space": load_space("tiny").to_dict()})
    for step in (1, 2, 3):
        st.step = step
        logger.on_step(st, {"loss": 1.0 / step})
    logger.close(exit_code=1)  # what train_worker does when the phase fails
    import time

    path, deadline = next((tmp_path / "wandb").glob("offline-run-*/*.wandb")), time.time() + 30
    while True:  # W&B's service process writes the file a moment after finish()
        records = read_offline_records(path)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.time() > deadline:
            break
        time.sleep(0.2)
    assert "exit" in kinds and kinds.count("history") >= 3
    assert next(r.exit for r in records if r.WhichOneof("record_type") == "exit").exit_code == 1


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("moto")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from localcluster import S3Server

    server = S3Server().start()
    yield server
    server.stop()


@pytest.mark.slow  # a local S3 server (moto) and a training run
def test_training_starts_from_s3_before_the_faces_are_copied_and_a_node_fills_its_cache(
    tmp_path, monkeypatch, s3_server
):
    import time

    from nasfe.config import load_space
    from nasfe.data.batches import BatchMaker
    from nasfe.data.remote import MARKER, localize_space
    from nasfe.data.synthetic import synthetic_faces
    from nasfe.imageio import write_png_atomic

    images, ids = synthetic_faces(40, 5, height=48, width=40, seed=2)
    faces = tmp_path / "faces"
    for i, (img, ident) in enumerate(zip(images, ids)):
        write_png_atomic(faces / f"id{ident:02d}" / f"{i:03d}.png", img)
    s3_server.upload_dir(faces, "lazy/faces")
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NASFE_DATA_CACHE", str(tmp_path / "node-a"))
    monkeypatch.setenv("NASFE_DATA_PREFETCH", "0")
    space = load_space(
        "tiny", {"data.source": "folder", "data.root": f"s3://{s3_server.bucket}/lazy/faces", "data.workers": 0}
    )
    local = Path(localize_space(space).data.root)
    pngs = sorted(local.rglob("*.png"))
    assert len(pngs) == 200 and not [p for p in pngs if p.stat().st_size]  # listed, nothing copied yet
    batch = next(iter(BatchMaker(localize_space(space), "train", 4)))  # the first step's batch
    fetched = [p for p in pngs if p.stat().st_size]
    assert batch.x.shape[0] == 4 and 0 < len(fetched) <= 4 * (1 + space.identity.refs) + 1, len(fetched)
    for p in fetched:  # fetched whole, byte for byte
        assert p.read_bytes() == (faces / p.relative_to(local)).read_bytes()
    # the node's background fetcher fills the rest and marks the copy complete; a later run reuses it
    monkeypatch.setenv("NASFE_DATA_PREFETCH", "1")
    assert Path(localize_space(space).data.root) == local
    deadline = time.time() + 120
    while not (local / MARKER).is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert json.loads((local / MARKER).read_text())["files"] == 200
    assert all(p.read_bytes() == (faces / p.relative_to(local)).read_bytes() for p in pngs)


def _ray_layout(write, listed=("checkpoint_000001",), folders=("checkpoint_000001", "checkpoint_000002")):
    """A phase's Ray folder: the record lists ``listed``; ``folders`` exist (the rest: cut short)."""
    write(
        "ray/search/checkpoint_manager_snapshot.json",
        json.dumps(
            {
                "checkpoint_results": [{"checkpoint_dir_name": n} for n in listed],
                "latest_checkpoint_result": {"checkpoint_dir_name": listed[-1]},
            }
        ),
    )
    for name in folders:
        write(f"ray/search/{name}/search_step_00000004.pt", "partial" if name not in listed else "whole")


def test_a_resume_removes_checkpoint_folders_a_killed_upload_left_on_s3(tmp_path, monkeypatch, s3_server):
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.resume import prepare_phase

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    client = s3_server.client()
    _ray_layout(lambda rel, text: client.put_object(Bucket=s3_server.bucket, Key=f"runs/orph/{rel}", Body=text))
    st = RunStorage.create(f"s3://{s3_server.bucket}/runs", "orph")
    assert prepare_phase(st, "search", resume=True) is None  # Ray's record decides where it resumes
    keys = s3_server.keys("runs/orph/ray/search/")
    assert "runs/orph/ray/search/checkpoint_000001/search_step_00000004.pt" in keys
    assert not [k for k in keys if "checkpoint_000002" in k], keys
    # no record (or one nobody can read): nothing is removed
    client.put_object(Bucket=s3_server.bucket, Key="runs/orph2/ray/search/checkpoint_000009/x.pt", Body="x")
    prepare_phase(RunStorage.create(f"s3://{s3_server.bucket}/runs", "orph2"), "search", resume=True)
    assert s3_server.keys("runs/orph2/ray/search/") == ["runs/orph2/ray/search/checkpoint_000009/x.pt"]


def test_a_resume_removes_checkpoint_folders_outside_rays_record_locally(tmp_path):
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.resume import ResumePlan, apply_plan

    st = RunStorage.create(str(tmp_path / "runs"), "orph")
    cut = Path(st.ray_run_path("search")) / "checkpoint_000002"
    cut.mkdir(parents=True)
    (cut / "search_step_00000004.pt").write_text("partial")
    apply_plan(st, ResumePlan("search", "ray", None, ignored=[cut]))
    assert not cut.exists()


def test_the_wandb_folder_printed_at_the_end_is_the_copy_in_the_runs_storage(tmp_path):
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.search_job import wandb_pointer

    worker_dir = "/home/ubuntu/nasfe-work/p1/wandb/offline-run-20261207_040000-abcd1234"  # on a spot worker
    (tmp_path / "wandb_search.json").write_text(
        json.dumps(
            {"mode": "offline", "id": "abcd1234", "dir": worker_dir, "url": None, "sync": f"wandb sync {worker_dir}"}
        )
    )
    (line,) = wandb_pointer(tmp_path, RunStorage.create("s3://bucket/runs", "p1"))
    assert "s3://bucket/runs/p1/wandb/offline-run-20261207_040000-abcd1234" in line
    assert "/home/ubuntu" not in line and "nasfe wandb-sync --name p1 --storage s3://bucket/runs" in line
