"""Which failures a run survives, with real parts: several raylets on this machine, runs and faces on a
local S3 server (moto). A node that vanishes (its raylet and every process under it killed, then a
fresh raylet joining as the autoscaler's replacement would) is retried however often it happens; a
divergence ends the run after its first attempt with its one line. Slow (minutes): CI runs them too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from localcluster import RayCluster, S3Server  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.drill]
pytest.importorskip("moto")
pytest.importorskip("boto3")
if not Path("/proc/self/cmdline").exists():
    pytest.skip("needs /proc to find the test cluster's processes", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
#: the GCS declares a vanished node dead within about 10 s (defaults: about 30 s), with room for a
#: loaded machine's slow answers
FAST_HEALTH = {
    "RAY_health_check_period_ms": "2000",
    "RAY_health_check_timeout_ms": "3000",
    "RAY_health_check_failure_threshold": "4",
}


def _faces(folder: Path) -> Path:
    from nasfe.data.synthetic import synthetic_faces
    from nasfe.imageio import write_png_atomic

    images, ids = synthetic_faces(12, 6, height=48, width=40, seed=5)
    for i, (img, ident) in enumerate(zip(images, ids)):
        write_png_atomic(folder / f"id{ident:02d}" / f"{i:03d}.png", img)
    return folder


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            out.setdefault(ppid, []).append(int(d.name))
    return out


def _tree(pids: list[int]) -> list[int]:
    """``pids`` and every process under them."""
    tree, todo, found = _children(), list(pids), []
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _runs_a_train_worker(pids: list[int]) -> bool:
    """Whether a Ray Train worker runs under ``pids`` (its process title names the actor class)."""
    for pid in _tree(pids):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def _kill_node(pids: list[int]) -> int:
    """SIGKILL ``pids`` and every process under them (a machine that vanishes); returns how many."""
    found = _tree(pids)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return len(found)


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    yield server
    server.stop()


def _add_node(cluster, nodes: Path, label: str) -> list[int]:
    """A 1-CPU raylet with its own data cache; returns the pids it started (raylet and helpers)."""
    before = set(cluster.pids())
    cluster.add_node(
        num_cpus=1,
        env={"NASFE_DATA_CACHE": str(nodes / label / "cache"), "NASFE_WORK_DIR": str(nodes / label / "work")},
    )
    return sorted(set(cluster.pids()) - before)


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """A 1-CPU head and one 1-CPU worker raylet: one Train worker each."""
    nodes = tmp_path_factory.mktemp("nodes")
    env = {
        **s3.env,
        **FAST_HEALTH,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONPATH": str(REPO),
    }
    c = RayCluster(env)
    try:
        c.start_head(
            num_cpus=1,
            env={"NASFE_DATA_CACHE": str(nodes / "head" / "cache"), "NASFE_WORK_DIR": str(nodes / "head" / "work")},
        )
        c.nodes_dir = nodes
        c.worker = _add_node(c, nodes, "n0")
        yield c
    finally:
        c.stop()


def _driver(cluster, s3, tmp_path: Path) -> tuple[Path, dict]:
    home = tmp_path / "home"  # the script alone, as `ray submit` leaves it
    home.mkdir()
    (home / "search.py").write_bytes((REPO / "jobs" / "search.py").read_bytes())
    env = {
        **os.environ,
        **s3.env,
        **cluster.driver_env(),
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "NASFE_DATA_CACHE": str(home / "cache"),
        "NASFE_WORK_DIR": str(home / "work"),
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20",
        "RAY_DEDUP_LOGS": "0",
    }
    return home, env


@pytest.mark.timeout(3000)  # minutes on an idle machine; a loaded 2-core machine took 20 and more
def test_a_run_survives_three_lost_nodes_under_the_default_max_failures(cluster, s3, tmp_path):
    s3.upload_dir(_faces(tmp_path / "faces"), "faces")
    home, driver_env = _driver(cluster, s3, tmp_path)
    epochs = 8  # a checkpoint per epoch: one after each restart arms the next loss, work left after the last
    args = [
        "--space",
        "tiny",
        "--data",
        f"s3://{s3.bucket}/faces",
        "--storage",
        f"s3://{s3.bucket}/runs",
        "--name",
        "spot",
        "--workers",
        "2",
        "--no-retrain",
        "--epochs",
        str(epochs),
    ]  # --max-failures: 2
    log = tmp_path / "job.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "search.py", "--", *args],
            cwd=home,
            env=driver_env,
            text=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    node, kills, armed = cluster.worker, 0, True
    try:
        seen: set[str] = set()
        deadline = time.time() + 2700
        while kills < 3 and proc.poll() is None and time.time() < deadline:
            ckpts = {k.split("/")[4] for k in s3.keys("runs/spot/ray/search/checkpoint_")}
            if not armed and f"lost ({kills} so far)" in log.read_text():
                # the last kill was counted: only a checkpoint of the restarted workers arms the next,
                # so no kill lands while the group is torn down or starting (Ray would see no new loss)
                armed, seen = True, ckpts
            elif armed and ckpts - seen and _runs_a_train_worker(node):
                seen |= ckpts
                assert _kill_node(node) >= 1
                kills, armed = kills + 1, False
                node = _add_node(cluster, cluster.nodes_dir, f"n{kills}")  # the autoscaler's replacement
            time.sleep(0.5)
        proc.wait(timeout=max(60.0, deadline - time.time()))
    finally:
        cluster.worker = node
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert kills == 3, out[-4000:]
    assert proc.returncode == 0, out[-6000:]
    assert "lost (3 so far)" in out, out[-6000:]
    summary = json.loads(s3.read("runs/spot/search_summary.json"))
    assert summary["steps"] == 2 * epochs and summary["world_size"] == 2


@pytest.mark.timeout(900)
def test_a_divergence_ends_after_one_attempt_whatever_max_failures_says(cluster, s3, tmp_path):
    import re

    home, driver_env = _driver(cluster, s3, tmp_path)
    div = subprocess.run(
        [
            sys.executable,
            "search.py",
            "--",
            "--space",
            "tiny",
            "--storage",
            f"s3://{s3.bucket}/runs",
            "--name",
            "diverge",
            "--workers",
            "2",
            "--no-retrain",
            "--max-failures",
            "3",
            "--set",
            "search.lr=1.0e12",
            "--set",
            "search.arch_lr=1.0e12",
        ],
        cwd=home,
        env=driver_env,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert div.returncode == 2, div.stdout[-3000:] + div.stderr[-3000:]
    ours = [ln for ln in div.stderr.splitlines() if ln.startswith("nasfe search:")]
    assert len(ours) == 1 and ours[0].startswith("nasfe search: error: non-finite "), div.stderr[-3000:]
    # every attempt starts two new worker processes: one attempt, two of them
    workers = set(re.findall(r"RayTrainWorker pid=(\d+)", div.stdout + div.stderr))
    assert len(workers) == 2, (workers, div.stderr[-6000:])
