"""Where a job runs and where its results land: join a Ray cluster (or start one), run storage paths.

A run named ``<name>`` lives under ``<storage>/<name>/`` (storage: a local folder, ``runs`` by
default, or a URI such as ``s3://bucket/prefix`` on a cluster)::

    <storage>/<name>/genotype.json, search_summary.json, retrain_summary.json, model.pt, ...
    <storage>/<name>/checkpoints/       engine checkpoints (local storage only: rank 0 writes them live)
    <storage>/<name>/ray/search/        Ray Train's run: checkpoint_*/ and its snapshot (resume state)
    <storage>/<name>/ray/retrain/
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nasfe.data.remote import is_uri
from nasfe.errors import StorageError
import json
from nasfe.imageio import atomic_write_json
import subprocess
import sys
import yaml

log = logging.getLogger("nasfe.distributed")

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def local_work_dir(name: str, phase: str) -> Path:
    """Node-local folder where rank 0's engine writes when the run root is remote storage."""
    base = Path(os.environ.get("NASFE_WORK_DIR", Path.home() / "nasfe-work"))
    return base / name


@dataclass(frozen=True)
class RunStorage:
    """The storage of one run: its root (local folder or URI) and the Ray paths inside it."""

    storage: str  # a local folder (absolute) or a URI
    name: str

    @classmethod
    def create(cls, storage: Optional[str], name: str) -> "RunStorage":
        """Validate ``name`` and resolve ``storage`` (None: ``./runs``) to an absolute path or a URI."""
        if not _NAME_OK.match(name or ""):
            raise StorageError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        storage = storage or "runs"
        if not is_uri(storage):
            storage = str(Path(storage).expanduser().resolve())
        return cls(storage.rstrip("/"), name)

    @property
    def is_local(self) -> bool:
        """True when the run root is a folder of this machine (or a shared mount of it)."""
        return not is_uri(self.storage)

    @property
    def root(self) -> str:
        """The run's folder or URI: ``<storage>/<name>``."""
        return f"{self.storage}/{self.name}"

    @property
    def ray_storage_path(self) -> str:
        """``RunConfig.storage_path`` for this run's Ray Train runs (each phase is one Ray run in it)."""
        return f"{self.root}/ray"

    def ray_run_path(self, phase: str) -> str:
        """Where Ray Train keeps the checkpoints and snapshot of ``phase``."""
        return f"{self.ray_storage_path}/{phase}"

    def _fs(self):
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(self.root if not self.is_local else Path(self.root).as_uri())
        return fs, path

    def read_json(self, rel: str) -> Optional[dict]:
        """``<root>/<rel>`` parsed, or None when absent."""

        if self.is_local:
            p = Path(self.root) / rel
            return json.loads(p.read_text()) if p.is_file() else None
        import pyarrow.fs

        fs, path = self._fs()
        if fs.get_file_info(f"{path}/{rel}").type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(f"{path}/{rel}") as fh:
            return json.loads(fh.read().decode())

    def write_json(self, rel: str, data: dict) -> None:
        """Write ``<root>/<rel>`` (local: temp file then rename; S3: one PUT)."""

        if self.is_local:
            atomic_write_json(Path(self.root) / rel, data)
            return
        fs, path = self._fs()
        with fs.open_output_stream(f"{path}/{rel}") as out:
            out.write(json.dumps(data, indent=1).encode())

    def delete(self, rel: str) -> None:
        """Remove the file ``<root>/<rel>`` if it is there."""
        if self.is_local:
            (Path(self.root) / rel).unlink(missing_ok=True)
            return
        import pyarrow.fs

        fs, path = self._fs()
        if fs.get_file_info(f"{path}/{rel}").type == pyarrow.fs.FileType.File:
            fs.delete_file(f"{path}/{rel}")

    def upload(self, local_dir: str | Path, files: list[str]) -> None:
        """Copy ``files`` (relative to ``local_dir``; folders too) into the run root (remote storage)."""
        if self.is_local:
            dest = Path(self.root)
            for rel in files:
                src = Path(local_dir) / rel
                if not src.exists() or src.resolve() == (dest / rel).resolve():
                    continue
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dest / rel, dirs_exist_ok=True)
                else:
                    shutil.copy2(src, dest / rel)
            return
        import pyarrow.fs

        fs, path = self._fs()
        local = pyarrow.fs.LocalFileSystem()
        for rel in files:
            src = Path(local_dir) / rel
            if not src.exists():
                continue
            if src.is_dir():
                pyarrow.fs.copy_files(str(src), f"{path}/{rel}", source_filesystem=local, destination_filesystem=fs)
            else:
                with src.open("rb") as fh, fs.open_output_stream(f"{path}/{rel}") as out:
                    shutil.copyfileobj(fh, out)

    def download(self, rel: str, local_dir: str | Path) -> bool:
        """Copy ``<root>/<rel>`` (a file or a folder) into ``local_dir/<rel>``; False when absent."""
        dest = Path(local_dir) / rel
        if self.is_local:
            src = Path(self.root) / rel
            if not src.exists():
                return False
            if src.resolve() != dest.resolve():
                dest.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree(src, dest, dirs_exist_ok=True) if src.is_dir() else shutil.copy2(src, dest))
            return True
        import pyarrow.fs

        fs, path = self._fs()
        kind = fs.get_file_info(f"{path}/{rel}").type
        if kind == pyarrow.fs.FileType.NotFound:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        if kind == pyarrow.fs.FileType.Directory:
            dest.mkdir(exist_ok=True)  # S3 has no folder objects: pyarrow does not make the top one
            pyarrow.fs.copy_files(
                f"{path}/{rel}", str(dest), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
            )
        else:
            with fs.open_input_stream(f"{path}/{rel}") as fh, dest.open("wb") as out:
                shutil.copyfileobj(fh, out)
        return True

    def listdir(self, rel: str) -> list[str]:
        """Names directly inside the folder ``<root>/<rel>`` (empty when absent)."""
        if self.is_local:
            p = Path(self.root) / rel
            return sorted(q.name for q in p.iterdir()) if p.is_dir() else []
        import pyarrow.fs

        fs, path = self._fs()
        sel = pyarrow.fs.FileSelector(f"{path}/{rel}", allow_not_found=True)
        return sorted(Path(i.path).name for i in fs.get_file_info(sel))


