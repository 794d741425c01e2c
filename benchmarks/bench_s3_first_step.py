"""Time from a node's start to its first training batch, faces on S3 (a local moto server).

    .venv/bin/python benchmarks/bench_s3_first_step.py --faces 3000

Uploads ``--faces`` synthetic 176x144 PNG faces (``--identities`` folders) to moto, then, each with
an empty node cache:
  full copy   ``fetch_once`` (the whole prefix copied before anything is read), then the first batch
  on read     ``open_lazily`` (one listing, placeholders; each face fetched when read), then the first
              batch; once without and once with the node's background fetcher running alongside
and prints the seconds to the first batch and how many files were local at that moment. The first
batch is what the first training step needs: ``--batch`` faces, each with the space's references.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=3000)
    ap.add_argument("--identities", type=int, default=300)
    ap.add_argument("--batch", type=int, default=12)
    args = ap.parse_args()

    from localcluster import S3Server

    from nasfe.config import load_space
    from nasfe.data.batches import BatchMaker
    from nasfe.data import remote
    from nasfe.data.synthetic import synthetic_faces
    from nasfe.imageio import write_png_atomic

    tmp = Path(tempfile.mkdtemp(prefix="nasfe-s3bench-"))
    server = S3Server().start()
    try:
        for k, v in server.env.items():
            os.environ[k] = v
        per = max(1, args.faces // args.identities)
        images, ids = synthetic_faces(args.identities, per, height=176, width=144, seed=1)
        for i, (img, ident) in enumerate(zip(images, ids)):
            write_png_atomic(tmp / "faces" / f"id{ident:04d}" / f"{i:05d}.png", img)
        t0 = time.time()
        server.upload_dir(tmp / "faces", "faces")
        n = len(server.keys("faces/"))
        size = sum(p.stat().st_size for p in (tmp / "faces").rglob("*.png"))
        print(f"{n} faces ({size / 2**20:.0f} MiB) uploaded to moto in {time.time() - t0:.0f}s")
        uri = f"s3://{server.bucket}/faces"
        rows = []
        paths = (
            ("full copy", remote.fetch_once, "1"),
            ("on read, no background fetch", remote.open_lazily, "0"),
            ("on read", remote.open_lazily, "1"),
        )
        for label, localize, prefetch in paths:
            os.environ["NASFE_DATA_CACHE"] = str(tmp / label.replace(" ", "-").replace(",", ""))
            os.environ["NASFE_DATA_PREFETCH"] = prefetch
            t0 = time.time()
            root = localize(uri)
            local = load_space(
                "tiny",
                {
                    "data.source": "folder",
                    "data.root": str(root),
                    "data.height": 176,
                    "data.width": 144,
                    "data.workers": 0,
                },
            )
            batch = next(iter(BatchMaker(local, "train", args.batch)))
            seconds = time.time() - t0
            have = sum(1 for p in Path(root).rglob("*.png") if p.stat().st_size)
            rows.append((label, seconds, have, batch.x.shape[0]))
        print(f"\n| faces on S3 | path | seconds to the first batch ({args.batch} faces + refs) | faces local then |")
        print("|---|---|---|---|")
        for label, seconds, have, _ in rows:
            print(f"| {n} | {label} | {seconds:.1f} | {have} |")
        for t in threading.enumerate():  # a background fetch still running ends before the server stops
            if t.name == "nasfe-prefetch":
                t.join(timeout=600)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
