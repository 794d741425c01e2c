"""The cluster path with real parts: two raylets on this machine, runs and faces on a local S3 server
(moto), the job script run as ``ray submit`` runs it; and Ray's fake multi-node autoscaler starting
GPU nodes from zero for a job's declared demand. Slow (minutes): CI runs them too."""

from __future__ import annotations

import json
import os
import re
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
FAKE_KEY = "f" * 8 + "0123456789abcdef0123456789abcdef"  # a W&B-shaped fake API key


def _faces(folder: Path) -> Path:
    """12 identities x 6 faces as PNG files, <identity>/<n>.png."""
    from nasfe.data.synthetic import synthetic_faces
    from nasfe.imageio import write_png_atomic

    images, ids = synthetic_faces(12, 6, height=48, width=40, seed=3)
    for i, (img, ident) in enumerate(zip(images, ids)):
        write_png_atomic(folder / f"id{ident:02d}" / f"{i:03d}.png", img)
    return folder


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    """Head (1 CPU) + a second raylet (1 CPU): one Train worker each; per-node data caches."""
    nodes = tmp_path_factory.mktemp("nodes")
    env = {**s3.env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(REPO)}
    c = RayCluster(env)
    try:
        c.start_head(
            num_cpus=1,
            env={"NASFE_DATA_CACHE": str(nodes / "a" / "cache"), "NASFE_WORK_DIR": str(nodes / "a" / "work")},
        )
        c.add_node(
            num_cpus=1,
            env={"NASFE_DATA_CACHE": str(nodes / "b" / "cache"), "NASFE_WORK_DIR": str(nodes / "b" / "work")},
        )
        c.nodes_dir = nodes
        yield c
    finally:
        c.stop()


