"""WandbLogger: offline run readable through W&B's own records; rank 0 only; failures never fatal."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from nasfe.config import load_space
from nasfe.engine.callbacks import TrainState
from nasfe.tracking.wandb_logger import WandbLogger, WandbSettings, read_offline_records, resolve_mode


@pytest.fixture(scope="module")
def tiny():
    from nasfe.genotype import derive_genotype
    from nasfe.model.registry import create_model

    space = load_space("tiny")
    model = create_model(space)
    genotype = derive_genotype(model.alphas.detach(), model.betas.detach(), space)
    return space, model.alphas.detach(), model.betas.detach(), genotype


def _drive(logger, run_dir, tiny, rank=0):
    space, alphas, betas, genotype = tiny
    st = TrainState(phase="search", run_dir=run_dir, epochs=1, steps_per_epoch=2, rank=rank, world_size=2)
    logger.on_start(st, {"space": space.to_dict()})
    for step in (1, 2):
        st.step = step
        logger.on_step(st, {"loss": 1.0 / step, "l2": 0.5})
    st.epoch = 1
    logger.on_epoch_end(
        st,
        {"val_psnr": 21.5, "val_ssim": 0.61, "alphas": alphas, "betas": betas, "genotype_id": genotype.genotype_id()},
        genotype,
    )
    logger.on_images(st, {k: torch.rand(2, 3, 48, 40) for k in ("degraded", "restored", "clean")})
    logger.on_end(st, {"steps": 2, "best_val_psnr": 21.5})
    return genotype


def _complete_records(path, timeout=30.0):
    """The file's records once W&B's service process has written the run's exit record."""
    import time

    deadline = time.time() + timeout
    while True:
        records = read_offline_records(path)
        kinds = {r.WhichOneof("record_type") for r in records}
        if {"run", "exit"} <= kinds or time.time() > deadline:
            return records
        time.sleep(0.2)


def _history(records):
    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows


