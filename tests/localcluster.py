"""Real parts for the cluster tests (test support): a local S3 server (moto in server mode) and a
Ray cluster of several raylets on this machine, each started here and stopped by its process ids.

Ray's processes are found by the cluster's own temp dir, which every one of them names on its
command line; nothing else on the machine (other Ray clusters included) is touched.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, proc: Optional[subprocess.Popen] = None) -> None:
    """Until something listens on ``port``; TimeoutError after ``timeout`` s or when ``proc`` (the
    server meant to listen there) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TimeoutError(f"the server for 127.0.0.1:{port} exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class S3Server:
    """moto's S3 on 127.0.0.1:<free port>; :attr:`env` points boto3, pyarrow and Ray at it."""

    def __init__(self, bucket: str = "nasfe-test"):
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        self.proc: Optional[subprocess.Popen] = None

    def _set_port(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env["AWS_ENDPOINT_URL"] = self.endpoint

    def start(self, attempts: int = 3) -> "S3Server":
        """Start moto; when the port picked free is taken before moto binds it (another process got
        there first: moto exits), start again on another one."""
        for attempt in range(attempts):
            if attempt:
                self._set_port(free_port())
            self.proc = subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
            try:
                _wait_port(self.port, 30, self.proc)
            except TimeoutError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                continue
            self.client().create_bucket(Bucket=self.bucket)
            return self
        raise AssertionError("unreachable")

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        out, token = [], None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self.client().list_objects_v2(**kw)
            out += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def upload_dir(self, folder: Path, prefix: str) -> None:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                self.client().upload_file(str(p), self.bucket, f"{prefix}/{p.relative_to(folder).as_posix()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class RayCluster:
    """``ray start --head`` plus ``ray start --address`` raylets, with their own temp dir and ports.

    ``env`` goes to every Ray process (and so to the workers they start); token authentication is
    on, with a token of this cluster's own.
    """

    def __init__(self, env: Optional[dict[str, str]] = None):
        # short: Ray's unix sockets live under it (107-character limit)
        self.temp_dir = tempfile.mkdtemp(prefix="nr", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)

    def _ray(self, *args: str, env: Optional[dict[str, str]] = None) -> None:
        out = subprocess.run(
            [str(BIN / "ray"), *args], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=180
        )
        if out.returncode:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def start_head(
        self,
        num_cpus: int = 1,
        extra: tuple[str, ...] = (),
        env: Optional[dict] = None,
        attempts: int = 3,
        prepare: Optional[Callable[[str], None]] = None,
    ) -> None:
        """``ray start --head``; a start that fails (a port picked free taken by another process
        before Ray bound it, on a machine where other clusters run) is stopped and tried again on
        another port, up to ``attempts`` times. ``prepare(address)`` runs before each try (to write
        a config naming the head's address)."""
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
                self.address = f"127.0.0.1:{self.port}"
            if prepare is not None:
                prepare(self.address)
            try:
                self._ray(
                    "start",
                    "--head",
                    f"--port={self.port}",
                    f"--temp-dir={self.temp_dir}",
                    "--node-ip-address=127.0.0.1",
                    f"--num-cpus={num_cpus}",
                    "--num-gpus=0",
                    "--include-dashboard=true",
                    "--dashboard-port=0",
                    "--disable-usage-stats",
                    *extra,
                    env=env,
                )
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                self.stop(keep_temp_dir=True)
                if attempt == attempts - 1:
                    raise

    def add_node(self, num_cpus: int = 1, resources: str = "{}", env: Optional[dict] = None, attempts: int = 3) -> None:
        """``ray start --address``, tried again (up to ``attempts`` times) when it fails."""
        for attempt in range(attempts):
            try:
                self._ray(
                    "start",
                    f"--address={self.address}",
                    "--node-ip-address=127.0.0.1",
                    f"--num-cpus={num_cpus}",
                    "--num-gpus=0",
                    f"--resources={resources}",
                    "--disable-usage-stats",
                    env=env,
                )
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if attempt == attempts - 1:
                    raise
                time.sleep(2)

    def driver_env(self) -> dict[str, str]:
        """What a driver (a job) needs to join this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.env["RAY_AUTH_TOKEN"]}

    def pids(self) -> list[int]:
        """Processes of this cluster: every one names its temp dir (or session dir) on its command line."""
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.temp_dir in cmd:
                out.append(int(d.name))
        return out

    def stop(self, keep_temp_dir: bool = False) -> None:
        """SIGTERM then SIGKILL to this cluster's processes, one pid at a time."""
        for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 2.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.time() + wait
            while self.pids() and time.time() < deadline:
                time.sleep(0.3)
        if not keep_temp_dir:
            import shutil

            shutil.rmtree(self.temp_dir, ignore_errors=True)