def _submit(
    cluster, s3, cwd: Path, *args: str, key: str = FAKE_KEY, timeout: float = 1500, interrupt_when=None
) -> subprocess.CompletedProcess:
    """``python search.py -- ARGS`` from a folder holding only the script, as ``ray submit`` does."""
    script = cwd / "search.py"
    if not script.exists():
        script.write_bytes((REPO / "jobs" / "search.py").read_bytes())
    env = {
        **os.environ,
        **s3.env,
        **cluster.driver_env(),
        "WANDB_API_KEY": key,
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO),
        "NASFE_DATA_CACHE": str(cwd / "driver-cache"),
        "NASFE_WORK_DIR": str(cwd / "driver-work"),
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), "--", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if interrupt_when is not None:
        deadline = time.time() + timeout
        while proc.poll() is None and not interrupt_when() and time.time() < deadline:
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # keep what the job said: why it did not end is in there
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the job did not end within {timeout:g} s:\n{out[-3000:]}\n{err[-5000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _history_steps(records) -> list[int]:
    steps = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            if "search/loss" in items:
                steps.append(int(items["step"]))
    return steps


# three job runs: about 100 s on an idle 2-core machine, several times that when loaded (the resumed
# run alone took over 600 s at load 52, 4 other jobs sharing the 2 cores)
@pytest.mark.timeout(3000)
def test_search_on_two_raylets_with_runs_and_faces_on_s3(cluster, s3, tmp_path):
    from nasfe.tracking.wandb_logger import read_offline_records

    s3.upload_dir(_faces(tmp_path / "faces"), "faces")
    storage = f"s3://{s3.bucket}/runs"
    # 6 epochs of 2 steps: the interrupt at the first checkpoint (step 2) lands with 10 steps to go
    # however fast the machine, so the resumed segment always has history to log
    epochs = 6
    args = (
        "--space",
        "tiny",
        "--data",
        f"s3://{s3.bucket}/faces",
        "--storage",
        storage,
        "--name",
        "e2e",
        "--workers",
        "2",
        "--no-retrain",
        "--max-failures",
        "0",
        "--epochs",
        str(epochs),
    )
    home = tmp_path / "home"  # the script alone, as `ray submit` leaves it
    home.mkdir()

    # 1. interrupted (Ctrl-C) once the first checkpoint is on S3
    first = _submit(
        cluster,
        s3,
        home,
        *args,
        interrupt_when=lambda: any("/ray/search/checkpoint_" in k for k in s3.keys("runs/e2e/")),
    )
    assert first.returncode == 130, first.stdout[-2000:] + first.stderr[-3000:]
    ours = [line for line in first.stderr.splitlines() if line.startswith("nasfe search:")]
    assert ours == ["nasfe search: interrupted; run the same command again to resume"], first.stderr[-3000:]
    caches = [cluster.nodes_dir / n / "cache" for n in ("a", "b")]
    markers = [next(c.glob("*/.nasfe-fetched.json")) for c in caches]  # each node fetched the faces
    fetched = [json.loads(m.read_text()) for m in markers]
    assert all(f["files"] == 72 and f["uri"] == f"s3://{s3.bucket}/faces" for f in fetched)

    # 2. the same command resumes the run by its name, from S3
    second = _submit(cluster, s3, home, *args)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "derived:" in second.stdout
    assert [json.loads(m.read_text()) for m in markers] == fetched  # reused, not fetched again
    keys = s3.keys("runs/e2e/")
    for name in ("genotype.json", "search_summary.json", "search_done.json", "wandb_ids.json", "job_summary.json"):
        assert f"runs/e2e/{name}" in keys
    summary = json.loads(s3.read("runs/e2e/search_summary.json"))
    assert summary["steps"] == 2 * epochs and summary["world_size"] == 2

    # W&B: one run id, one folder per segment on S3, history continuous across the interruption
    run_id = json.loads(s3.read("runs/e2e/wandb_ids.json"))["search"]
    folders = sorted({k.split("/")[3] for k in keys if k.startswith("runs/e2e/wandb/")} - {""})
    assert len(folders) == 2 and all(f.endswith(f"-{run_id}") for f in folders), folders
    steps = []
    for f in folders:  # oldest first (names start with the time)
        local = tmp_path / "wb" / f / f"run-{run_id}.wandb"
        local.parent.mkdir(parents=True)
        local.write_bytes(s3.read(f"runs/e2e/wandb/{f}/run-{run_id}.wandb"))
        seg = _history_steps(read_offline_records(local))
        assert seg, f"segment {f} holds no history"
        steps.append(seg)
    # losses reach W&B at each host read of the engine's meter: every log_every steps and at each
    # epoch end (every 2 steps here). The first segment from the first read; the resumed one from
    # its checkpoint (at most where the first stopped, so no gap) to the end
    reads = list(range(2, 2 * epochs + 1, 2))
    assert steps[0][0] == reads[0] and steps[0][-1] < reads[-1], steps  # the interrupt left work to resume
    assert steps[1][-1] == reads[-1] and steps[1][0] <= steps[0][-1] + 2, steps
    assert sorted(set(steps[0]) | set(steps[1])) == reads, steps

    # one command fetches every segment from S3 for `wandb sync`
    sync = subprocess.run(
        [
            sys.executable,
            "-m",
            "nasfe.cli",
            "wandb-sync",
            "--name",
            "e2e",
            "--storage",
            storage,
            "--dest",
            str(tmp_path / "sync"),
            "--dry-run",
        ],
        env={**os.environ, **s3.env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0, sync.stderr
    listed = [line.strip() for line in sync.stdout.splitlines()[1:]]
    assert [Path(p).name for p in listed] == folders and all(Path(p, f"run-{run_id}.wandb").is_file() for p in listed)

    # 3. a finished run re-run returns at once, without starting Ray Train
    t0 = time.time()
    third = _submit(cluster, s3, home, *args)
    assert third.returncode == 0 and "finished on" in third.stdout, third.stderr[-2000:]
    assert "Started training worker group" not in third.stderr and time.time() - t0 < 180  # no training: seconds
    assert s3.keys("runs/e2e/ray/") == [k for k in keys if k.startswith("runs/e2e/ray/")]

    # 4. the W&B key reached no file: Ray's temp dir (logs, runtime_env), the nodes, the run, S3
    leaks = []
    for root in (Path(cluster.temp_dir), cluster.nodes_dir, home):
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink() and FAKE_KEY.encode() in p.read_bytes():
                leaks.append(str(p))
    leaks += [k for k in s3.keys() if FAKE_KEY.encode() in s3.read(k)]
    assert not leaks, leaks
    assert list(Path(cluster.temp_dir).rglob("runtime_env_agent*.log")), "Ray's runtime_env log was not looked at"


FAKE_CONFIG = """
cluster_name: nasfe-fake
max_workers: 2
idle_timeout_minutes: 5
provider:
  type: fake_multinode
  gcs_address: {gcs}
  use_node_id_as_ip: true
  disable_node_updaters: true  # no SSH to fake nodes: they are raylets on this machine
  disable_launch_config_check: true
head_node_type: ray.head.default
available_node_types:
  ray.head.default:
    resources: {{CPU: 0}}
    node_config: {{}}
    max_workers: 0
  gpu_worker:  # a multi-GPU type: one node holds both Train workers, one GPU each
    min_workers: 0
    max_workers: 2
    resources: {{CPU: 2, GPU: 2}}
    node_config: {{}}
auth: {{ssh_user: ubuntu}}
upscaling_speed: 1.0
file_mounts: {{}}
cluster_synced_files: []
file_mounts_sync_continuously: false
rsync_exclude: []
rsync_filter: []
initialization_commands: []
setup_commands: []
head_setup_commands: []
worker_setup_commands: []
head_start_ray_commands: []
worker_start_ray_commands: []
"""


def _nodes(cluster) -> list[dict]:
    code = (
        "import json, ray; ray.init(address='auto', logging_level='ERROR'); "
        "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **cluster.driver_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[")]
    assert lines, f"no node list in stdout: {out.stdout[-1000:]!r}; stderr: {out.stderr[-1000:]!r}"
    return json.loads(lines[-1])


def test_the_autoscaler_starts_gpu_nodes_from_zero_for_a_declared_demand(tmp_path):
    c = RayCluster(
        {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    )
    config = tmp_path / "fake_cluster.yaml"
    try:
        c.start_head(
            num_cpus=0,
            extra=(f"--autoscaling-config={config}",),
            prepare=lambda gcs: config.write_text(FAKE_CONFIG.format(gcs=gcs)),
        )
        assert [n.get("GPU", 0) for n in _nodes(c)] == [0]  # just the head: no GPU anywhere
        home = tmp_path / "home"
        home.mkdir()
        (home / "search.py").write_bytes((REPO / "jobs" / "search.py").read_bytes())
        env = {
            **os.environ,
            **c.driver_env(),
            "PYTHONPATH": str(REPO),
            "NASFE_CLUSTER_CONFIG": str(config),
            "WANDB_MODE": "disabled",
        }
        env.pop("NASFE_GPUS_PER_WORKER", None)
        out = subprocess.run(
            [
                sys.executable,
                "search.py",
                "--",
                "--space",
                "tiny",
                "--workers",
                "2",
                "--no-retrain",
                "--storage",
                str(tmp_path / "runs"),
                "--max-failures",
                "0",
            ],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=480,
        )
        # the job asked for GPUs the cluster declared (no flag), one per worker, and the autoscaler
        # started one 2-GPU node for the two workers
        assert "1 GPU per worker" in out.stdout and "gpu_worker" in out.stdout, out.stdout[-2000:]
        gpu_nodes = [n for n in _nodes(c) if n.get("GPU", 0) >= 1]
        assert [n["GPU"] for n in gpu_nodes] == [2], _nodes(c)
        # torch here is a CPU build: the workers Ray gave a GPU stop the job with one line
        assert out.returncode == 2, out.stderr[-3000:]
        ours = [line for line in out.stderr.splitlines() if line.startswith("nasfe search:")]
        assert len(ours) == 1 and re.match(
            r"nasfe search: error: a Train worker on .* was given GPU \[.*\] by Ray "
            r"but torch .* cannot see CUDA",
            ours[0],
        ), out.stderr[-3000:]
    finally:
        c.stop()


SWEEP = """
base: tiny
phase: search
metric: val_psnr
mode: max
num_samples: 2
max_concurrent: null
workers_per_trial: 1
cpus_per_worker: 1
seed: 0
asha: {grace_period: 2, reduction_factor: 2, max_t: null}
overrides: {search.epochs: 2, search.warmup_epochs: 1}
params:
  search.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
"""


@pytest.mark.timeout(1200)
def test_a_sweep_on_two_raylets_keeps_everything_on_s3_and_resumes_from_it(cluster, s3, tmp_path):
    space = tmp_path / "sweep_s3.yaml"
    space.write_text(SWEEP)
    env = {
        **os.environ,
        **s3.env,
        **cluster.driver_env(),
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "NASFE_WORK_DIR": str(tmp_path / "driver-work"),
    }
    cmd = [
        sys.executable,
        "-m",
        "nasfe.cli",
        "sweep",
        "--sweep",
        str(space),
        "--storage",
        f"s3://{s3.bucket}/sweeps",
        "--name",
        "s3sweep",
        "--quiet",
    ]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    keys = s3.keys("sweeps/s3sweep/")
    for name in ("sweep.yaml", "sweep_table.md", "sweep_table.csv", "best/genotype.json", "best/config.yaml"):
        assert f"sweeps/s3sweep/{name}" in keys, sorted(keys)[:40]
    trials = sorted({k.split("/")[3] for k in keys if k.startswith("sweeps/s3sweep/trials/trial_")})
    assert len(trials) == 2, trials
    for t in trials:  # each trial's run, checkpoints and genotype on S3: no shared file system
        for name in ("genotype.json", "space.yaml", "trial.json"):
            assert f"sweeps/s3sweep/trials/{t}/{name}" in keys
        assert any(k.startswith(f"sweeps/s3sweep/trials/{t}/ray/search/checkpoint_") for k in keys)
    assert any(k.startswith("sweeps/s3sweep/experiment_state") or k.endswith("tuner.pkl") for k in keys)
    table = s3.read("sweeps/s3sweep/sweep_table.md").decode()
    assert table.count("| COMPLETED |") == 2 and "genotype_id" in table, table
    # the same command again: resumed from S3, finished trials kept, nothing re-run
    second = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**env, "NASFE_WORK_DIR": str(tmp_path / "other-driver")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Started training worker group" not in second.stdout + second.stderr
    assert s3.read("sweeps/s3sweep/sweep_table.md").decode().count("| COMPLETED |") == 2
