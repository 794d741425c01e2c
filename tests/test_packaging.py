"""A normal (non-editable) install carries the search spaces, and the job scripts run from any
directory against it, as ``ray submit`` runs them (the script alone, in the home directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --target <tmp> .`` of a copy of this checkout."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    for folder in ("nasfe", "search_spaces"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def _run(installed: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(installed)  # the installed copy only, never this checkout
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_ships_every_search_space(installed):
    shipped = sorted(p.name for p in (installed / "nasfe" / "search_spaces").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml"))
    assert {"paper.yaml", "tiny.yaml", "bn.yaml"} <= set(shipped)


def test_spaces_resolve_from_any_directory(installed, tmp_path):
    (tmp_path / "mine.yaml").write_text((REPO / "search_spaces" / "tiny.yaml").read_text())
    code = (
        "import nasfe.config as c, nasfe.distributed.sweep_space as s; "
        "print(c.load_space('paper').name, c.load_space('search_spaces/paper.yaml').name, "
        "c.load_space('mine.yaml').name, s.load_sweep('tiny').name, c.__file__)"
    )
    out = _run(installed, tmp_path, "-c", code)
    assert out.returncode == 0, out.stderr
    paper, paper_rel, mine, sweep, where = out.stdout.split()
    assert (paper, paper_rel, mine, sweep) == ("paper", "paper", "tiny", "tiny")
    assert where.startswith(str(installed))


@pytest.mark.slow  # a fresh interpreter importing the whole package and Ray
def test_job_script_alone_in_an_empty_directory_shows_help(installed, tmp_path):
    shutil.copy2(REPO / "jobs" / "search.py", tmp_path / "search.py")
    out = _run(installed, tmp_path, "search.py", "--space", "paper", "--help")
    assert out.returncode == 0, out.stderr
    assert "--gpus-per-worker" in out.stdout
    bad = _run(installed, tmp_path, "search.py", "--space", "nope", "--workers", "1")
    assert bad.returncode == 2 and "not one of ['bn', " in bad.stderr and "'paper'" in bad.stderr


def test_the_wheel_ships_the_default_model(installed, tmp_path):
    pre = installed / "nasfe" / "pretrained"
    assert (pre / "cpu_default.pt").is_file() and (pre / "NOTICE").is_file()
    from PIL import Image

    Image.new("RGB", (40, 48), (30, 20, 10)).save(tmp_path / "photo.jpg")
    out = _run(
        installed, tmp_path, "-m", "nasfe.cli", "restore", "-i", "photo.jpg", "-o", "out", "--quiet", "--device", "cpu"
    )
    assert out.returncode == 0, out.stderr
    assert str(pre / "cpu_default.pt") in out.stderr and (tmp_path / "out" / "photo.png").is_file()


@pytest.mark.slow
def test_job_script_alone_runs_the_tiny_space(installed, tmp_path):
    shutil.copy2(REPO / "jobs" / "search.py", tmp_path / "search.py")
    out = _run(
        installed,
        tmp_path,
        "search.py",
        "--",
        "--space",
        "tiny",
        "--workers",
        "1",
        "--epochs",
        "1",
        "--retrain-epochs",
        "1",
        "--eval-images",
        "4",
        "--wandb-mode",
        "disabled",
        "--name",
        "alone",
        timeout=900,
    )  # 100 s idle; the margin is for a loaded CI host
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "derived:" in out.stdout and "restored" in out.stdout
    assert (tmp_path / "runs" / "alone" / "genotype.json").is_file()
