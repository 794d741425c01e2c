"""Faces on shared storage (``s3://bucket/prefix``, any pyarrow filesystem URI): a per-node cache in
``$NASFE_DATA_CACHE`` (default ``~/.cache/nasfe/data``), under a name derived from the URI, read like
any folder.

A cluster's GPU nodes start empty; a ``data.root`` that is a URI makes every Train worker (and the
driver, for the evaluation) call :func:`localize_space`, which uses :func:`open_lazily`: the first
process on a node lists the prefix once and lays out its folders with empty placeholder files (the
others on that node wait on a file lock); training starts at once, each image is fetched when it is
first read, and one background fetcher per node fills the rest and then marks the copy complete, so
later runs on that node (and a restarted worker) reuse it. :func:`fetch_once` copies the whole prefix
before returning (a temporary folder renamed into place once complete, so an interrupted copy is
never mistaken for a finished one). Local paths are returned unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Optional

from nasfe.errors import DataFetchError
import dataclasses
from concurrent.futures import ThreadPoolExecutor
import logging

MARKER = ".nasfe-fetched.json"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


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


def fetch_file(uri: str) -> Path:
    """The local copy of the single file ``uri`` (e.g. ``identity.weights: s3://bucket/mfn.pt``),
    fetched once per node into the data cache (temporary name, then rename; other processes on the
    node wait on a lock and reuse it)."""
    import pyarrow.fs

    uri = str(uri)
    base = cache_dir()
    dest = base / "files" / local_name(uri)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f"{dest.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.is_file():
            return dest
        fs, path = _filesystem(uri)
        try:
            info = fs.get_file_info(path)
        except Exception as exc:
            raise DataFetchError(f"{uri}: {exc}") from None
        if info.type != pyarrow.fs.FileType.File:
            raise DataFetchError(f"{uri}: no such file")
        _get(fs, path, dest)
    return dest


def _copy(uri: str, dest: Path) -> None:
    import pyarrow.fs

    check_exists(uri)
    fs, path = _filesystem(uri)
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    t0 = time.time()
    try:
        pyarrow.fs.copy_files(
            path, str(part), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
        )
    except Exception as exc:
        shutil.rmtree(part, ignore_errors=True)
        raise DataFetchError(f"data {uri}: copy to {dest} failed: {exc}") from None
    files = sum(1 for p in part.rglob("*") if p.is_file())
    (part / MARKER).write_text(
        json.dumps(
            {"uri": uri, "files": files, "seconds": round(time.time() - t0, 2), "pid": os.getpid(), "time": time.time()}
        )
    )
    shutil.rmtree(dest, ignore_errors=True)  # a copy left by an older, interrupted layout
    os.replace(part, dest)


def localize_space(space):
    """``space`` with ``data.root`` pointing at this node's copy when it is a URI (else unchanged)."""

    if not is_uri(space.data.root):
        return space
    local = open_lazily(space.data.root)
    out = dataclasses.replace(space, data=dataclasses.replace(space.data, root=str(local)))
    if hasattr(space, "source"):
        out.source = space.source
    return out


# ----- on first read: a tree of placeholders, filled when read and in the background ----------------
#: In a folder made by :func:`open_lazily`: the URI it mirrors. Its empty files are not fetched yet.
LAZY = ".nasfe-lazy.json"
#: Files fetched at once when the tree is made (lists and manifests the face sources scan); every
#: other file (the images) is an empty placeholder until it is read or the background fetch reaches it.
EAGER_SUFFIXES = (".txt", ".csv", ".json", ".yaml", ".yml")
PREFETCH_THREADS = 16


def open_lazily(root: str, prefetch: bool = True) -> Path:
    """The local folder of ``root`` without copying it first: the node's complete copy when there is
    one, else a tree of the prefix's folders and empty placeholder files (one listing, once per node;
    small list files fetched at once) whose files are fetched when first read
    (:func:`fill_placeholder`, called by :func:`nasfe.imageio.read_image`) and, with ``prefetch``,
    by one background fetcher per node (``NASFE_DATA_PREFETCH=0``: none), which marks the copy complete
    when done. A replacement node starts training after the listing; later runs on a node reuse what
    it holds.
    """
    if not is_uri(root):
        return Path(root)
    uri = str(root).rstrip("/")
    base = cache_dir()
    dest = base / local_name(uri)
    if (dest / MARKER).is_file():
        return dest
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one listing per node; the others wait, then reuse it
        if not (dest / MARKER).is_file() and not (dest / LAZY).is_file():
            _placeholders(uri, dest)
    if prefetch and os.environ.get("NASFE_DATA_PREFETCH", "1") != "0" and not (dest / MARKER).is_file():
        _start_prefetch(dest)
    return dest


def _placeholders(uri: str, dest: Path) -> None:
    import pyarrow.fs

    check_exists(uri)
    fs, path = _filesystem(uri)
    t0 = time.time()
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    except Exception as exc:
        raise DataFetchError(f"data {uri}: cannot list it ({exc})") from None
    part = dest.with_name(f"{dest.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    files = 0
    try:
        for info in infos:
            rel = info.path[len(path) :].lstrip("/")
            if not rel or any(p.startswith(".nasfe") for p in rel.split("/")):
                continue
            if info.type == pyarrow.fs.FileType.Directory:
                (part / rel).mkdir(parents=True, exist_ok=True)
                continue
            (part / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel.lower().endswith(EAGER_SUFFIXES):
                _get(fs, info.path, part / rel)
            else:
                (part / rel).touch()
            files += 1
        (part / LAZY).write_text(json.dumps({"uri": uri, "files": files, "listed_s": round(time.time() - t0, 2)}))
    except DataFetchError:
        shutil.rmtree(part, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(part, ignore_errors=True)
        raise DataFetchError(f"data {uri}: cannot mirror it into {dest} ({exc})") from None
    shutil.rmtree(dest, ignore_errors=True)  # a copy left by an older, interrupted layout
    os.replace(part, dest)


def _get(fs, src: str, dst: Path) -> None:
    """Copy one object to ``dst`` (temp file, then rename: a reader never sees half a file)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        with fs.open_input_stream(src) as fh, open(tmp, "wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)
        os.replace(tmp, dst)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataFetchError(f"data {src}: fetch to {dst} failed: {exc}") from None


def _lazy_root(path: Path, levels: int = 4) -> Optional[tuple[Path, str]]:
    for parent in list(path.parents)[:levels]:
        marker = parent / LAZY
        if marker.is_file():
            return parent, json.loads(marker.read_text())["uri"]
    return None


def fill_placeholder(path: str | os.PathLike) -> bool:
    """Fetch ``path`` now when it is an empty placeholder of a tree made by :func:`open_lazily`;
    True when it was one (and now holds the object), False for any other file."""
    p = Path(path)
    found = _lazy_root(p)
    if found is None:
        return False
    root, uri = found
    fs, base = _reader(uri, os.getpid())
    _get(fs, f"{base}/{p.relative_to(root).as_posix()}", p)
    return True


_READERS: dict = {}


def _reader(uri: str, pid: int):
    """One filesystem client per URI and process (a forked DataLoader worker makes its own)."""
    key = (uri, pid)
    if key not in _READERS:
        _READERS[key] = _filesystem(uri)
    return _READERS[key]


def _start_prefetch(dest: Path) -> None:
    """One background fetcher per node (the first process to take its lock) fills every placeholder,
    then marks the copy complete; it dies with its process, and the next run's picks up the rest."""
    lock = open(dest.with_name(f"{dest.name}.prefetch.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return  # another process of this node fetches
    threading.Thread(target=_prefetch, args=(dest, lock), name="nasfe-prefetch", daemon=True).start()


def _prefetch(dest: Path, lock) -> None:
    try:
        meta = json.loads((dest / LAZY).read_text())
        fs, base = _filesystem(meta["uri"])
        t0 = time.time()
        todo = [p for p in dest.rglob("*") if p.is_file() and p.name != LAZY and p.stat().st_size == 0]
        with ThreadPoolExecutor(PREFETCH_THREADS) as pool:
            list(pool.map(lambda p: _get(fs, f"{base}/{p.relative_to(dest).as_posix()}", p), todo))
        tmp = dest / f"{MARKER}.part"
        tmp.write_text(
            json.dumps(
                {
                    "uri": meta["uri"],
                    "files": meta["files"],
                    "seconds": round(time.time() - t0, 2),
                    "pid": os.getpid(),
                    "time": time.time(),
                    "lazy": True,
                }
            )
        )
        os.replace(tmp, dest / MARKER)
    except Exception as exc:  # noqa: BLE001  (reads fetch what they need; a later run resumes this)
        logging.getLogger("nasfe.data").warning("background fetch into %s stopped: %s", dest, exc)
    finally:
        lock.close()
