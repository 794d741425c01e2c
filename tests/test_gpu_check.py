"""benchmarks/gpu_check.py never rots: --prepare makes a carry-sized, identity-disjoint face folder,
and --smoke runs every part (a-e, compile) on the CPU with Ray, W&B, Optuna and albumentations
unimportable, as on the GPU machine that has none of them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
ABSENT = ("ray", "wandb", "optuna", "albumentations")


def _env(tmp: Path) -> dict:
    """PYTHONPATH with a sitecustomize that makes the modules the device lacks unimportable, in
    this interpreter's children too (DataLoader workers, the compile child)."""
    block = tmp / "block"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in ABSENT))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block), str(ROOT)])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _source(root: Path, identities: int = 12, per: int = 4) -> Path:
    """A face folder like ../shared/data/celeba-id: <identity>/<file>.jpg plus identities.csv."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(identities):
        (root / f"id{i:02d}").mkdir(parents=True)
        for j in range(per):
            rel = f"id{i:02d}/{j:03d}.jpg"
            Image.fromarray(rng.integers(0, 256, (56, 48, 3), dtype=np.uint8)).save(root / rel, quality=90)
            rows.append({"file": rel, "identity": f"id{i:02d}"})
    with open(root / "identities.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "identity"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    src = _source(tmp / "src")
    dest = tmp / "gpu_faces"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--prepare",
            str(dest),
            "--source",
            str(src),
            "--train-images",
            "30",
            "--test-images",
            "3",
            "--max-mib",
            "0.3",
            "--no-weights",
        ],
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, dest, json.loads(proc.stdout)


def _manifest(folder: Path) -> list[dict]:
    with open(folder / "identities.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_copies_identity_disjoint_faces_under_the_cap(prepared):
    _, dest, info = prepared
    train, test = _manifest(dest / "train"), _manifest(dest / "test")
    assert len(train) == info["train_images"] > 0 and len(test) == info["test_images"] == 3
    assert not {r["identity"] for r in train} & {r["identity"] for r in test}
    assert all((dest / "train" / r["file"]).is_file() for r in train)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert size <= 0.3 * 2**20 and info["bytes"] <= size
    per_id: dict[str, int] = {}
    for r in train:
        per_id[r["identity"]] = per_id.get(r["identity"], 0) + 1
    assert min(per_id.values()) >= 2  # every training face has a reference of the same person


def test_script_imports_nothing_the_device_lacks(tmp_path):
    code = (
        "import importlib, sys\n"
        "sys.path.insert(0, 'benchmarks')\n"
        "for m in ('ray', 'wandb', 'optuna', 'albumentations'):\n"
        "    try:\n        importlib.import_module(m)\n    except ImportError:\n        pass\n"
        "    else:\n        raise SystemExit(m + ' was importable: the blocker does not work')\n"
        "import gpu_check, gpu_parts, gpu_faces\n"
        "for m in ('nasfe.engine.search', 'nasfe.engine.retrain', 'nasfe.engine.dist', 'nasfe.data.testsets',\n"
        "          'nasfe.evaluate.baselines', 'nasfe.evaluate.metrics', 'nasfe.degrade.pipeline', 'bench_model'):\n"
        "    importlib.import_module(m)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_smoke_runs_every_part(prepared):
    tmp, dest, _ = prepared
    out = tmp / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--faces", str(dest), "--out", str(out)],
        cwd=ROOT,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("| part | configuration |") == 1  # one table
    rows = json.loads((out / "gpu_check.json").read_text())["rows"]
    bad = [(r["config"], r["status"]) for r in rows if r["status"].startswith(("FAIL", "TIMEOUT", "OOM", "skipped"))]
    assert not bad, bad
    configs = [r["config"] for r in rows if r["part"] != "target"]
    for want in (
        "search step fp32, batch",
        "search step bf16, batch",
        "largest batch that fits",
        "warm-up step fp32",
        "self_attn alone",
        "model.channels_last",
        "retrain step fp32",
        "inference fp32, batch 1",
        "model.compile",
        "degradation",
        "search loop fp32",
        "gloo group of one",
        "retrain genotype",
        "Test-BN: NASFE",
        "Test-BNL: classical",
        "Test-BNL: histeq",
        "Test-BN: input",
    ):
        assert any(want in c for c in configs), f"no row {want!r} in {configs}"
    d = next(r for r in rows if r["part"] == "d")
    assert "all_reduce" in d["note"] and "broadcast" in d["note"]
    attn = [r for r in rows if "self_attn alone" in r["config"]]
    assert all("head 8" in r["note"] for r in attn)  # C/K = 4 padded to a fused-kernel head size
    assert {r["part"] for r in rows} >= {"a", "b", "c", "d", "e", "target"}
    assert (out / "gpu_check.md").read_text().count("| part |") == 1
