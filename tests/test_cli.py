"""The `nasfe` command line: every command is reachable and user errors are one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nasfe.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nasfe {command}")
    assert "--verbose" in out


def test_no_command_prints_the_command_list(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "manifest-less"
    bad.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "nasfe.cli", "testsets", "--verify", "--out", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
