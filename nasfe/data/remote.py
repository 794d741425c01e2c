"""Faces on shared storage (``s3://bucket/prefix``, any pyarrow filesystem URI): fetched once per
node into a local cache, then read like any folder.

A cluster's GPU nodes start empty; a ``data.root`` that is a URI makes every Train worker (and the
driver, for the evaluation) call :func:`fetch_once`, which copies the prefix into
``$NASFE_DATA_CACHE`` (default ``~/.cache/nasfe/data``) under a name derived from the URI. The first
process on a node copies it (the others on that node wait on a file lock), into a temporary
folder renamed into place once complete, so an interrupted copy is never mistaken for a finished one.
Later runs on that node reuse it. Local paths are returned unchanged.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

from nasfe.errors import NasfeError

MARKER = ".nasfe-fetched.json"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class DataFetchError(NasfeError):
    """The data URI cannot be read (no such prefix, no access)."""


def is_uri(root: str | os.PathLike | None) -> bool:
    """True for ``scheme://...`` roots."""
    return bool(root) and bool(_URI.match(str(root)))


def cache_dir() -> Path:
    """Where fetched data lives on this node."""
    return Path(os.environ.get("NASFE_DATA_CACHE", Path.home() / ".cache" / "nasfe" / "data")).expanduser()


def _filesystem(uri: str):
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # unknown scheme, bad bucket name ...
        raise DataFetchError(f"data {uri}: {exc}") from None


def check_exists(uri: str) -> None:
    """Raise :class:`DataFetchError` unless ``uri`` is a folder (a prefix holding files)."""
    import pyarrow.fs

    fs, path = _filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except Exception as exc:
        raise DataFetchError(f"data {uri}: {exc}") from None
    if info.type != pyarrow.fs.FileType.Directory:
        raise DataFetchError(f"data {uri}: no such folder")


def local_name(uri: str) -> str:
    """The cache folder's name for ``uri``: readable tail plus a hash of the whole URI."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.split("://", 1)[-1].strip("/"))[-60:]
    return f"{tail}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}"


def fetch_once(root: str) -> Path:
    """The local folder holding ``root``: itself when local, else its per-node cached copy."""
    if not is_uri(root):
        return Path(root)
    uri = str(root).rstrip("/")
    base = cache_dir()
    dest = base / local_name(uri)
    if (dest / MARKER).is_file():
        return dest
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copy per node; the others wait, then reuse it
        if (dest / MARKER).is_file():
            return dest
        _copy(uri, dest)
    return dest


def _copy(uri: str, dest: Path) -> None:
    import pyarrow.fs

    check_exists(uri)
    fs, path = _filesystem(uri)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    t0 = time.time()
    try:
        pyarrow.fs.copy_files(path, str(part), source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
    except Exception as exc:
        shutil.rmtree(part, ignore_errors=True)
        raise DataFetchError(f"data {uri}: copy to {dest} failed: {exc}") from None
    files = sum(1 for p in part.rglob("*") if p.is_file())
    (part / MARKER).write_text(json.dumps({"uri": uri, "files": files, "seconds": round(time.time() - t0, 2),
                                           "pid": os.getpid(), "time": time.time()}))
    shutil.rmtree(dest, ignore_errors=True)  # a copy left by an older, interrupted layout
    os.replace(part, dest)


def localize_space(space):
    """``space`` with ``data.root`` pointing at this node's copy when it is a URI (else unchanged)."""
    import dataclasses

    if not is_uri(space.data.root):
        return space
    local = fetch_once(space.data.root)
    out = dataclasses.replace(space, data=dataclasses.replace(space.data, root=str(local)))
    if hasattr(space, "source"):
        out.source = space.source
    return out
