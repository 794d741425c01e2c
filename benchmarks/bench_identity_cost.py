"""What the identity backbone costs a tiny step, and whether a smaller embedding input keeps identity.

    nice -n 10 .venv/bin/python benchmarks/bench_identity_cost.py step --batch 8 --reps 10
    nice -n 10 .venv/bin/python benchmarks/bench_identity_cost.py size --ids 40 --per-id 4
    nice -n 10 .venv/bin/python benchmarks/bench_identity_cost.py run

``step``: CPU time (``time.process_time``, one thread: steadier than wall time on a shared
machine) of one forward + L_final + backward of the tiny space's network (``build_network``) on
random images, a new reference tensor every step, variants interleaved; the median per variant and
its ratio to a random VGGFace with L2 only.

``run``: CPU time of a whole default run of the tiny space in the engine (``run_search``, then
``run_retrain`` of its genotype; one thread, no Ray), as shipped and with a random VGGFace and L2
only.

``size``: MobileFaceNet embeddings of celeba-id faces (../shared) resized to 48x40 and aligned to an
s x s template (s < 112), the 7x7 global depthwise conv fed by resizing the 1/16 map (a), the 1/8
map (b) or the conv's kernel (c); same-vs-different-person cosine gap, nearest-neighbour accuracy
and verification AUC.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MFN = {"identity.backbone": "mobilefacenet", "identity.weights": "packaged"}
VARIANTS = {
    "random VGGFace, L2 only": {"identity.backbone": "vggface", "identity.weights": None, "loss.iden_samples": 0},
    "MobileFaceNet, L_iden on all": {**MFN, "loss.iden_samples": 0},
    "MobileFaceNet, iden_samples 2": {**MFN, "loss.iden_samples": 2},
    "MobileFaceNet, iden_samples 1": {**MFN, "loss.iden_samples": 1},
    "MobileFaceNet, no L_iden": {**MFN, "loss.lambda_iden": 0.0},
}


def step_cost(batch: int, reps: int) -> None:
    from nasfe.config import load_space
    from nasfe.engine.network import build_network

    runs = {}
    for name, over in VARIANTS.items():
        torch.manual_seed(0)
        space = load_space("tiny", overrides=over)
        model, loss = build_network(space)
        model.train()
        g = torch.Generator().manual_seed(1)
        h, w, k = space.data.height, space.data.width, space.identity.refs
        data = (torch.rand(batch, 3, h, w, generator=g), torch.rand(batch, 3, h, w, generator=g))
        runs[name] = (model, loss, data, torch.rand(batch, k, 3, h, w, generator=g), [])

    def one(model, loss, data, refs):
        out = model(data[0], refs=refs)
        total, _ = loss(out.restored.float(), data[1], refs)
        total.backward()
        for p in model.parameters():
            p.grad = None

    for model, loss, data, refs, _ in runs.values():
        one(model, loss, data, refs)  # warm-up
    for r in range(reps):
        order = list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]
        for _, (model, loss, data, refs, times) in order:
            t = time.process_time()
            one(model, loss, data, refs.clone())  # a new tensor: no memo across steps
            times.append(time.process_time() - t)
    base = statistics.median(next(iter(runs.values()))[4])
    print(f"| variant (tiny, batch {batch}, 1 thread) | CPU s per step (median of {reps}) | ratio |")
    print("|---|---|---|")
    for name, run in runs.items():
        med = statistics.median(run[4])
        print(f"| {name} | {med:.3f} | {med / base:.2f} |")


def run_cost(variant: str | None) -> None:
    """Each variant in a fresh process (one-time costs alike), or, with ``variant``, that one here."""
    import subprocess
    import tempfile

    if variant is None:
        print("| tiny space, whole default run | search CPU s | retrain CPU s |")
        print("|---|---|---|")
        for name in ("as shipped", "random VGGFace, L2 only"):
            cmd = [sys.executable, __file__, "run", "--variant", name]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            print(out.strip().splitlines()[-1])
        return
    from nasfe.config import load_space
    from nasfe.engine.retrain import run_retrain
    from nasfe.engine.search import run_search
    from nasfe.genotype import Genotype

    space = load_space("tiny", overrides=VARIANTS.get(variant, {}))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        run_search(space, Path(tmp) / "search", resume=False)
        t1 = time.process_time()
        genotype = Genotype.from_json(Path(tmp) / "search" / "genotype.json", space)
        run_retrain(space, genotype, Path(tmp) / "retrain", resume=False)
        t2 = time.process_time()
    print(f"| {variant} | {t1 - t0:.1f} | {t2 - t1:.1f} |")


def size_study(ids: int, per_id: int) -> None:
    from nasfe.identity.align import align_faces
    from nasfe.identity.backbones import MobileFaceNet
    from nasfe.identity.packaged import MOBILEFACENET
    from tests.test_identity import load_celeba_id

    bb = MobileFaceNet(str(MOBILEFACENET))
    net = bb.net
    x, labels = load_celeba_id(n_ids=ids, per_id=per_id)
    lab = np.array(labels)
    same = torch.from_numpy((lab[:, None] == lab[None]) & ~np.eye(len(lab), dtype=bool))
    diff = torch.from_numpy(lab[:, None] != lab[None])

    def head_a(f):  # the 1/16 map resized to 7x7
        m = net.conv2(net.features[12:](f))
        return net.bn(net.conv3(net.gdconv(F.interpolate(m, size=(7, 7), mode="bilinear")))).flatten(1)

    def head_b(f):  # the 1/8 map resized to 14x14
        return net.head(F.interpolate(f, size=(14, 14), mode="bilinear"))

    def head_c(f):  # gdconv's kernel resized to the map, same sum
        m = net.conv2(net.features[12:](f))
        w = net.gdconv.depthwise.weight
        w2 = F.interpolate(w, size=m.shape[-2:], mode="bilinear")
        w2 = w2 * (w.sum((2, 3), keepdim=True) / w2.sum((2, 3), keepdim=True))
        return net.bn(net.conv3(net.gdconv.bn(F.conv2d(m, w2, groups=m.shape[1])))).flatten(1)

    def stats(e):
        e = F.normalize(e, dim=1)
        sim = e @ e.T
        gap = (sim[same].mean() - sim[diff].mean()).item()
        auc = (sim[same].numpy()[:, None] > sim[diff].numpy()[None]).mean()
        sim.fill_diagonal_(-2.0)
        nn_acc = (lab[sim.argmax(1).numpy()] == lab).mean()
        return f"{gap:.3f} | {nn_acc:.3f} | {auc:.3f}"

    small = F.interpolate(x, size=(48, 40), mode="bilinear", align_corners=False, antialias=True)
    print(f"| input | head | cos gap | nearest same | AUC |   ({ids} identities x {per_id})")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        print(f"| 176x144 -> 112 | as trained | {stats(bb.embedding(x))} |")
        print(f"| 48x40 -> 112 | as trained | {stats(bb.embedding(small))} |")
        for s in (96, 80, 64, 56, 48):
            f = net.trunk(bb._normalise(align_faces(small, s)))
            for name, head in (("a", head_a), ("b", head_b), ("c", head_c)):
                print(f"| 48x40 -> {s} | {name} | {stats(head(f))} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    st = sub.add_parser("step")
    st.add_argument("--batch", type=int, default=8)
    st.add_argument("--reps", type=int, default=10)
    rn = sub.add_parser("run")
    rn.add_argument("--variant", default=None)
    sz = sub.add_parser("size")
    sz.add_argument("--ids", type=int, default=40)
    sz.add_argument("--per-id", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.what == "step":
        step_cost(args.batch, args.reps)
    elif args.what == "run":
        run_cost(args.variant)
    else:
        size_study(args.ids, args.per_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
