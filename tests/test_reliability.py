"""Nothing lost, nothing corrupted in silence, one clear line for bad input.

Each test is named after the behaviour it holds (docs/RELIABILITY.md maps promises to these tests).
The corpus of broken inputs run through every command is tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nasfe.data.testsets as ts
from nasfe.cli import main as cli
from nasfe.config import ConfigError, load_space
from nasfe.distributed.cluster import RunStorage
from nasfe.engine.checkpoint import checkpoint_name, latest_checkpoint, save_checkpoint
from nasfe.imageio import write_png_atomic
from conftest import train_tiny_model

REPO = Path(__file__).resolve().parents[1]


def _one_line(err: str, needle: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("reliability_run"))[2]


@pytest.fixture
def faces(tmp_path):
    """4 identities x 2 faces of 48x40."""
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for i in range(4):
        for j in range(2):
            write_png_atomic(
                root / f"id{i}" / f"{j}.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            )
    return root


def _build(out, faces, **kw):
    args = dict(faces=str(faces), sets=["Test-N"], seed=1, images=3, progress=False)
    args.update(kw)
    return ts.build_testsets(out, **args)


# ---- 1. restore never overwrites the user's photos ---------------------------------------------------
def test_restore_into_its_input_folder_is_refused(model_pt, tmp_path, capsys):
    d = tmp_path / "photos"
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        write_png_atomic(d / name, rng.integers(0, 256, (40, 32, 3), dtype=np.uint8))
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    for argv in (["-i", str(d), "-o", str(d)], ["-i", str(d / "a.png"), "-o", str(d)]):
        rc = cli(["restore", str(model_pt), *argv, "--device", "cpu", "--quiet"])
        assert rc == 2
        _one_line(capsys.readouterr().err, "choose another --out")
        assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # originals untouched, nothing added


# ---- 2. testsets: fingerprint, re-verify, lock, verify every field -----------------------------------
def test_a_changed_face_folder_is_not_relabelled(tmp_path, faces):
    out = tmp_path / "ts"
    _build(out, faces)
    shutil.rmtree(faces / "id0")  # the folder changes: the seeded sample now lands on other faces
    with pytest.raises(ts.TestSetError, match="faces differ"):
        _build(out, faces)
    assert ts.verify_testsets(out)  # the old build stays as it was


def test_a_corrupted_png_is_rebuilt_not_rehashed(tmp_path, faces):
    out = tmp_path / "ts"
    m = _build(out, faces)
    victim = out / m["sets"]["Test-N"][4]["file"]
    good = victim.read_bytes()
    victim.write_bytes(good[:-10] + b"0123456789")
    m2 = _build(out, faces)
    assert victim.read_bytes() == good
    assert m2["sets"]["Test-N"][4]["sha256"] == m["sets"]["Test-N"][4]["sha256"]
    assert ts.verify_testsets(out) == {"Test-N": 18}


def test_a_second_build_into_the_folder_is_refused_while_one_runs(tmp_path, faces):
    from nasfe.errors import LockedError
    from nasfe.locks import FolderLock

    out = tmp_path / "ts"
    with FolderLock(out, "test-set folder"):  # the lock another build holds
        with pytest.raises(LockedError, match="in use by pid"):
            _build(out, faces, sets=["Test-B"])
    _build(out, faces, sets=["Test-N"])
    m = _build(out, faces, sets=["Test-L"])
    assert set(m["sets"]) == {"Test-N", "Test-L"}  # every set the folder was asked for is listed


def test_a_refused_lock_names_the_holder_who_has_not_written_its_name_yet(tmp_path):
    import fcntl
    import json
    import os
    import threading

    from nasfe.errors import LockedError
    from nasfe.locks import LOCK_NAME, FolderLock

    # the holder between its flock and writing who it is: the file is there, locked, still empty
    path = tmp_path / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    info = {"pid": 4242, "host": "h", "since": "now", "what": "x"}
    writer = threading.Timer(0.3, lambda: os.write(fd, json.dumps(info).encode()))
    writer.start()
    try:
        with pytest.raises(LockedError, match="in use by pid 4242 on h"):
            FolderLock(tmp_path, "test-set folder").acquire()
    finally:
        writer.join()
        os.close(fd)


@pytest.mark.parametrize("edit", ["identity", "sigma_s", "clean_identity", "kernel_id"])
def test_verify_checks_every_manifest_field(tmp_path, faces, edit):
    out = tmp_path / "ts"
    _build(out, faces, sets=["Test-N", "Test-B"])
    path = out / "manifest.json"
    m = json.loads(path.read_text())
    if edit == "identity":
        m["sets"]["Test-N"][3]["identity"] = "someone-else"
    elif edit == "sigma_s":
        m["sets"]["Test-N"][3]["sigma_s"] = 0.5
    elif edit == "kernel_id":
        m["sets"]["Test-B"][0]["kernel_id"] = 7
    else:
        m["clean"][0]["identity"] = "someone-else"
    path.write_text(json.dumps(m))
    with pytest.raises(ts.TestSetError, match="identity|sigma_s|kernel_id"):
        ts.verify_testsets(out)


# ---- 3. resume: the newest checkpoint that loads; --no-resume deletes nothing ------------------------
def _ray_run(tmp_path, name="r", cut=True, snapshot=True):
    """A run folder as Ray leaves it: two checkpoint folders, the newer half written by a full disk."""
    root = tmp_path / "runs" / name
    space = load_space("tiny")
    payload = {"phase": "search", "step": 2, "epoch": 1, "model": {}, "optimizers": {}, "space": space.to_dict()}
    good = root / "ray" / "search" / "checkpoint_2026-01-01_00-00-01.000000"
    save_checkpoint(good / checkpoint_name("search", 2), payload)
    if cut:
        newer = root / "ray" / "search" / "checkpoint_2026-01-01_00-00-09.000000" / checkpoint_name("search", 4)
        save_checkpoint(newer, {**payload, "step": 4})
        newer.write_bytes(newer.read_bytes()[:300])
    if snapshot:
        latest = {"checkpoint_dir_name": good.name, "metrics": {"step": 2}}
        (root / "ray" / "search" / "checkpoint_manager_snapshot.json").write_text(
            json.dumps(
                {
                    "ray_version": "2.60.0",
                    "checkpoint_results": [latest],
                    "checkpoint_report_indices": [0],
                    "latest_checkpoint_result": latest,
                }
            )
        )
    return space, RunStorage.create(str(tmp_path / "runs"), name), good


class _Stop(Exception):
    pass


def _fake_trainer(monkeypatch, seen):
    import nasfe.distributed.ray_train as rt

    def build_trainer(*args, **kwargs):
        seen.update(kwargs)
        raise _Stop()

    monkeypatch.setattr(rt, "build_trainer", build_trainer)


def test_resume_uses_rays_record_not_the_newest_folder(tmp_path, monkeypatch):
    from nasfe.distributed.ray_train import fit_search

    space, st, good = _ray_run(tmp_path)
    seen: dict = {}
    _fake_trainer(monkeypatch, seen)
    with pytest.raises(_Stop):  # old code: CheckpointError on the half-written newer folder
        fit_search(space, st.name, st, resume=True)
    assert seen.get("resume_from") is None  # Ray resumes from its own record (step 2)
    assert (good / checkpoint_name("search", 2)).is_file()


def test_no_resume_moves_checkpoints_aside(tmp_path, monkeypatch, capsys):
    from nasfe.distributed.ray_train import fit_search

    space, st, good = _ray_run(tmp_path)
    engine = Path(st.root) / "checkpoints" / checkpoint_name("search", 2)
    save_checkpoint(engine, {"step": 2})
    _fake_trainer(monkeypatch, {})
    with pytest.raises(_Stop):
        fit_search(space, st.name, st, resume=False)
    kept = list((Path(st.root) / "previous").rglob("*.pt"))
    assert len(kept) == 3 and not engine.exists() and not good.exists()  # moved, not deleted
    assert "moved to" in capsys.readouterr().out


def test_latest_checkpoint_passes_over_a_half_written_file(tmp_path):
    for s in (2, 4):
        save_checkpoint(tmp_path / checkpoint_name("search", s), {"step": s})
    newest = tmp_path / checkpoint_name("search", 4)
    newest.write_bytes(newest.read_bytes()[:100])
    assert latest_checkpoint(tmp_path, "search").name == checkpoint_name("search", 2)
    assert newest.exists()  # left for the run to overwrite, never deleted


# ---- 4. one run name, one job at a time -------------------------------------------------------------
def test_two_searches_with_one_name_the_second_refuses(tmp_path, capsys, monkeypatch):
    import nasfe.distributed.search_job as sj

    monkeypatch.setattr(sj, "open_cluster", lambda *a: (_ for _ in ()).throw(_Stop()))  # never start Ray here
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from nasfe.locks import FolderLock; FolderLock(sys.argv[1], 'run').acquire(); "
                "print('held', flush=True); sys.stdin.read()"
            ),
            str(tmp_path / "runs" / "same"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = cli(["search", "--name", "same", "--storage", str(tmp_path / "runs"), "--wandb-mode", "disabled"])
        assert rc == 2
        _one_line(capsys.readouterr().err, f"in use by pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock is stale and the next job takes it
    with pytest.raises(_Stop):
        cli(["search", "--name", "same", "--storage", str(tmp_path / "runs"), "--wandb-mode", "disabled"])


# ---- 5, 8, 11. configuration files as people write them ---------------------------------------------
def test_an_empty_yaml_is_refused(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing but a comment\n")
    with pytest.raises(ConfigError, match="empty"):
        load_space(p)


def test_a_yaml_that_is_not_utf8_is_one_line(tmp_path, capsys):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_space(p)
    assert cli(["search", "--space", str(p), "--storage", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "not UTF-8")


def test_scientific_notation_is_a_float(tmp_path):
    p = tmp_path / "lr.yaml"
    p.write_text("name: lr\nsearch:\n  lr: 1e-3\n  arch_lr: 3E-4\n")
    space = load_space(p, {"retrain.lr": "2e-4"})  # what --set search.lr=2e-4 hands over
    assert (space.search.lr, space.search.arch_lr, space.retrain.lr) == (1e-3, 3e-4, 2e-4)
    for bad in ("fast", ".nan", "1e-3x"):
        with pytest.raises(ConfigError, match="search.lr"):
            load_space(p, {"search.lr": bad if bad != ".nan" else float("nan")})


# ---- 6. a scan of many faces does not die on one bad file --------------------------------------------
def test_unreadable_faces_are_skipped_and_counted(tmp_path, faces, capsys):
    (faces / "id1" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    m = _build(tmp_path / "ts", faces, images=None)
    assert len(m["clean"]) == 7 and len(m["skipped_faces"]) == 1 and "id1" in m["skipped_faces"][0]
    assert "skipped 1 unreadable face file(s)" in capsys.readouterr().err
    m = _build(tmp_path / "ts2", faces, images=3)  # a subsample keeps its size: a seeded stand-in
    assert len(m["clean"]) == 3


# ---- 7. files nasfe writes have the usual permissions ------------------------------------------------
def test_written_files_get_the_usual_mode(tmp_path, model_pt):
    old = os.umask(0o022)
    try:
        write_png_atomic(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
        save_checkpoint(tmp_path / "c.pt", {"step": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644
    assert model_pt.stat().st_mode & 0o777 == 0o666 & ~old


# ---- 9. an output folder that cannot be written: one line, before the work ---------------------------
def test_evaluate_checks_its_output_folder_first(model_pt, tmp_path, faces, capsys, monkeypatch):
    import nasfe.evaluate.evaluate_cmd as ev

    _build(tmp_path / "ts", faces, images=1)
    monkeypatch.setattr(ev, "evaluate_sets", lambda *a, **k: pytest.fail("computed before checking --out"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should go")
    rc = cli(["evaluate", str(model_pt), "--testsets", str(tmp_path / "ts"), "--out", str(blocker / "out"), "--quiet"])
    assert rc == 2
    _one_line(capsys.readouterr().err, "cannot write there")


# ---- 10. checked before Ray starts -------------------------------------------------------------------
def test_a_face_size_the_network_cannot_take_is_a_config_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="data.height = 7 is too small"):
        load_space("tiny", {"data.height": 7})
    assert cli(["search", "--set", "data.width=9", "--storage", str(tmp_path)]) == 2
    _one_line(capsys.readouterr().err, "data.width = 9 is too small")


def test_resuming_with_another_model_space_is_refused_before_ray(tmp_path, capsys, monkeypatch):
    import nasfe.distributed.search_job as sj

    monkeypatch.setattr(sj, "open_cluster", lambda *a: (_ for _ in ()).throw(_Stop()))  # never start Ray here
    _ray_run(tmp_path, name="grown", cut=False)
    rc = cli(
        [
            "search",
            "--name",
            "grown",
            "--storage",
            str(tmp_path / "runs"),
            "--set",
            "model.channels=32",
            "--wandb-mode",
            "disabled",
        ]
    )
    assert rc == 2
    _one_line(capsys.readouterr().err, "made for model space")


def test_a_truncated_ray_snapshot_falls_back_to_the_newest_loadable_checkpoint(tmp_path, monkeypatch):
    from nasfe.distributed.ray_train import fit_search

    space, st, good = _ray_run(tmp_path)
    snap = good.parent / "checkpoint_manager_snapshot.json"
    snap.write_text(snap.read_text()[:40])  # a full disk cut Ray's record short
    seen: dict = {}
    _fake_trainer(monkeypatch, seen)
    with pytest.raises(_Stop):
        fit_search(space, st.name, st, resume=True)
    resume_from = Path(seen["resume_from"])
    assert resume_from.name == checkpoint_name("search", 2) and resume_from.is_file()
    assert "previous" in resume_from.parts and not good.parent.exists()  # Ray's folder set aside, not deleted


def test_the_library_never_imports_the_cli():
    offenders = []
    for path in (REPO / "nasfe").rglob("*.py"):
        if path.name == "cli.py" and path.parent.name == "nasfe":
            continue
        text = path.read_text()
        if "nasfe.cli" in text or "from nasfe import cli" in text:
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_every_user_error_class_is_defined_in_errors_py():
    """Import every module of the package, then walk NasfeError's subclasses: all live in errors.py."""
    import importlib
    import pkgutil

    import nasfe
    from nasfe import errors

    for info in pkgutil.walk_packages(nasfe.__path__, "nasfe."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
    seen, todo = [], [errors.NasfeError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    elsewhere = [f"{c.__module__}.{c.__qualname__}" for c in seen if c.__module__ != "nasfe.errors"]
    assert elsewhere == []
    assert len(seen) >= 15  # the walk found the package's errors, not just the base
