"""`nasfe search` / `nasfe retrain` / jobs/*.py: bad input gives one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nasfe.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_clear_line(err: str, needle: str) -> None:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]


def test_missing_data_folder(capsys, tmp_path):
    rc, err = _run(capsys, "search", "--data", str(tmp_path / "nowhere"), "--storage", str(tmp_path))
    assert rc == 2
    _one_clear_line(err, "no such folder")


def test_unknown_search_space(capsys, tmp_path):
    rc, err = _run(capsys, "search", "--space", "no_such_space", "--storage", str(tmp_path))
    assert rc == 2
    _one_clear_line(err, "unknown search space 'no_such_space'")


def test_workers_that_do_not_divide_the_batch(capsys, tmp_path):
    rc, err = _run(capsys, "search", "--workers", "3", "--storage", str(tmp_path))
    assert rc == 2
    _one_clear_line(err, "not divisible by --workers 3")


def test_corrupt_checkpoint_of_a_run_to_resume(capsys, tmp_path):
    ckpt = tmp_path / "runs" / "broken" / "ray" / "search" / "checkpoint_2026-01-01_00-00-00.000000"
    ckpt.mkdir(parents=True)
    (ckpt / "search_step_00000004.pt").write_bytes(b"not a checkpoint at all")
    rc, err = _run(capsys, "search", "--name", "broken", "--storage", str(tmp_path / "runs"))
    assert rc == 2
    _one_clear_line(err, "search_step_00000004.pt: not a readable nasfe checkpoint")


def test_corrupt_genotype_for_retrain(capsys, tmp_path):
    bad = tmp_path / "genotype.json"
    bad.write_text("{ not json")
    rc, err = _run(capsys, "retrain", "--genotype", str(bad), "--storage", str(tmp_path))
    assert rc == 2
    _one_clear_line(err, "not valid JSON")


def test_bad_run_name_and_override(capsys, tmp_path):
    rc, err = _run(capsys, "search", "--name", "../escape", "--storage", str(tmp_path))
    assert rc == 2
    _one_clear_line(err, "run name '../escape'")
    rc, err = _run(capsys, "search", "--set", "search.no_such_knob=1", "--storage", str(tmp_path))
    assert rc == 2
    _one_clear_line(err, "unknown field(s) ['no_such_knob']")


@pytest.mark.parametrize(
    "command, value, needle",
    [
        # a value that is not YAML was a traceback (yaml's error is not one argparse reports)
        ("search", "search.lr=[1e-3", "--set search.lr: the value '[1e-3' is not valid YAML"),
        ("retrain", "=3", "--set expects KEY=VALUE"),
    ],
)
def test_bad_set_flag_is_a_usage_error(capsys, tmp_path, command, value, needle):
    with pytest.raises(SystemExit) as exc:
        main([command, "--set", value, "--storage", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert needle in err.strip().splitlines()[-1]  # argparse: usage line, then the error


@pytest.mark.parametrize("script", ["search", "retrain"])
def test_job_scripts_run_outside_the_cli(tmp_path, script):
    out = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{script}.py"), "--", "--space", "nope.yaml", "--storage", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 2
    _one_clear_line(out.stderr, "nope.yaml: search space file not found")


def test_a_space_files_relative_data_root_reaches_the_workers_absolute(tmp_path, monkeypatch):
    """Ray Train's workers run in another working directory: the job hands them the root resolved."""
    import argparse

    from nasfe.distributed.search_job import load_job_space

    (tmp_path / "faces" / "id0").mkdir(parents=True)
    (tmp_path / "faces" / "id0" / "a.jpg").write_bytes(b"")
    (tmp_path / "space.yaml").write_text("inherit: tiny\ndata: {source: folder, root: faces}\n")
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(space=str(tmp_path / "space.yaml"), data=None, data_source=None, overrides=[])
    space = load_job_space(args)
    assert Path(space.data.root).is_absolute()
    assert Path(space.data.root) == (tmp_path / "faces").resolve()
