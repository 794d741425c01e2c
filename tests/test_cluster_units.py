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
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.png")) == \
        ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png"]
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
