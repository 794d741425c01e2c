"""The bad-input corpus, generated at test time and run through every command.

Broken images of every kind, broken YAML, genotype and checkpoint files, malicious pickles and
YAML tags, non-finite weights, a read-only folder, a tiny full filesystem and two builds into one
folder at once. Every case asserts its outcome (exit status and the one line naming the file or
field, or the counted skips of a scan), and afterwards that nothing was left half written: no
temporary file, every PNG and checkpoint written reads back whole. Commands run in-process
through ``nasfe.cli.main``; one representative per command runs as a real subprocess.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from nasfe.cli import main as cli
from nasfe.imageio import ImageReadError, read_image
from conftest import train_tiny_model

REPO = Path(__file__).resolve().parents[1]
COMMANDS_TAKING_A_SPACE = ["search", "retrain", "restore", "export", "evaluate", "compare", "ablation"]


# ---- helpers --------------------------------------------------------------------------------------------
def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    return rc, out, err


def one_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_half_written(*folders: Path) -> None:
    """No temp file left, and every PNG / checkpoint in ``folders`` reads back whole."""
    for folder in folders:
        if not Path(folder).exists():
            continue
        leftovers = [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == [], leftovers
        for p in Path(folder).rglob("*.png"):
            read_image(p)
        for p in Path(folder).rglob("*.pt"):
            torch.load(p, map_location="cpu", weights_only=True)


class StopBeforeRay(Exception):
    """Raised instead of starting Ray: the case got past every check made before the cluster."""


@pytest.fixture
def no_ray(monkeypatch):
    import nasfe.distributed.search_job as sj

    def refuse(*_):
        raise StopBeforeRay()

    monkeypatch.setattr(sj, "open_cluster", refuse)


# ---- the corpus -----------------------------------------------------------------------------------------
def _png_bytes(h: int, w: int, seed: int = 0) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bad_image_files() -> dict[str, bytes]:
    """name -> bytes of image files that cannot be read, one of each kind."""
    good = _png_bytes(40, 32)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # a flipped bit inside the compressed pixel data
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )
    import io

    from PIL import Image

    jpg = io.BytesIO()
    Image.fromarray(np.full((40, 32, 3), 128, np.uint8)).save(jpg, "JPEG")
    return {
        "empty.png": b"",
        "noise.png": os.urandom(2048),
        "truncated.png": good[: len(good) // 3],
        "flipped.png": bytes(flipped),
        "truncated.jpg": jpg.getvalue()[:200],
        "text.jpg": b"this is a text file with an image's name\n",
        "bomb.png": bomb,  # a header claiming 60000x60000 pixels
        "html.webp": b"<html><body>404 not found</body></html>",
    }


def write_bad_images(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in bad_image_files().items():
        (folder / name).write_bytes(data)
    return sorted(bad_image_files())


YAML_CASES = {  # name -> (content, what the one line says)
    "empty": (b"", "is empty"),
    "only_comments": (b"# a space, some day\n", "is empty"),
    "latin1": ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8"),
    "utf16": ("name: x\n".encode("utf-16"), "not UTF-8"),
    "syntax": (b"model: [1, 2\n", "not valid YAML"),
    "top_level_list": (b"- model\n- data\n", "expected a mapping"),
    "unknown_field": (b"modle:\n  channels: 8\n", "unknown field(s) ['modle']"),
    "wrong_type": (b"model:\n  channels: many\n", "model.channels: expected an integer"),
    "python_tag": (b"!!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
    "nan": (b"search:\n  lr: .nan\n", "search.lr: expected a finite number"),
    "face_too_small": (b"data:\n  height: 7\n", "data.height = 7 is too small"),
}


def write_yaml(folder: Path, case: str) -> Path:
    p = folder / f"{case}.yaml"
    p.write_bytes(YAML_CASES[case][0])
    return p


def genotype_cases(good: dict) -> dict[str, tuple[bytes, str]]:
    """name -> (content, what the one line says) of genotype files that must be refused."""

    def edited(**kw):
        return json.dumps({**good, **kw}).encode()

    cells = json.loads(json.dumps(good["cells"]))
    cells[0][0]["ops"][0] = "teleport"
    return {
        "empty": (b"", "not valid JSON"),
        "syntax": (b'{"cells": [', "not valid JSON"),
        "latin1": ('{"name": "caf\u00e9"}'.encode("latin-1"), "not valid JSON"),
        "a_list": (b"[1, 2, 3]", "genotype"),
        "schema": (edited(schema_version=99), "schema"),
        "other_space": (edited(space_hash="0123456789ab"), "space_hash"),
        "unknown_op": (edited(cells=cells), "teleport"),
    }


class Evil:
    """Unpickling this runs a command: a safe loader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoint_cases(folder: Path, model_pt: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model file, what the one line says) of trained-model files that must be refused."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = torch.load(model_pt, map_location="cpu", weights_only=True)
    data = model_pt.read_bytes()
    files = {
        "random": (os.urandom(4096), "not a readable nasfe checkpoint"),
        "empty": (b"", "not a readable nasfe checkpoint"),
        "truncated": (data[: len(data) // 2], "not a readable nasfe checkpoint"),
        "json": (b'{"model": {}}', "not a readable nasfe checkpoint"),
        "evil_pickle": (pickle.dumps(Evil(folder / "PWNED")), "not a readable nasfe checkpoint"),
    }
    out = {}
    for name, (blob, needle) in files.items():
        (folder / f"{name}.pt").write_bytes(blob)
        out[name] = (folder / f"{name}.pt", needle)

    def variant(name, needle, **changes):
        torch.save({**payload, **changes}, folder / f"{name}.pt")
        out[name] = (folder / f"{name}.pt", needle)

    variant("version", "checkpoint version 99", checkpoint_version=99)
    variant("search_phase", "a search checkpoint", phase="search")
    variant("no_weights", "holds no 'model' weights", model=None)
    shapes = dict(payload["model"])
    k = next(k for k, v in shapes.items() if v.ndim == 4)
    shapes[k] = torch.zeros(1, 1, 1, 1)
    variant("wrong_shapes", "weights do not fit", model=shapes)
    nan = {k: v.clone() for k, v in payload["model"].items()}
    k = next(k for k, v in nan.items() if v.is_floating_point() and v.numel() > 1)
    nan[k].view(-1)[0] = float("nan")
    variant("non_finite", "non-finite", model=nan)
    return out


# ---- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny trained network, its genotype, a face folder and a small built test set."""
    from nasfe.data.testsets import build_testsets

    base = tmp_path_factory.mktemp("corpus")
    space, genotype, model_pt = train_tiny_model(base / "run")
    genotype.to_json(base / "genotype.json")
    faces = base / "faces"
    for i in range(4):
        for j in range(2):
            (faces / f"id{i}").mkdir(parents=True, exist_ok=True)
            (faces / f"id{i}" / f"{j}.png").write_bytes(_png_bytes(48, 40, seed=10 * i + j))
    build_testsets(base / "ts", faces=str(faces), sets=["Test-N"], images=2, progress=False)
    photos = base / "photos"
    for j in range(3):
        photos.mkdir(exist_ok=True)
        (photos / f"p{j}.png").write_bytes(_png_bytes(40, 32, seed=100 + j))
    return {
        "base": base,
        "space": space,
        "genotype": genotype,
        "model": model_pt,
        "faces": faces,
        "ts": base / "ts",
        "photos": photos,
        "genotype_json": base / "genotype.json",
    }


@contextmanager
def _mounted(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip() or 'not permitted'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be written in: chmod 0555 for a user, a read-only tmpfs for root."""
    d = tmp_path / "readonly"
    if os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    with _mounted(d, "ro,size=64k") as m:
        yield m


@pytest.fixture
def full_dir(tmp_path):
    """A real filesystem of 96 KiB (tmpfs; Linux as root), skipped where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    with _mounted(tmp_path / "full", "size=96k") as m:
        yield m


def _space_args(command: str, world, space_file: Path, tmp_path: Path) -> list:
    """argv of ``command`` reading the space ``space_file`` (every other input fine)."""
    w = world
    return {
        "search": ["search", "--space", space_file, "--storage", tmp_path / "runs", "--wandb-mode", "disabled"],
        "retrain": ["retrain", "--space", space_file, "--genotype", w["genotype_json"], "--storage", tmp_path / "runs"],
        "restore": [
            "restore",
            "--weights",
            w["model"],
            "--space",
            space_file,
            "--genotype",
            w["genotype_json"],
            "-i",
            w["photos"],
            "-o",
            tmp_path / "restored",
            "--quiet",
        ],
        "export": [
            "export",
            "--weights",
            w["model"],
            "--space",
            space_file,
            "--genotype",
            w["genotype_json"],
            "--out",
            tmp_path / "export",
        ],
        "evaluate": [
            "evaluate",
            "--weights",
            w["model"],
            "--space",
            space_file,
            "--genotype",
            w["genotype_json"],
            "--testsets",
            w["ts"],
            "--out",
            tmp_path / "eval",
            "--quiet",
            "--recognizer",
            "none",
        ],
        "compare": ["compare", w["genotype_json"], "--space", space_file, "--no-measure"],
        "ablation": [
            "ablation",
            "--space",
            space_file,
            "--out",
            tmp_path / "ablation",
            "--search-epochs",
            "1",
            "--retrain-epochs",
            "1",
            "--quiet",
        ],
    }[command]


# ---- broken YAML through every command that reads a space ------------------------------------------------
@pytest.mark.parametrize("case", sorted(YAML_CASES))
@pytest.mark.parametrize("command", COMMANDS_TAKING_A_SPACE)
def test_broken_space_yaml(world, tmp_path, capsys, monkeypatch, command, case, no_ray):
    monkeypatch.chdir(tmp_path)
    space_file = write_yaml(tmp_path, case)
    rc, _, err = run(capsys, *_space_args(command, world, space_file, tmp_path))
    assert rc == 2
    one_line(err, f"nasfe {command}: error:", str(space_file), YAML_CASES[case][1])
    assert not (tmp_path / "PWNED").exists()  # no YAML tag executed
    assert_nothing_half_written(tmp_path)


@pytest.mark.parametrize("case", ["empty", "latin1", "syntax", "python_tag", "utf16"])
def test_broken_sweep_yaml(tmp_path, capsys, monkeypatch, case, no_ray):
    monkeypatch.chdir(tmp_path)
    space_file = write_yaml(tmp_path, case)
    rc, _, err = run(capsys, "sweep", "--sweep", space_file, "--storage", tmp_path / "runs")
    assert rc == 2
    one_line(err, "nasfe sweep: error:", str(space_file), YAML_CASES[case][1])
    assert not (tmp_path / "PWNED").exists()


def test_what_people_write_is_accepted(world, tmp_path, capsys, no_ray):
    """1e-3 (a string to YAML 1.1) is a float, in a file and in --set; a space without a name
    takes its file's. --workers 3 stops the job at its first check after the space loaded."""
    p = tmp_path / "mine.yaml"
    p.write_text("search:\n  lr: 1e-3\n  batch_size: 4\nretrain:\n  lr: 2E-4\n")
    rc, _, err = run(
        capsys, "search", "--space", p, "--set", "search.arch_lr=1e-4", "--workers", "3", "--storage", tmp_path / "runs"
    )
    assert rc == 2
    one_line(err, "search.batch_size 4 is not divisible by --workers 3")
    from nasfe.config import load_space

    assert load_space(p).name == "mine" and load_space(p).search.lr == 1e-3


# ---- broken genotypes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["retrain", "compare", "restore", "export", "evaluate"])
def test_broken_genotype(world, tmp_path, capsys, command, no_ray):
    for case, (blob, needle) in genotype_cases(world["genotype"].to_dict()).items():
        if command == "compare" and case == "other_space":
            continue  # comparing genotypes of different spaces is what compare is for
        g = tmp_path / f"{case}.json"
        g.write_bytes(blob)
        argv = {
            "retrain": ["retrain", "--genotype", g, "--storage", tmp_path / "runs"],
            "compare": ["compare", g, "--no-measure"],
        }.get(command)
        if argv is None:
            argv = _space_args(command, world, Path("tiny"), tmp_path)
            argv[argv.index("--genotype") + 1] = g
        rc, _, err = run(capsys, *argv)
        assert rc == 2, (case, err)
        one_line(err, f"nasfe {command}: error:", str(g), needle)
    assert_nothing_half_written(tmp_path)


# ---- broken, malicious and non-finite trained models ---------------------------------------------------------
def _model_args(command: str, world, model: Path, tmp_path: Path) -> list:
    return {
        "restore": ["restore", model, "-i", world["photos"], "-o", tmp_path / "restored", "--quiet"],
        "export": ["export", model, "--out", tmp_path / "export"],
        "evaluate": [
            "evaluate",
            model,
            "--testsets",
            world["ts"],
            "--out",
            tmp_path / "eval",
            "--quiet",
            "--recognizer",
            "none",
        ],
    }[command]


@pytest.mark.parametrize("command", ["restore", "export", "evaluate"])
@pytest.mark.parametrize(
    "case",
    [
        "random",
        "empty",
        "truncated",
        "json",
        "evil_pickle",
        "version",
        "search_phase",
        "no_weights",
        "wrong_shapes",
        "non_finite",
    ],
)
def test_broken_model_file(world, tmp_path, capsys, command, case):
    model, needle = checkpoint_cases(tmp_path / "models", world["model"])[case]
    rc, _, err = run(capsys, *_model_args(command, world, model, tmp_path))
    assert rc == 2
    one_line(err, f"nasfe {command}: error:", str(model), needle)
    assert not (tmp_path / "models" / "PWNED").exists()  # the pickle's command never ran
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".png", ".onnx", ".ts") or p.name == "results.json"]
    assert_nothing_half_written(tmp_path / "restored", tmp_path / "export", tmp_path / "eval")


# ---- broken images -------------------------------------------------------------------------------------------
def test_restore_skips_and_counts_every_broken_image(world, tmp_path, capsys):
    d = tmp_path / "in"
    bad = write_bad_images(d)
    (d / "good.png").write_bytes(_png_bytes(40, 32))
    (d / "sub.png").mkdir()  # a folder with an image's name is not a file to restore
    rc, out, err = run(capsys, "restore", world["model"], "-i", d, "-o", tmp_path / "out", "--quiet")
    assert rc == 1  # some files failed: said, not silent
    for name in bad:
        assert f"{d / name}: cannot read image" in err, name
    assert f"restored 1 image(s) into {tmp_path / 'out'}" in out and f"{len(bad)} unreadable" in out
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")] == ["good.png"]
    assert_nothing_half_written(tmp_path / "out")


def test_restore_with_unreadable_references(world, tmp_path, capsys):
    refs = tmp_path / "refs"
    write_bad_images(refs)
    rc, _, err = run(
        capsys, "restore", world["model"], "-i", world["photos"], "-o", tmp_path / "out", "--refs", refs, "--quiet"
    )
    assert rc == 2
    assert f"none of {len(bad_image_files())} reference file(s) could be read" in err.splitlines()[-1]
    assert "reference skipped" in err


def test_testsets_skips_and_counts_unreadable_faces(world, tmp_path, capsys):
    faces = tmp_path / "faces"
    for i in range(3):
        (faces / f"id{i}").mkdir(parents=True)
        (faces / f"id{i}" / "ok.png").write_bytes(_png_bytes(48, 40, seed=i))
    write_bad_images(faces / "id9")
    rc, out, err = run(
        capsys,
        "testsets",
        "--faces",
        faces,
        "--out",
        tmp_path / "ts",
        "--sets",
        "Test-N",
        "--images",
        "100",
        "--seed",
        "1",
    )
    assert rc == 0 and "Test-N: 18 images" in out
    m = json.loads((tmp_path / "ts" / "manifest.json").read_text())
    assert len(m["clean"]) == 3 and len(m["skipped_faces"]) == len(bad_image_files())
    assert f"skipped {len(bad_image_files())} unreadable face file(s)" in err
    rc, out, _ = run(capsys, "testsets", "--verify", "--out", tmp_path / "ts")
    assert rc == 0
    assert_nothing_half_written(tmp_path / "ts")


def test_testsets_from_a_folder_of_nothing_but_broken_faces(tmp_path, capsys):
    write_bad_images(tmp_path / "faces" / "id0")
    rc, _, err = run(capsys, "testsets", "--faces", tmp_path / "faces", "--out", tmp_path / "ts")
    assert rc == 2
    assert "could be read" in err.splitlines()[-1] or "cannot read" in err.splitlines()[-1]
    assert not (tmp_path / "ts" / "manifest.json").exists()


def test_evaluate_counts_unreadable_faces_of_its_face_folder(world, tmp_path, capsys):
    import shutil

    faces = tmp_path / "faces"
    shutil.copytree(world["faces"], faces)
    write_bad_images(faces / "id0")
    rc, _, _ = run(
        capsys,
        "evaluate",
        world["model"],
        "--testsets",
        world["ts"],
        "--faces",
        faces,
        "--out",
        tmp_path / "eval",
        "--quiet",
        "--recognizer",
        "none",
        "--max-images",
        "4",
        "--baselines",
        "input",
    )
    assert rc == 0
    info = json.loads((tmp_path / "eval" / "results.json").read_text())["info"]
    # faces are read when a gallery image or reference needs them: each one that failed is listed
    assert info["unreadable_face_files"] and all("/id0/" in m for m in info["unreadable_face_files"])
    assert_nothing_half_written(tmp_path / "eval")


@pytest.mark.parametrize("name", sorted(bad_image_files()))
def test_every_broken_image_is_an_image_read_error_naming_the_file(tmp_path, name):
    write_bad_images(tmp_path)
    with pytest.raises(ImageReadError, match=name):
        read_image(tmp_path / name)


# ---- test-set folders --------------------------------------------------------------------------------------
def test_testsets_manifest_and_build_files_broken(world, tmp_path, capsys):
    import shutil

    for what, edit, needle in [
        ("manifest", lambda d: (d / "manifest.json").write_text("{ truncated"), "not valid JSON"),
        ("manifest", lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe\x00garbage"), "not valid JSON"),
        ("manifest", lambda d: (d / "manifest.json").write_text("[]"), "not a version-1 test-set manifest"),
        ("image", lambda d: (d / "Test-N" / "000003.png").write_bytes(b""), "checksum does not match"),
        ("image", lambda d: (d / "clean" / "0001.png").unlink(), "missing"),
    ]:
        d = tmp_path / "ts"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(world["ts"], d)
        edit(d)
        rc, _, err = run(capsys, "testsets", "--verify", "--out", d)
        assert rc == 2, (what, err)
        one_line(err, needle)
        rc, _, err = run(
            capsys,
            "evaluate",
            world["model"],
            "--testsets",
            d,
            "--out",
            tmp_path / "eval",
            "--quiet",
            "--recognizer",
            "none",
        )
        if what == "manifest":
            assert rc == 2
            one_line(err, "manifest.json")
    d = tmp_path / "ts2"
    shutil.copytree(world["ts"], d)
    (d / "build.json").write_text("{ truncated")
    rc, _, err = run(capsys, "testsets", "--faces", world["faces"], "--out", d, "--images", "2", "--sets", "Test-N")
    assert rc == 2
    one_line(err, "build.json: not valid JSON")


def test_two_builds_into_one_folder_at_once(world, tmp_path):
    out = tmp_path / "ts"
    argv = [
        sys.executable,
        "-m",
        "nasfe.cli",
        "testsets",
        "--faces",
        str(world["faces"]),
        "--out",
        str(out),
        "--images",
        "2",
        "--seed",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {
        s: subprocess.Popen(argv + ["--sets", s], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for s in ("Test-N", "Test-L")
    }
    done = {s: (p.wait(timeout=300), p.stderr.read()) for s, p in procs.items()}
    built = {s for s, (rc, _) in done.items() if rc == 0}
    for rc, err in done.values():
        assert "Traceback" not in err
        assert rc == 0 or (rc == 2 and "is in use by pid" in err), err
    assert built  # at least one finished; a refused one said so in one line
    m = json.loads((out / "manifest.json").read_text())
    assert built <= set(m["sets"])  # every set whose build exited 0 is in the manifest
    from nasfe.data.testsets import verify_testsets

    assert verify_testsets(out)


# ---- runs to resume ----------------------------------------------------------------------------------------
def _run_folder(tmp_path, name, files: dict[str, bytes], snapshot: str | None = None) -> Path:
    root = tmp_path / "runs" / name / "ray" / "search"
    for rel, blob in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(blob)
    if snapshot is not None:
        (root / "checkpoint_manager_snapshot.json").write_text(snapshot)
    return root


def _search_checkpoint(space, step=2) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(
        {
            "checkpoint_version": 1,
            "phase": "search",
            "step": step,
            "epoch": 1,
            "model": {},
            "optimizers": {},
            "space": space.to_dict(),
        },
        buf,
    )
    return buf.getvalue()


def test_runs_that_cannot_resume_say_so_before_ray(world, tmp_path, capsys, no_ray):
    from nasfe.config import load_space

    tiny = load_space("tiny")
    other = load_space("tiny", {"model.blocks": 3})
    ok = _search_checkpoint(tiny)
    cases = {
        "garbage": ({"checkpoint_a/search_step_00000002.pt": b"garbage"}, None, "not a readable nasfe checkpoint"),
        "evil": (
            {"checkpoint_a/search_step_00000002.pt": pickle.dumps(Evil(tmp_path / "PWNED"))},
            None,
            "not a readable nasfe checkpoint",
        ),
        "other_space": (
            {"checkpoint_a/search_step_00000002.pt": _search_checkpoint(other)},
            None,
            "made for model space",
        ),
        "record_points_at_garbage": (
            {"checkpoint_a/search_step_00000002.pt": b"garbage"},
            json.dumps(
                {
                    "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}],
                    "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_a"},
                }
            ),
            "not a readable nasfe checkpoint",
        ),
    }
    for name, (files, snap, needle) in cases.items():
        _run_folder(tmp_path, name, files, snap)
        rc, _, err = run(capsys, "search", "--name", name, "--storage", tmp_path / "runs", "--wandb-mode", "disabled")
        assert rc == 2, name
        one_line(err, needle)
    assert not (tmp_path / "PWNED").exists()
    # resumable ones get past every check (Ray would start next): a truncated record, a half-written copy
    for name, files, snap in [
        ("truncated_record", {"checkpoint_a/search_step_00000002.pt": ok}, '{"checkpoint_results": [{"che'),
        (
            "half_written_newest",
            {"checkpoint_a/search_step_00000002.pt": ok, "checkpoint_b/search_step_00000004.pt": ok[:500]},
            json.dumps(
                {
                    "checkpoint_results": [{"checkpoint_dir_name": "checkpoint_a"}],
                    "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_a"},
                }
            ),
        ),
    ]:
        _run_folder(tmp_path, name, files, snap)
        with pytest.raises(StopBeforeRay):
            cli(["search", "--name", name, "--storage", str(tmp_path / "runs"), "--wandb-mode", "disabled"])
        capsys.readouterr()


# ---- a folder that cannot be written ----------------------------------------------------------------------
def test_read_only_output_folder(world, readonly_dir, tmp_path, capsys, no_ray):
    w, ro = world, readonly_dir
    cases = {
        "restore": ["restore", w["model"], "-i", w["photos"], "-o", ro / "out", "--quiet"],
        "testsets": ["testsets", "--faces", w["faces"], "--out", ro / "ts", "--images", "2", "--sets", "Test-N"],
        "evaluate": [
            "evaluate",
            w["model"],
            "--testsets",
            w["ts"],
            "--out",
            ro / "eval",
            "--quiet",
            "--recognizer",
            "none",
        ],
        "export": ["export", w["model"], "--out", ro / "export"],
        "compare": ["compare", w["genotype_json"], "--no-measure", "--out", ro / "cmp"],
        "search": ["search", "--storage", ro, "--name", "x", "--wandb-mode", "disabled"],
        "retrain": ["retrain", "--storage", ro, "--name", "x", "--genotype", w["genotype_json"]],
        "ablation": ["ablation", "--out", ro / "ab", "--search-epochs", "1", "--retrain-epochs", "1", "--quiet"],
    }
    for command, argv in cases.items():
        rc, _, err = run(capsys, *argv)
        assert rc == 2, (command, err)
        one_line(err, f"nasfe {command}: error:", str(ro))
    assert list(ro.iterdir()) == []


# ---- a full disk -------------------------------------------------------------------------------------------
def test_full_disk(world, full_dir, tmp_path, capsys):
    photos = tmp_path / "many"
    for j in range(12):
        photos.mkdir(exist_ok=True)
        (photos / f"p{j:02d}.png").write_bytes(_png_bytes(64, 56, seed=j))
    rc, _, err = run(capsys, "restore", world["model"], "-i", photos, "-o", full_dir / "out", "--quiet")
    assert rc == 2
    one_line(err, "No space left on device", str(full_dir / "out"))
    assert_nothing_half_written(full_dir)
    for p in list(full_dir.rglob("*")):
        if p.is_file():
            p.unlink()
    rc, _, err = run(
        capsys, "testsets", "--faces", world["faces"], "--out", full_dir / "ts", "--images", "2", "--sets", "Test-B"
    )
    assert rc == 2
    one_line(err, "No space left on device")
    assert not (full_dir / "ts" / "manifest.json").exists()
    assert_nothing_half_written(full_dir)
    for p in list(full_dir.rglob("*")):
        if p.is_file():
            p.unlink()
    rc, _, err = run(capsys, "export", world["model"], "--out", full_dir / "export", "--no-onnx")
    assert rc == 2
    one_line(err, "No space left on device")
    assert_nothing_half_written(full_dir)


def test_full_disk_during_training_leaves_no_half_checkpoint(full_dir):
    from nasfe.config import load_space
    from nasfe.engine.search import run_search
    from nasfe.errors import WriteError

    space = load_space("tiny", {"search.epochs": 1, "search.steps_per_epoch": 1, "search.warmup_epochs": 0})
    with pytest.raises(WriteError, match="No space left on device"):
        run_search(space, full_dir / "run")
    assert not list((full_dir / "run" / "checkpoints").glob("search_step_*.pt"))
    assert_nothing_half_written(full_dir)


# ---- every command, once as a real process ------------------------------------------------------------------
@pytest.mark.slow
def test_one_bad_input_per_command_in_a_real_process(world, tmp_path):
    latin1 = write_yaml(tmp_path, "latin1")
    bad_json = tmp_path / "g.json"
    bad_json.write_text("{ nope")
    bad_pt = tmp_path / "m.pt"
    bad_pt.write_bytes(b"junk")
    (tmp_path / "empty").mkdir()
    cases = {
        "testsets": (["--verify", "--out", tmp_path / "empty"], "manifest not found"),
        "search": (["--space", latin1, "--storage", tmp_path], "not UTF-8"),
        "retrain": (["--genotype", bad_json, "--storage", tmp_path], "not valid JSON"),
        "sweep": (["--sweep", latin1, "--storage", tmp_path], "not UTF-8"),
        "compare": ([bad_json, "--no-measure"], "not valid JSON"),
        "evaluate": ([bad_pt, "--testsets", world["ts"], "--out", tmp_path / "e"], "not a readable nasfe checkpoint"),
        "restore": ([bad_pt, "-i", world["photos"], "-o", tmp_path / "r"], "not a readable nasfe checkpoint"),
        "export": ([bad_pt, "--out", tmp_path / "x"], "not a readable nasfe checkpoint"),
        "ablation": (
            ["--space", latin1, "--out", tmp_path / "a", "--search-epochs", "1", "--retrain-epochs", "1"],
            "not UTF-8",
        ),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {
        c: subprocess.Popen(
            [sys.executable, "-m", "nasfe.cli", c, *map(str, a)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c, (a, _) in cases.items()
    }
    for command, p in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 2, (command, err)
        one_line(err, f"nasfe {command}: error:", cases[command][1])


# ---- nothing of the user's replaced; every number, path and mode checked before work ----------------------
def _jpeg(path: Path, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(path, format="JPEG")


def test_restore_never_replaces_a_file_it_did_not_write(world, tmp_path, capsys):
    d = tmp_path / "dir"
    _jpeg(d / "a.jpg")
    (d / "a.png").write_bytes(b"the user's own a.png, nothing to do with a.jpg")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    args = [
        "restore",
        world["model"],
        "--space",
        world["space"].source,
        "--genotype",
        world["genotype_json"],
        "--device",
        "cpu",
        "--quiet",
    ]
    rc, _, err = run(capsys, *args, "-i", d / "a.jpg", "-o", d)
    assert rc == 2
    one_line(err, "nasfe restore: error:", str(d / "a.png"), "already exists")
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing replaced, nothing added

    # its own earlier outputs are replaced on a re-run; one the user changed since is not
    out = tmp_path / "out"
    assert run(capsys, *args, "-i", world["photos"], "-o", out)[0] == 0
    assert run(capsys, *args, "-i", world["photos"], "-o", out)[0] == 0
    (out / "p1.png").write_bytes(_png_bytes(40, 32, seed=7))
    edited = (out / "p1.png").read_bytes()
    rc, _, err = run(capsys, *args, "-i", world["photos"], "-o", out)
    assert rc == 2
    one_line(err, str(out / "p1.png"), "already exists")
    assert (out / "p1.png").read_bytes() == edited


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.channels=1000000000000", "model.channels"),
        ("data.height=100000", "data.height"),
        ("degrade.motion_kernels=-5", "degrade.motion_kernels"),
        ("search.steps_per_epoch=0", "search.steps_per_epoch"),
        ("loss.lambda_per=-1", "loss.lambda_per"),
        ("data.synthetic_identities=0", "data.synthetic_identities"),
        ("data.synthetic_identities=1", "data.synthetic_identities"),
        ("retrain.epochs=-1", "retrain.epochs"),
    ],
)
def test_space_numbers_out_of_range_are_one_line_before_ray(tmp_path, capsys, override, field, no_ray):
    rc, _, err = run(capsys, "search", "--set", override, "--storage", tmp_path, "--wandb-mode", "disabled")
    assert rc == 2
    one_line(err, "nasfe search: error:", field)


@pytest.mark.parametrize("command", ["search", "retrain"])
def test_epochs_minus_one_is_one_line_before_ray(world, tmp_path, capsys, command, no_ray):
    extra = ["--genotype", world["genotype_json"]] if command == "retrain" else []
    rc, _, err = run(capsys, command, "--epochs", "-1", *extra, "--storage", tmp_path, "--wandb-mode", "disabled")
    assert rc == 2
    one_line(err, f"nasfe {command}: error:", "epochs = -1")


@pytest.mark.parametrize(
    "case, text, says",
    [
        ("duplicate_key", "model:\n  channels: 8\nsearch:\n  epochs: 2\nmodel:\n  blocks: 2\n", "appears twice"),
        ("nested_5000", "model: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
        ("nested_mappings", "".join("  " * i + f"k{i}:\n" for i in range(3000)), "nested more than"),
    ],
)
def test_yaml_with_a_repeated_key_or_nested_too_deep_is_one_line(tmp_path, capsys, case, text, says, no_ray):
    space = tmp_path / f"{case}.yaml"
    space.write_text(text)
    rc, _, err = run(capsys, "search", "--space", space, "--storage", tmp_path, "--wandb-mode", "disabled")
    assert rc == 2
    one_line(err, "nasfe search: error:", str(space), says)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--name", ""], "run name ''"),
        (["--max-failures", "-1"], "--max-failures -1"),
        (["--eval-images", "-1"], "--eval-images -1"),
        (["--workers", "100000"], "--workers 100000"),
        (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1"),
    ],
)
def test_job_flags_are_checked_before_ray(tmp_path, capsys, flags, says, no_ray):
    import time

    t0 = time.monotonic()
    rc, _, err = run(capsys, "search", *flags, "--storage", tmp_path, "--wandb-mode", "disabled")
    assert rc == 2
    one_line(err, "nasfe search: error:", says)
    assert time.monotonic() - t0 < 60  # bounded: no Ray retries behind an unreachable address


def test_gpus_yes_without_a_gpu_or_a_cluster_that_declares_one_is_one_line(tmp_path, capsys, monkeypatch, no_ray):
    import nasfe.distributed.search_job as sj

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    # no cluster to join, whatever else runs on this node (search_job holds its own name for it)
    monkeypatch.setattr(sj, "ray_address", lambda address: address)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("NASFE_CLUSTER_CONFIG", str(tmp_path / "no-cluster.yaml"))
    monkeypatch.delenv("NASFE_GPUS_PER_WORKER", raising=False)
    rc, _, err = run(capsys, "search", "--gpus", "yes", "--storage", tmp_path, "--wandb-mode", "disabled")
    assert rc == 2
    one_line(err, "nasfe search: error:", "--gpus yes asks for GPUs")


@pytest.mark.parametrize(
    "source, says", [("celeba", "not the official CelebA layout"), ("vggface2", "not the VGGFace2 layout")]
)
def test_a_face_folder_of_another_layout_is_one_line_before_ray(world, tmp_path, capsys, source, says, no_ray):
    rc, _, err = run(
        capsys,
        "search",
        "--data",
        world["faces"],
        "--data-source",
        source,
        "--storage",
        tmp_path,
        "--wandb-mode",
        "disabled",
    )
    assert rc == 2
    one_line(err, "nasfe search: error:", str(world["faces"]), says)


def test_export_height_zero_is_one_line_and_writes_nothing(world, tmp_path, capsys):
    out = tmp_path / "export"
    rc, _, err = run(
        capsys,
        "export",
        world["model"],
        "--space",
        world["space"].source,
        "--genotype",
        world["genotype_json"],
        "--out",
        out,
        "--height",
        "0",
    )
    assert rc == 2
    one_line(err, "nasfe export: error:", "--height 0")
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


def test_a_failed_export_leaves_no_model_file(world, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "export"
    rc, _, err = run(
        capsys,
        "export",
        world["model"],
        "--space",
        world["space"].source,
        "--genotype",
        world["genotype_json"],
        "--out",
        out,
        "--atol",
        "1e-30",
    )  # no float32 export is this close
    assert rc == 2
    one_line(err, "nasfe export: error:", "differ from PyTorch")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []  # no model.onnx, model.ts
    rc, _, err = run(
        capsys,
        "export",
        world["model"],
        "--space",
        world["space"].source,
        "--genotype",
        world["genotype_json"],
        "--out",
        out,
        "--atol",
        "-2.47",
    )
    assert rc == 2
    one_line(err, "nasfe export: error:", "--atol -2.47")


def test_an_out_that_is_a_file_or_inside_an_input_is_one_line(world, tmp_path, capsys):
    a_file = tmp_path / "report.txt"
    a_file.write_text("the user's file")
    rc, _, err = run(capsys, "compare", world["genotype_json"], "--no-measure", "--out", a_file)
    assert rc == 2
    one_line(err, "nasfe compare: error:", str(a_file), "a file, not a folder")
    assert a_file.read_text() == "the user's file"

    faces = tmp_path / "faces"
    import shutil

    shutil.copytree(world["faces"], faces)
    before = sorted(p.relative_to(faces) for p in faces.rglob("*"))
    rc, _, err = run(capsys, "testsets", "--faces", faces, "--out", faces / "sets", "--sets", "Test-N", "--images", "2")
    assert rc == 2
    one_line(err, "nasfe testsets: error:", "inside --faces")
    assert sorted(p.relative_to(faces) for p in faces.rglob("*")) == before

    photos = tmp_path / "photos"
    shutil.copytree(world["photos"], photos)
    rc, _, err = run(
        capsys,
        "restore",
        world["model"],
        "--space",
        world["space"].source,
        "--genotype",
        world["genotype_json"],
        "-i",
        photos,
        "-o",
        photos / "restored",
        "--recursive",
        "--quiet",
    )
    assert rc == 2
    one_line(err, "nasfe restore: error:", "inside --input")
    assert not (photos / "restored").exists()


# ---- test sets verified by content ---------------------------------------------------------------------------
def _copy_sets(world, tmp_path) -> tuple[Path, dict]:
    import shutil

    ts = tmp_path / "ts"
    shutil.copytree(world["ts"], ts)
    return ts, json.loads((ts / "manifest.json").read_text())


def test_verify_finds_an_image_swapped_for_another_with_its_checksum_updated(world, tmp_path, capsys):
    ts, m = _copy_sets(world, tmp_path)
    rows = m["sets"]["Test-N"]
    a, b = ts / rows[0]["file"], ts / rows[-1]["file"]
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    import hashlib

    rows[0]["sha256"], rows[-1]["sha256"] = (hashlib.sha256(b_bytes).hexdigest(), hashlib.sha256(a_bytes).hexdigest())
    (ts / "manifest.json").write_text(json.dumps(m))
    rc, _, err = run(capsys, "testsets", "--verify", "--out", ts)
    assert rc == 2
    one_line(err, "nasfe testsets: error:", rows[0]["file"], "not the image the build makes")


def test_verify_finds_a_replaced_kernel_bank(world, tmp_path, capsys):
    from nasfe.data.testsets import test_bank

    ts, m = _copy_sets(world, tmp_path)
    test_bank(m["settings"]["seed"] + 1).save(ts / "kernels.pt")  # a valid bank, of another seed
    rc, _, err = run(capsys, "testsets", "--verify", "--out", ts)
    assert rc == 2
    one_line(err, "nasfe testsets: error:", "kernels.pt", "not the test kernels")


def test_evaluate_checks_every_checksum_before_it_scores(world, tmp_path, capsys):
    ts, m = _copy_sets(world, tmp_path)
    victim = ts / m["sets"]["Test-N"][1]["file"]
    victim.write_bytes(_png_bytes(48, 40, seed=99))  # a readable image, not the one the manifest lists
    out = tmp_path / "eval"
    rc, _, err = run(
        capsys,
        "evaluate",
        "--weights",
        world["model"],
        "--space",
        world["space"].source,
        "--genotype",
        world["genotype_json"],
        "--testsets",
        ts,
        "--out",
        out,
        "--quiet",
        "--recognizer",
        "none",
    )
    assert rc == 2
    one_line(err, "nasfe evaluate: error:", str(victim), "checksum does not match")
    assert not (out / "results.json").exists()


# ---- a killed driver leaves no Ray process ---------------------------------------------------------------------
def _stat(pid: int):
    """(state, parent, start time) of a process, or None when it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return f[0], int(f[1]), f[19]
    except (OSError, IndexError, ValueError):
        return None


def _ray_processes(marker: str) -> dict[tuple[int, str], str]:
    """(pid, start time) -> command of every live process naming ``marker`` on its command line,
    and of every process below them."""
    procs: dict[int, tuple] = {}
    for d in Path("/proc").iterdir():
        st = _stat(int(d.name)) if d.name.isdigit() else None
        if st is not None and st[0] != "Z":
            try:
                procs[int(d.name)] = (st, (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    found = {p for p, (_, cmd) in procs.items() if marker in cmd}
    while True:
        below = {p for p, (st, _) in procs.items() if st[1] in found} - found
        if not below:
            return {(p, procs[p][0][2]): procs[p][1] for p in found}
        found |= below


def _alive(pid: int, started: str) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == started and st[0] != "Z"


@pytest.mark.drill
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_killed_driver_leaves_no_ray_process(tmp_path):
    import signal
    import tempfile
    import time

    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    ray_tmp = tempfile.mkdtemp(prefix="nk", dir="/tmp")  # short: Ray's socket paths; and no other cluster in it
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nasfe.cli",
            "search",
            "--no-retrain",
            "--workers",
            "1",
            "--storage",
            str(tmp_path / "runs"),
            "--name",
            "killed",
            "--wandb-mode",
            "disabled",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # the local instance is up and its watchdog started (it names the session folder too)
            procs = _ray_processes(ray_tmp)
            if any("raylet" in c for c in procs.values()) and any(
                "stops the local Ray instance" in c for c in procs.values()
            ):
                break
            assert driver.poll() is None, "the driver ended before its Ray instance was up"
            assert time.monotonic() < deadline, "no local Ray instance after 300 s"
            time.sleep(1)
        time.sleep(2)
        before = _ray_processes(ray_tmp)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 120
    left = before
    while left and time.monotonic() < deadline:
        time.sleep(1)
        left = {k: c for k, c in before.items() if _alive(*k)}
    for pid, started in left:  # stop what the test started, by pid, before failing
        if _alive(pid, started):
            os.kill(pid, signal.SIGKILL)
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not left, "\n".join(f"{p}: {c[:160]}" for (p, _), c in left.items())
