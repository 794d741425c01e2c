"""docs/BENCHMARKS.md is generated: scripts/assemble_benchmarks.sh makes it from every docs/bench_parts/*.md.

Each test runs the script on a copy of scripts/ and docs/bench_parts/ in a temporary folder, so the
repository's files are never rewritten.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ROOT / "docs" / "bench_parts"
COMMITTED = ROOT / "docs" / "BENCHMARKS.md"


def _tree(tmp_path: Path) -> Path:
    """A copy of what the script reads: itself and the parts."""
    (tmp_path / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "assemble_benchmarks.sh", tmp_path / "scripts")
    shutil.copytree(PARTS, tmp_path / "docs" / "bench_parts")
    return tmp_path


def _assemble(tree: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(tree / "scripts" / "assemble_benchmarks.sh"), *args], capture_output=True, text=True, timeout=60
    )


def _without_heading_marks(text: str) -> str:
    # the script may nest a part's headings one level deeper; compare the text under them
    return re.sub(r"(?m)^#+ ", "", text)


def _titles(text: str) -> list[str]:
    """Level-1 headings outside code fences."""
    titles, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("# "):
            titles.append(line)
    return titles


def test_committed_benchmarks_is_what_the_parts_assemble_to(tmp_path):
    tree = _tree(tmp_path)
    done = _assemble(tree)
    assert done.returncode == 0, done.stderr
    assembled = (tree / "docs" / "BENCHMARKS.md").read_text()
    assert assembled == COMMITTED.read_text(), (
        "docs/BENCHMARKS.md differs from its parts: run `bash scripts/assemble_benchmarks.sh` and commit it"
    )


def test_every_part_appears_whole_in_the_assembled_file(tmp_path):
    out = tmp_path / "out.md"
    done = _assemble(_tree(tmp_path / "tree"), str(out))
    assert done.returncode == 0, done.stderr
    assembled = _without_heading_marks(out.read_text())
    parts = sorted(PARTS.glob("*.md"))
    assert parts
    for part in parts:
        assert _without_heading_marks(part.read_text()) in assembled, f"{part.name} is not in BENCHMARKS.md"
    assert _titles(out.read_text()) == ["# Benchmarks"], "a part added a second title"


def test_a_part_left_out_of_the_order_stops_the_script(tmp_path):
    tree = _tree(tmp_path)
    (tree / "docs" / "bench_parts" / "new_room.md").write_text("## New room\n\nnumbers\n")
    done = _assemble(tree)
    assert done.returncode == 1
    assert "new_room.md" in done.stderr and "PARTS" in done.stderr
    assert not (tree / "docs" / "BENCHMARKS.md").exists()


def test_a_listed_part_that_is_gone_stops_the_script(tmp_path):
    tree = _tree(tmp_path)
    (tree / "docs" / "bench_parts" / "ray.md").unlink()
    done = _assemble(tree)
    assert done.returncode == 1
    assert "ray" in done.stderr
    assert not (tree / "docs" / "BENCHMARKS.md").exists()
