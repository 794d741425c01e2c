"""A reused run/sweep name with other settings is refused in one line naming the fields (before Ray starts)."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from nasfe.cli import main as cli_main
from nasfe.config import load_space
from nasfe.distributed.sweep_space import load_sweep

UNREACHABLE = "127.0.0.1:1"  # were the check missing, the command would fail later, joining no cluster


def _one_line(capsys):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


def test_sweep_name_rerun_with_other_settings_is_refused(tmp_path, capsys):
    saved = tmp_path / "s"
    saved.mkdir()
    (saved / "sweep.yaml").write_text(yaml.safe_dump(load_sweep("tiny").to_dict(), sort_keys=False))
    rc = cli_main(
        ["sweep", "--storage", str(tmp_path), "--name", "s", "--set", "loss.lambda_per=0.5", "--address", UNREACHABLE]
    )
    line = _one_line(capsys)
    assert rc == 2 and line.startswith("nasfe sweep: error:")
    assert "overrides.loss.lambda_per: '(unset)' -> 0.5" in line and "--no-resume" in line
    rc = cli_main(["sweep", "--storage", str(tmp_path), "--name", "s", "--num-samples", "9", "--address", UNREACHABLE])
    assert rc == 2 and "num_samples: 4 -> 9" in _one_line(capsys)


def test_sweep_may_change_max_concurrent_on_resume(tmp_path):
    from nasfe.distributed.sweep import check_same_sweep
    from nasfe.distributed.sweep_job import _apply_cli, preflight

    sweep = load_sweep("tiny")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.yaml").write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    args = argparse.Namespace(
        num_samples=None,
        max_concurrent=3,
        optuna_storage=None,
        overrides=[],
        storage=str(tmp_path),
        name="s",
        resume=True,
    )
    changed = _apply_cli(sweep, args)
    assert changed.max_concurrent == 3
    preflight(changed, args)  # not refused
    check_same_sweep(changed, tmp_path / "s")


# `nasfe retrain --name X` reuses a searched run's storage: with another retrain.lr it used to
# resume X's finished retrain and report its old model as if trained with the new setting
@pytest.mark.parametrize(
    "command, override, diff",
    [
        ("search", "loss.lambda_per=0.5", "space.loss.lambda_per: 0.04 -> 0.5"),
        ("retrain", "retrain.lr=0.5", "space.retrain.lr: 0.0005 -> 0.5"),
    ],
)
def test_run_name_rerun_with_other_settings_is_refused(tmp_path, capsys, monkeypatch, command, override, diff):
    import nasfe.distributed.search_job as sj

    def no_cluster(*_):  # were the check missing, the command would go on to join a cluster
        raise AssertionError("the job got past its checks to Ray")

    monkeypatch.setattr(sj, "open_cluster", no_cluster)
    run = tmp_path / "r"
    run.mkdir()
    (run / "run_settings.json").write_text(json.dumps({"space": load_space("tiny").to_dict()}))
    rc = cli_main([command, "--storage", str(tmp_path), "--name", "r", "--set", override])
    line = _one_line(capsys)
    assert rc == 2 and line.startswith(f"nasfe {command}: error:")
    assert diff in line and "--no-resume" in line


@pytest.mark.parametrize("uri", [False, True], ids=["local", "uri"])
def test_search_settings_are_recorded_and_replaced_by_no_resume(tmp_path, uri):
    from nasfe.distributed.cluster import RunStorage
    from nasfe.distributed.run_identity import check_job_run
    from nasfe.errors import CommandError

    # a URI goes through the pyarrow filesystem path that s3:// storage takes
    storage = RunStorage.create(tmp_path.as_uri() if uri else str(tmp_path), "r")
    assert storage.is_local is not uri
    (tmp_path / "r").mkdir()  # S3 has no folders; pyarrow's local filesystem needs this one
    space = load_space("tiny")
    check_job_run(storage, space, resume=True)  # first start: recorded
    check_job_run(storage, space, resume=True)  # same settings: resumes
    other = load_space("tiny", {"search.lr": 1e-3, "model.blocks": 3})
    with pytest.raises(CommandError) as exc:
        check_job_run(storage, other, resume=True)
    assert "space.model.blocks: 2 -> 3" in str(exc.value) and "space.search.lr: 0.0005 -> 0.001" in str(exc.value)
    check_job_run(storage, other, resume=False)  # --no-resume: starts over with these
    check_job_run(storage, other, resume=True)