def ray_address(address: Optional[str]) -> Optional[str]:
    """The address to join: ``--address``, else ``RAY_ADDRESS``, else a cluster started on this node."""
    if address:
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:  # `ray start` on this node leaves the address here
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
        if found:
            return "auto"
    except Exception:  # private API: absence only means "no running cluster"
        pass
    return None


#: Settings (never secrets) the job's workers inherit from the driver through Ray's runtime_env.
#: Ray writes a runtime_env in clear text into its logs (runtime_env_agent.log), so W&B's key is
#: not among them: each node uses its own W&B login (~/.netrc, see scripts/node_env.sh).
#: (``NASFE_DATA_CACHE`` is left to each node: where a node keeps its data is the node's business.)
WORKER_ENV_KEYS = ("OMP_NUM_THREADS", "WANDB_MODE", "WANDB_SILENT", "WANDB_BASE_URL", "NASFE_WORK_DIR")


def worker_env() -> dict[str, str]:
    """Environment of the job's Ray workers: this nasfe importable even when not pip-installed."""
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [package_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    for key in WORKER_ENV_KEYS:
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None, log_to_driver: bool = True) -> str:
    """Join a running Ray cluster (``address``/``RAY_ADDRESS``/one on this node) or start a local one.

    Returns a line saying which. Already connected: does nothing.
    """
    import ray

    if ray.is_initialized():
        return "using the Ray instance already connected"
    target = ray_address(address)
    env = {"env_vars": worker_env()}
    if target:
        try:
            ray.init(address=target, log_to_driver=log_to_driver, runtime_env=env)
        except ConnectionError as exc:
            raise StorageError(f"cannot join the Ray cluster at {target!r}: {exc}") from None
        if os.environ.get("WANDB_API_KEY"):
            log.info(
                "WANDB_API_KEY stays on this machine: the cluster's workers log in to W&B with their "
                "node's own login (~/.netrc from scripts/cluster_secrets.sh), else offline"
            )
        return f"joined the Ray cluster at {target}"
    # the dashboard agent serves the state API that Ray Train's placement-group cleaner polls
    ray.init(num_cpus=num_cpus, log_to_driver=log_to_driver, runtime_env=env)
    stop_with_driver()
    return f"started a local Ray instance ({int(ray.cluster_resources().get('CPU', 0))} CPUs)"


