"""Locks where two writers can meet: a run folder (two searches with one ``--name``), a test-set folder.

A lock is a file holding who took it (pid, host, time, what) and an exclusive ``flock`` on it. The
kernel drops the ``flock`` when its process dies, however it dies, so a lock left behind by a
crashed or killed job is never in the way: the next job takes it over. A second job while the
first runs gets :class:`~nasfe.errors.LockedError`, one line naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from nasfe.errors import LockedError, WriteError

LOCK_NAME = ".nasfe.lock"


class FolderLock:
    """Exclusive lock of a folder (``with FolderLock(folder, "run 'x'"):``); see the module docstring."""

    def __init__(self, folder: str | os.PathLike, what: str, name: str = LOCK_NAME):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self._fd: Optional[int] = None

    def _holder(self, wait_s: float = 2.0) -> str:
        """Who holds the lock, from its file. The holder writes the file just after its ``flock``, so
        an empty or half-written file is read again for up to ``wait_s`` before giving up on it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                info = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            except (OSError, ValueError):
                info = {}
            if info or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not info:
            return "another process"
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"

    def acquire(self) -> "FolderLock":
        """Take the lock now or raise :class:`LockedError` (held) / :class:`WriteError` (cannot create)."""
        if self._fd is not None:
            return self
        for _ in range(10):  # the holder may remove the file between our open and our flock: retry
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise WriteError(
                    f"{self.path}: cannot create the lock of {self.what} ({exc.strerror or exc})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockedError(
                    f"{self.what} is in use by {self._holder()} (lock {self.path}); wait for that "
                    "job to finish or use another name/folder"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # we locked a file its holder just removed: try again on the new one
                os.close(fd)
                continue
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "what": self.what,
            }
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
            self._fd = fd
            return self
        raise LockedError(f"{self.what}: the lock {self.path} keeps changing hands; try again")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the flock: no one else is inside
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
