"""Sweep placement on a real 2-node Ray cluster (two raylets on this machine, 1 CPU each).

Each trial's driver must not hold a CPU that its Train workers need: on two 1-CPU nodes, two
drivers of 0.01 CPU on different nodes left no node with a whole CPU for either trial's worker
(pending placement groups forever). The sweep must finish, within a bounded time.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.drill]  # two `ray start` raylets: minutes

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")

SWEEP = """
base: tiny
num_samples: 3
max_concurrent: 3           # more than the cluster holds: the extra trial must wait, not deadlock
workers_per_trial: 1
cpus_per_worker: 1
asha: {grace_period: 1, reduction_factor: 2}
overrides:
  search.epochs: 1
  search.warmup_epochs: 0
  search.steps_per_epoch: 1
  search.batch_size: 2
  search.val_batches: 1
  search.checkpoint_every: 0
  identity.backbone: vggface   # a quarter-width random backbone (real weights are full width)
  identity.weights: null
  identity.width: 0.25
  identity.refs: 1
  data.height: 32
  data.width: 32
  model.channels: 4
  model.encoder_channels: 4
  model.identity_channels: 4
  model.blocks: 1
params:
  loss.lambda_per: {type: float, low: 0.01, high: 0.2, log: true}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, env, log):
    """``ray start --block`` in its own process group (stopped by its pid at the end)."""
    return subprocess.Popen(
        [str(RAY), "start", "--block", *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def two_nodes(tmp_path):
    """A head and a worker raylet (1 CPU each, token auth) -> (address, env for clients)."""
    temp = Path("/tmp") / f"nasfe-2n-{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_TRAIN_V2_ENABLED": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    log = (tmp_path / "ray.log").open("w")
    procs: list = []
    try:
        # the head must be up before the worker joins; a head that exits (its port, picked free,
        # taken by another process first) is started again on another port, up to 3 times
        for attempt in range(3):
            port = _free_port()
            address = f"127.0.0.1:{port}"
            head = _start(
                [
                    "--head",
                    f"--port={port}",
                    f"--temp-dir={temp}",
                    "--num-cpus=1",
                    "--num-gpus=0",
                    "--include-dashboard=false",
                    "--disable-usage-stats",
                ],
                env,
                log,
            )
            procs = [head]
            deadline = time.time() + 240  # a poll: returns once up; a raylet took over 90 s at load 33
            while True:
                probe = subprocess.run(
                    [str(RAY), "status", f"--address={address}"], env=env, capture_output=True, text=True
                )
                if probe.returncode == 0 or head.poll() is not None or time.time() > deadline:
                    break
                time.sleep(2)
            if probe.returncode == 0:
                break
            _stop(head)
            if attempt == 2:
                pytest.fail(f"ray head did not start: {probe.stdout[-2000:]} {probe.stderr[-2000:]}")
        deadline = time.time() + 240  # a poll: returns once up; a raylet took over 90 s at load 33
        procs.append(
            _start([f"--address={address}", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"], env, log)
        )
        while True:
            probe = subprocess.run(
                [str(RAY), "status", f"--address={address}"], env=env, capture_output=True, text=True
            )
            if probe.stdout.count("node_") >= 2 or "2.0 CPU" in probe.stdout or "0.0/2.0 CPU" in probe.stdout:
                break
            if time.time() > deadline:
                pytest.fail(f"second raylet did not join: {probe.stdout[-2000:]}")
            time.sleep(2)
        yield address, env
    finally:
        for p in reversed(procs):
            _stop(p)
        log.close()


def test_sweep_on_two_one_cpu_nodes_finishes(two_nodes, tmp_path):
    address, env = two_nodes
    sweep = tmp_path / "sweep_two.yaml"
    sweep.write_text(SWEEP)
    cmd = [
        sys.executable,
        "-m",
        "nasfe.cli",
        "sweep",
        "--sweep",
        str(sweep),
        "--address",
        address,
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "two",
        "--wandb-mode",
        "disabled",
        "--quiet",
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=480, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        tail = (out.decode(errors="replace") if isinstance(out, bytes) else out)[-3000:]
        pytest.fail(f"the sweep did not finish in 480 s (deadlocked?): {tail}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "runs" / "two" / "sweep_table.md").read_text()
    assert table.count("COMPLETED") == 3, table