def test_offline_run_holds_metrics_genotype_artifact_and_config(tmp_path, tiny, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    logger = WandbLogger(WandbSettings(project="nasfe-test", mode="auto", group="g1"))
    genotype = _drive(logger, tmp_path, tiny)
    assert logger.mode == "offline" and not logger.disabled  # no API key -> offline automatically
    pointer = json.loads((tmp_path / "wandb_search.json").read_text())
    assert pointer["mode"] == "offline" and pointer["sync"].startswith("wandb sync ")
    files = list(Path(pointer["dir"]).glob("*.wandb"))
    assert len(files) == 1
    records = _complete_records(files[0])
    kinds = Counter(r.WhichOneof("record_type") for r in records)
    assert kinds["run"] >= 1 and kinds["history"] >= 4

    rows = _history(records)
    losses = [r["search/loss"] for r in rows if "search/loss" in r]
    assert losses == [1.0, 0.5]
    epoch = next(r for r in rows if "search/val_psnr" in r)
    assert epoch["search/val_psnr"] == 21.5 and epoch["search/val_ssim"] == 0.61
    # media are nested keys: search/alphas/_type ...
    assert epoch["search/alphas/_type"] == "image-file" and epoch["search/betas/_type"] == "image-file"
    assert any(r.get("genotypes/_type") == "table-file" and r.get("genotypes/nrows") == 1 for r in rows)
    assert any(r.get("search/samples/caption") == "degraded | restored | clean" for r in rows)

    arts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    geno = next(a for a in arts if a.type == "genotype")
    assert [e.path for e in geno.manifest.contents] == ["genotype.json"]
    meta = json.loads(geno.metadata)
    assert meta["genotype_id"] == genotype.genotype_id()

    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    value = lambda v: v["value"] if isinstance(v, dict) and "value" in v else v  # noqa: E731
    assert value(config["phase"]) == "search" and value(config["space"])["name"] == "tiny"
    assert run.run_group == "g1" and run.job_type == "search"


def test_other_ranks_log_nothing(tmp_path, tiny):
    logger = WandbLogger(WandbSettings(mode="offline"))
    _drive(logger, tmp_path, tiny, rank=1)
    assert logger.run is None
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_search.json").exists()


def test_a_failing_wandb_call_disables_logging_but_never_raises(tmp_path, tiny, caplog):
    logger = WandbLogger(WandbSettings(mode="offline"))
    space, alphas, betas, genotype = tiny
    st = TrainState(phase="search", run_dir=tmp_path, epochs=1, steps_per_epoch=2)
    logger.on_start(st, {"space": space.to_dict()})

    def broken(*a, **k):
        raise OSError("disk full")

    logger.run.log = broken
    st.step = 1
    with caplog.at_level("WARNING", logger="nasfe.tracking"):
        logger.on_step(st, {"loss": 1.0})
        logger.on_epoch_end(st, {"val_psnr": 1.0}, genotype)  # already disabled: no second warning
        logger.on_end(st, {"steps": 1})
    assert logger.disabled
    warnings = [r for r in caplog.records if "W&B" in r.getMessage()]
    assert len(warnings) == 1 and "disk full" in warnings[0].getMessage()


def test_mode_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: offline
    assert resolve_mode("auto") == "offline"
    with pytest.raises(ValueError):
        resolve_mode("sometimes")


def test_a_second_phase_gets_its_own_run_while_another_is_still_open(tmp_path, tiny, monkeypatch):
    """W&B's default hands back a run still open in the process; each phase must log into its own."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    first = WandbLogger(WandbSettings(mode="offline", run_id="first0123456789a"))
    first.on_start(
        TrainState(phase="search", run_dir=tmp_path / "a", epochs=1, steps_per_epoch=1), {"space": tiny[0].to_dict()}
    )  # left open, as after a crash in the same process
    second = WandbLogger(WandbSettings(mode="offline", run_id="second012345678b"))
    st = TrainState(phase="retrain", run_dir=tmp_path / "b", epochs=1, steps_per_epoch=1)
    second.on_start(st, {"space": tiny[0].to_dict()})
    second.on_end(st, {"steps": 1})
    assert second.run.id == "second012345678b"
    files = list((tmp_path / "b" / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 1
    run = next(r.run for r in _complete_records(files[0]) if r.WhichOneof("record_type") == "run")
    assert run.run_id == "second012345678b"


_KILLED_CHILD = """
import sys, time
from pathlib import Path
from nasfe.engine.callbacks import TrainState
from nasfe.tracking.wandb_logger import WandbLogger, WandbSettings
root = Path(sys.argv[1])
logger = WandbLogger(WandbSettings(mode="offline", name="killed", flush_every=1.0))
st = TrainState(phase="search", run_dir=str(root), epochs=3, steps_per_epoch=1)
logger.on_start(st, {"space": {}})
for epoch in (1, 2, 3):
    st.step = st.epoch = epoch
    logger.on_epoch_end(st, {"val_psnr": 20.0 + epoch})
(root / "logged").write_text("3 epochs")
time.sleep(300)
"""


@pytest.mark.slow
def test_a_process_killed_with_its_wandb_service_keeps_the_history_flushed_before(tmp_path):
    """What Tune does to a trial it stops (ASHA): SIGKILL to the worker and its W&B service, no
    finish. The run's .wandb file is written every ``flush_every`` s, so the epochs logged more than
    that before the kill survive (with W&B's own 15 s interval this file holds only its header)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(tmp_path)], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "logged").exists():
            assert child.poll() is None and time.monotonic() < deadline, "the child did not log"
            time.sleep(0.2)
        # the history reaches the file within a few flush intervals of 1 s; wait for it, at most
        # 10 s (W&B's own 15 s interval would still fail), instead of a fixed sleep a loaded
        # machine can outrun
        files = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            files = list(tmp_path.glob("wandb/offline-run-*/*.wandb"))
            if files and len(_history(read_offline_records(files[0]))) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    files = list(tmp_path.glob("wandb/offline-run-*/*.wandb"))
    assert len(files) == 1
    rows = _history(read_offline_records(files[0]))
    assert [r.get("search/val_psnr") for r in rows] == [21.0, 22.0, 23.0]


class _SnapshotStorage:
    """Remote-looking run storage that keeps, per upload, each file's bytes at that moment."""

    is_local = False
    root = "s3://bucket/runs/r"

    def __init__(self):
        self.uploads: list[dict[str, bytes]] = []

    def upload(self, local_dir, files):
        got = {}
        for rel in files:
            src = Path(local_dir) / rel
            for p in [src] if src.is_file() else sorted(q for q in src.rglob("*") if q.is_file()):
                got[p.relative_to(local_dir).as_posix()] = p.read_bytes()
        self.uploads.append(got)


def test_a_checkpoint_copy_of_the_wandb_folder_holds_the_history_logged_before_it(tmp_path):
    """The copy a checkpoint makes is what a stopped job leaves on storage: it must hold the run's
    .wandb file with every step logged so far, although W&B writes that file only every
    ``flush_every`` s; and the .wandb file goes up first, so a copy cut short still has it."""
    from nasfe.distributed.ray_train import WandbMirror

    logger = WandbLogger(WandbSettings(mode="offline", name="mirror", flush_every=2.0))
    storage = _SnapshotStorage()
    mirror = WandbMirror(logger, storage, tmp_path)
    st = TrainState(phase="search", run_dir=str(tmp_path), epochs=1, steps_per_epoch=2)
    logger.on_start(st, {"space": {}})
    try:
        for step in (1, 2):
            st.step = step
            logger.on_step(st, {"loss": 1.0 / step})
        mirror.on_checkpoint(st, None, {})
    finally:
        logger.close(exit_code=0)
    name = logger.wandb_file().relative_to(tmp_path).as_posix()
    assert storage.uploads and list(storage.uploads[0]) == [name]  # the history file alone, first
    copied = tmp_path / "copied.wandb"
    copied.write_bytes(storage.uploads[-1][name])
    rows = _history(read_offline_records(copied))
    assert [r.get("search/loss") for r in rows if "search/loss" in r] == [1.0, 0.5]


def test_worker_callbacks_copy_wandb_before_the_ray_checkpoint_report(tmp_path):
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.ray_train import RayReportCallback, WandbMirror, worker_callbacks

    storage = RunStorage("s3://bucket/runs", "r")
    cbs = worker_callbacks({"wandb": {"mode": "disabled"}, "progress": False}, 0, "search", storage, tmp_path)
    kinds = [type(c) for c in cbs]
    assert kinds.index(WandbLogger) < kinds.index(WandbMirror) < kinds.index(RayReportCallback)