#: A small process of its own session: once the driver (argv[1]) is gone, however it went, it stops
#: the local Ray instance's processes: those whose command line names the instance's session folder
#: (argv[2]: GCS, raylet, dashboard, log monitor) and every process below them (agents, workers,
#: which rename themselves). SIGTERM, then SIGKILL after 10 s; a pid is only signalled while it is
#: still the process found (same start time).
_WATCHDOG = r"""
# nasfe: stops the local Ray instance with its driver
import os, signal, sys, time
driver, session = int(sys.argv[1]), sys.argv[2].encode()
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return f[0], int(f[1]), f[19]  # state, parent, start time
    except (OSError, IndexError, ValueError):
        return None
def table():
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            st = stat(int(d))
            if st is not None and st[0] != "Z":
                out[int(d)] = st
    return out
def named(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return session in fh.read()
    except OSError:
        return False
def instance():
    procs = table()
    found = {p for p in procs if named(p)}
    grew = True
    while grew:
        below = {p for p, st in procs.items() if st[1] in found} - found
        grew = bool(below)
        found |= below
    return {p: procs[p][2] for p in found}
while True:
    st = stat(driver)
    if st is None or st[0] == "Z":
        break
    time.sleep(1.0)
victims = instance()
for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
    for pid, started in victims.items():
        st = stat(pid)
        if st is not None and st[2] == started and st[0] != "Z":
            try:
                os.kill(pid, sig)
            except OSError:
                pass
    end = time.time() + wait
    while time.time() < end and any((stat(p) or ("Z",))[0] != "Z" for p in victims):
        time.sleep(0.2)
"""


def stop_with_driver() -> None:
    """Tie the local Ray instance this driver started to the driver's life: a driver killed
    (SIGKILL, OOM) leaves no Ray process behind. Linux only (it reads /proc); best effort."""

    try:
        import ray

        session = ray._private.worker._global_node.get_session_dir_path()  # private API: best effort
    except Exception:  # noqa: BLE001
        return
    if not session or not Path("/proc/self/cmdline").exists():
        return
    subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(session)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


#: Where ``ray up`` leaves the cluster config on the head node (its autoscaler reads it there).
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def cluster_config_path() -> Optional[Path]:
    """The cluster-launcher config this node belongs to: ``NASFE_CLUSTER_CONFIG``, else the one
    ``ray up`` wrote on the head (``~/ray_bootstrap_config.yaml``), else None (no launcher)."""
    given = os.environ.get("NASFE_CLUSTER_CONFIG")
    path = Path(given or BOOTSTRAP_CONFIG).expanduser()
    return path if path.is_file() else None


def declared_gpus_per_worker(config: Optional[Path] = None) -> tuple[float, str]:
    """GPUs each Train worker asks for, from what the cluster *declares* (never from what is up).

    ``NASFE_GPUS_PER_WORKER`` wins; else 1 when a worker node type of the cluster config declares
    ``resources: {GPU: n}`` (the autoscaler starts such nodes on demand, from zero): a Train
    worker drives one device, so a node with n GPUs holds n workers and ``--workers`` counts GPUs;
    else 0 (CPU). Returns ``(gpus, where it came from)``.
    """
    if os.environ.get("NASFE_GPUS_PER_WORKER"):
        gpus = float(os.environ["NASFE_GPUS_PER_WORKER"])
        if not 0 <= gpus <= 1:
            raise ValueError(f"NASFE_GPUS_PER_WORKER={gpus:g}: must be between 0 and 1 (a Train worker drives one GPU)")
        return gpus, "NASFE_GPUS_PER_WORKER"
    config = config or cluster_config_path()
    if config is None:
        return 0.0, "no cluster config declares GPU workers"

    data = yaml.safe_load(Path(config).read_text()) or {}
    head = data.get("head_node_type")
    declared = {
        name: float((t.get("resources") or {}).get("GPU", 0))
        for name, t in (data.get("available_node_types") or {}).items()
        if name != head
    }
    declared = {k: v for k, v in declared.items() if v > 0}
    if not declared:
        return 0.0, f"{config}: no worker node type declares resources: {{GPU: n}}"
    name = min(declared, key=declared.get)
    per_node = f"{declared[name]:g} per node: one worker each" if declared[name] != 1 else "1"
    return min(1.0, declared[name]), f"{config}: node type {name!r} declares GPU: {per_node}"


def cluster_gpus() -> int:
    """GPUs the connected cluster has right now (0 without a cluster)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
