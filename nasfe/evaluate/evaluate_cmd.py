"""``nasfe evaluate``: a trained network and the baselines on test sets built by ``nasfe testsets``.

For every test set and every method (the degraded input, histogram equalisation, the classical
pipeline, NASFE with and without identity references, optional BN and other models) it measures,
per image:

* PSNR and SSIM against the clean image: RGB in [0, 1], full image, data range 1 (``--y-channel``
  adds the BT.601 Y-channel values); outputs are clamped to [0, 1] first (``nasfe.evaluate.metrics``);
* identity similarity between restored and clean faces under a face recogniser that is not the
  training identity backbone: mean cosine and mean angle (degrees) of their embeddings;
* face recognition Top-1 / Top-5 (Table 5): every restored image is a probe, matched by cosine
  against a gallery of clean images, one or more per identity of the test set.

Gallery and references (``--faces``, the face folder the test set was built from):

* with ``--faces``, each identity's gallery image is its first image in the folder that is not one
  of the test set's clean images (so no probe is matched against its own source image); an
  identity with no other image falls back to its test-set clean image(s), and the count of such
  identities is reported (``gallery_fallback``);
* NASFE's references for a probe are ``--refs`` images of the same identity from the folder,
  drawn with a fixed seed, excluding the probe's own clean image and the gallery image; a probe
  without any such image runs without references;
* without ``--faces``, the gallery is the test set's clean images (each probe's own source
  included, which makes recognition easier) and NASFE runs without references only.

Outputs in ``--out``: ``results.md`` / ``results.csv`` (one row per test set and method),
``results.json`` (settings, the summary and every per-image value), per test set a montage
(degraded | each method | clean) and a PSNR/SSIM bar chart, and ``report.md`` linking them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from nasfe.evaluate.baselines import get_baseline
from nasfe.imageio import ImageReadError, to_tensor
from nasfe.data.faces import FolderFaces
from nasfe.imageio import read_image
from tqdm import tqdm
from nasfe.data.testsets import TestSet, TestSetError, check_files, load_manifest
from nasfe.evaluate.metrics import MetricAccumulator, psnr, ssim
from nasfe.evaluate.recognition import recognition_topk
from nasfe.evaluate.report import bar_chart, montage, write_report, write_table
from nasfe.imageio import atomic_write_json
from nasfe.errors import CommandError
from nasfe.evaluate.recognition import OnnxRecognizer, TorchMobileFaceNetRecognizer, load_recognizer
from nasfe.evaluate.model_io import add_model_arguments
from nasfe.evaluate.baselines import BASELINES
from nasfe.evaluate.model_io import load_from_args, load_trained, model_kind, resolve_device
from nasfe.imageio import ensure_writable_dir

log = logging.getLogger("nasfe.evaluate")

#: the shared ONNX recogniser (ArcFace-style MobileFaceNet), used when --recognizer is not given
DEFAULT_RECOGNIZER = Path("models") / "mobilefacenet" / "MobileFaceNet.onnx"
MONTAGE_ROWS = 4

CONVENTIONS = (
    "PSNR/SSIM: RGB in [0, 1], full image (no border crop), data range 1, outputs clamped to [0, 1]; "
    "SSIM: Gaussian window 11, sigma 1.5 (BasicSR). *_y columns: BT.601 luma; ssim_grey: MATLAB rgb2gray "
    "(0.2989 R + 0.5870 G + 0.1140 B). identity_cos / "
    "identity_deg: mean cosine / angle between recogniser embeddings of restored and clean faces. "
    "top1 / top5: closed-set identification of restored probes against the clean gallery."
)


def shared_dir() -> Path:
    """``$NASFE_SHARED`` or the ``shared`` folder beside the repository (``../shared``)."""
    return Path(os.environ.get("NASFE_SHARED", Path(__file__).resolve().parents[3] / "shared"))


# ---- methods --------------------------------------------------------------------------------------
@dataclass
class Method:
    """One column of the comparison: ``run(y, refs, has_refs) -> restored`` (clamped to [0, 1])."""

    name: str
    run: Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]], torch.Tensor]
    uses_refs: bool = False


def baseline_method(name: str) -> Method:
    """A classical baseline of ``nasfe.evaluate.baselines`` (no references)."""

    fn = get_baseline(name)
    return Method(name, lambda y, refs, has: fn(y).clamp(0, 1))


def network_method(name: str, model, device: torch.device, with_refs: bool) -> Method:
    """A trained network; with ``with_refs`` it gets the identity references (when it uses them)."""
    uses = with_refs and getattr(model, "identity", None) is not None

    @torch.no_grad()
    def run(y, refs, has):
        r = refs.to(device) if (uses and refs is not None) else None
        h = has.to(device) if (r is not None and has is not None) else None
        out = model(y.to(device), refs=r, has_refs=h).restored
        return out.float().clamp(0, 1).cpu()

    return Method(name, run, uses)


# ---- gallery and references --------------------------------------------------------------------------
@dataclass
class FaceIndex:
    """The face folder's images by identity, a cache of loaded faces, and what was unreadable."""

    faces: Any  # nasfe.data.faces.FolderFaces
    by_id: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)

    def load(self, rec) -> Optional[torch.Tensor]:
        """The face of ``rec`` as (3,H,W), or None when unreadable (recorded by name, once)."""

        if rec.key not in self.cache:
            try:
                self.cache[rec.key] = to_tensor(self.faces.load(rec))
            except ImageReadError as exc:
                self.cache[rec.key] = None
                self.unreadable.append(str(exc))
                log.warning("%s", exc)
        return self.cache[rec.key]


def open_face_index(folder: str | Path, height: int, width: int) -> FaceIndex:
    """Index ``folder`` (``<identity>/<image>``) with faces fitted to ``height`` x ``width``."""

    faces = FolderFaces(folder, height=height, width=width)
    return FaceIndex(faces, faces.by_identity())


def build_gallery(clean: Sequence[dict], root: Path, index: Optional[FaceIndex]):
    """Gallery images (G,3,H,W), their identities, the gallery keys per identity, and the number of
    identities that had to fall back to the test set's own clean images (see the module doc)."""

    test_keys = {c.get("key") for c in clean}
    identities = sorted({str(c["identity"]) for c in clean})
    images, ids, gallery_key, fallback = [], [], {}, 0
    for ident in identities:
        got = None
        if index is not None:
            for rec in index.by_id.get(ident, []):
                if rec.key in test_keys:
                    continue
                img = index.load(rec)
                if img is not None:
                    got, gallery_key[ident] = img, rec.key
                    break
        if got is not None:
            images.append(got)
            ids.append(ident)
            continue
        fallback += 1
        for c in clean:
            if str(c["identity"]) == ident:
                images.append(to_tensor(read_image(root / c["file"])))
                ids.append(ident)
    return torch.stack(images), ids, gallery_key, fallback


def pick_refs(clean_entry: dict, index: FaceIndex, gallery_key: dict, k: int, seed: int, clean_index: int) -> list:
    """Up to ``k`` records of the probe's identity other than its clean image and the gallery image,
    drawn with a seed fixed per clean face (repeated when fewer than ``k`` exist; [] when none)."""
    ident = str(clean_entry["identity"])
    skip = {clean_entry.get("key"), gallery_key.get(ident)}
    cands = [r for r in index.by_id.get(ident, []) if r.key not in skip]
    if not cands or k < 1:
        return []
    rng = np.random.default_rng([seed, 7, clean_index])
    order = rng.permutation(len(cands)).tolist()
    return [cands[order[i % len(order)]] for i in range(k)]


def refs_for_batch(
    clean_ids: Sequence[int],
    clean: Sequence[dict],
    index: Optional[FaceIndex],
    gallery_key: dict,
    k: int,
    seed: int,
    size: tuple[int, int],
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(N,k,3,H,W) references and the (N,) mask of probes that have any, or (None, None)."""
    if index is None or k < 1:
        return None, None
    refs = torch.zeros(len(clean_ids), k, 3, *size)
    has = torch.zeros(len(clean_ids))
    for i, ci in enumerate(clean_ids):
        imgs = [
            im
            for im in (index.load(r) for r in pick_refs(clean[ci], index, gallery_key, k, seed, ci))
            if im is not None
        ]
        if imgs:
            for j in range(k):
                refs[i, j] = imgs[j % len(imgs)]
            has[i] = 1.0
    return refs, has


# ---- the evaluation loop -------------------------------------------------------------------------------
def subsample(n: int, max_images: Optional[int], seed: int, set_index: int) -> list[int]:
    """All indices, or a seeded sorted sample of ``max_images`` of them."""
    if max_images is None or max_images >= n:
        return list(range(n))
    return sorted(np.random.default_rng([seed, 11, set_index]).choice(n, max_images, replace=False).tolist())


def _image_metrics(out: torch.Tensor, x: torch.Tensor, y_channel: bool, ssim_convention: str) -> dict:
    """Per-image PSNR and SSIM (RGB), on Y too with ``y_channel``, and SSIM by another convention."""
    vals = {"psnr": psnr(out, x), "ssim": ssim(out, x)}
    if y_channel:
        vals.update(psnr_y=psnr(out, x, y_channel=True), ssim_y=ssim(out, x, y_channel=True))
    if ssim_convention != "rgb":
        vals[f"ssim_{ssim_convention}"] = ssim(out, x, convention=ssim_convention)
    return vals


def _clean_embeddings(recognizer, cids: list[int], x: torch.Tensor, cache: dict[int, torch.Tensor]) -> torch.Tensor:
    """The recogniser's embedding of each clean face of the batch (each face embedded once, cached)."""
    need = [c for c in sorted(set(cids)) if c not in cache]
    if need:
        for c, e in zip(need, recognizer.embed(torch.stack([x[cids.index(c)] for c in need]))):
            cache[c] = e
    return torch.stack([cache[c] for c in cids])


def _summary_row(test_set: str, method: str, s: dict) -> dict[str, Any]:
    """One method's row of one test set: the mean and spread of every metric it has."""
    row: dict[str, Any] = {"test_set": test_set, "method": method, "images": s["psnr"]["count"]}
    for key in ("psnr", "ssim", "psnr_y", "ssim_y", "ssim_grey", "identity_cos", "identity_deg"):
        if key in s:
            row[key] = s[key]["mean"]
            row[f"{key}_std"] = s[key]["std"]
    return row


def evaluate_sets(
    methods: Sequence[Method],
    root: str | Path,
    sets: Optional[Sequence[str]] = None,
    faces: Optional[str | Path] = None,
    k_refs: int = 3,
    recognizer=None,
    max_images: Optional[int] = None,
    batch_size: int = 8,
    y_channel: bool = False,
    seed: int = 0,
    progress: bool = True,
    ssim_convention: str = "rgb",
) -> dict[str, Any]:
    """Run every method on every test set; returns summary rows, per-image rows and montage panels.

    See the module docstring for the protocol. ``recognizer``: a ``Recognizer`` or None (no
    identity metrics). ``ssim_convention`` other than 'rgb' adds an ``ssim_<convention>`` column
    (``nasfe.evaluate.metrics.CONVENTIONS``) beside the RGB one. Raises ``TestSetError`` for a
    broken test-set folder.
    """
    root = Path(root)
    manifest = load_manifest(root)
    names = list(sets) if sets else list(manifest["sets"])
    missing = [s for s in names if s not in manifest["sets"]]
    if missing:
        raise TestSetError(f"{root / 'manifest.json'}: has no set(s) {missing} (has {sorted(manifest['sets'])})")
    check_files(root, names, manifest)  # every image as built (sha256) before anything is scored
    clean = manifest["clean"]

    h, w = read_image(root / clean[0]["file"]).shape[:2]
    index = open_face_index(faces, h, w) if faces else None
    gallery = gallery_ids = None
    gallery_key: dict = {}
    fallback = 0
    if recognizer is not None or index is not None:
        g_imgs, gallery_ids, gallery_key, fallback = build_gallery(clean, root, index)
        gallery = recognizer.embed(g_imgs) if recognizer is not None else None
    clean_emb: dict[int, torch.Tensor] = {}
    acc = MetricAccumulator()
    panels: dict[str, dict[str, torch.Tensor]] = {}
    rows: list[dict[str, Any]] = []
    no_refs = 0
    for si, name in enumerate(names):
        ts = TestSet(root, name)
        idx = subsample(len(ts), max_images, seed, si)
        probe_emb: dict[str, list[torch.Tensor]] = {m.name: [] for m in methods}
        probe_ids: list[str] = []
        bar = tqdm(total=len(idx), desc=name, unit="img", disable=not progress, file=sys.stderr)
        for b in range(0, len(idx), batch_size):
            items = [ts[i] for i in idx[b : b + batch_size]]
            y = torch.stack([it["y"] for it in items])
            x = torch.stack([it["x"] for it in items])
            cids = [int(it["record"]["clean"]) for it in items]
            files = [it["record"]["file"] for it in items]
            refs, has = refs_for_batch(cids, clean, index, gallery_key, k_refs, seed, (h, w))
            no_refs += 0 if has is None else int((has == 0).sum())
            probe_ids += [str(clean[c]["identity"]) for c in cids]
            ce = _clean_embeddings(recognizer, cids, x, clean_emb) if recognizer is not None else None
            if b == 0:
                panels[name] = {"degraded": y[:MONTAGE_ROWS]}
            for m in methods:
                out = m.run(y, refs if m.uses_refs else None, has if m.uses_refs else None)
                vals = _image_metrics(out, x, y_channel, ssim_convention)
                if recognizer is not None:
                    e = recognizer.embed(out)
                    probe_emb[m.name].append(e)
                    cos = torch.nn.functional.cosine_similarity(e, ce, dim=1).clamp(-1, 1)
                    vals.update(identity_cos=cos, identity_deg=torch.rad2deg(torch.arccos(cos)))
                acc.add(f"{name}\t{m.name}", vals, files)
                if b == 0 and m.name != "input":  # the montage's first column already shows the input
                    panels[name][m.name] = out[:MONTAGE_ROWS]
            if b == 0:
                panels[name]["clean"] = x[:MONTAGE_ROWS]
            bar.update(len(items))
        bar.close()
        summary = acc.summary()
        for m in methods:
            row = _summary_row(name, m.name, summary[f"{name}\t{m.name}"])
            if recognizer is not None and probe_emb[m.name]:
                topk = recognition_topk(torch.cat(probe_emb[m.name]), probe_ids, gallery, gallery_ids, ks=(1, 5))
                row.update(top1=topk["top1"], top5=topk["top5"], gallery_identities=topk["n_identities"])
            rows.append(row)
    per_image = []
    for r in acc.rows():
        ts_name, method = r.pop("test_set").split("\t")
        per_image.append({"test_set": ts_name, "method": method, **r})
    return {
        "rows": rows,
        "per_image": per_image,
        "panels": panels,
        "info": {
            "test_sets": names,
            "gallery_fallback_identities": fallback,
            "gallery": (
                "face folder (one image per identity, not a test-set clean image)"
                if index
                else "the test set's clean images"
            )
            if gallery_ids is not None
            else None,
            "probes_without_refs": no_refs if index is not None else None,
            "unreadable_face_files": index.unreadable if index else [],
            "refs_per_probe": k_refs if index is not None else 0,
        },
    }


# ---- outputs ------------------------------------------------------------------------------------------------
def table_columns(rows: Sequence[dict]) -> list[str]:
    """The summary columns present in ``rows``, in a fixed order."""
    order = [
        "test_set",
        "method",
        "psnr",
        "ssim",
        "psnr_y",
        "ssim_y",
        "ssim_grey",
        "identity_cos",
        "identity_deg",
        "top1",
        "top5",
        "images",
    ]
    present = {k for r in rows for k in r}
    return [c for c in order if c in present]


def write_outputs(
    result: dict[str, Any], out_dir: str | Path, settings: dict[str, Any], title: str = "NASFE evaluation"
) -> Path:
    """results.md/.csv/.json, a montage and a bar chart per test set, and report.md; returns the report path."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    write_table(rows, table_columns(rows), out / "results.md", out / "results.csv")
    atomic_write_json(
        out / "results.json",
        {
            "settings": settings,
            "conventions": CONVENTIONS,
            "info": result["info"],
            "summary": rows,
            "per_image": result["per_image"],
        },
    )
    figures: dict[str, Path] = {}
    for name, panels in result["panels"].items():
        safe = name.replace("/", "_")
        figures[f"{name}: degraded | methods | clean"] = montage(panels, out / f"montage_{safe}.png", MONTAGE_ROWS)
        chart = {
            r["method"]: {
                "psnr": r["psnr"],
                "ssim": r["ssim"],
                "psnr_std": r.get("psnr_std"),
                "ssim_std": r.get("ssim_std"),
            }
            for r in rows
            if r["test_set"] == name
        }
        figures[f"{name}: PSNR / SSIM per method"] = bar_chart(chart, out / f"bars_{safe}.png", title=name)
    info = result["info"]
    notes = [CONVENTIONS, "", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())]
    if info.get("gallery"):
        notes += [
            "",
            f"Gallery: {info['gallery']}; identities falling back to test-set clean images: "
            f"{info['gallery_fallback_identities']}.",
        ]
    if info.get("probes_without_refs") is not None:
        notes += [
            f"References: {info['refs_per_probe']} per probe from the face folder; probes without any: "
            f"{info['probes_without_refs']} (per method run)."
        ]
    if info.get("unreadable_face_files"):
        notes += [
            f"Unreadable face-folder files (left out): {len(info['unreadable_face_files'])}: "
            + "; ".join(info["unreadable_face_files"][:5])
        ]
    return write_report(out, {"Results": out / "results.md"}, figures, title=title, notes="\n".join(notes))


# ---- command ----------------------------------------------------------------------------------------------
def make_recognizer(spec: Optional[str]):
    """``onnx:PATH``, ``torch:PATH``, a plain path, ``none``, or None (the shared ONNX model when present)."""

    if spec is None:
        default = shared_dir() / DEFAULT_RECOGNIZER
        if not default.is_file():
            print(
                f"note: no recogniser ({default} not found): identity and Top-k metrics skipped; "
                "pass --recognizer onnx:PATH",
                file=sys.stderr,
            )
            return None, None
        spec = f"onnx:{default}"
    if spec == "none":
        return None, None
    kind, _, path = spec.partition(":")
    try:
        if kind == "onnx" and path:
            return OnnxRecognizer(path), spec
        if kind == "torch" and path:
            return TorchMobileFaceNetRecognizer(path), spec
        return load_recognizer(spec), spec
    except (ValueError, ImportError, OSError, RuntimeError) as exc:
        raise CommandError(f"--recognizer {spec}: {exc}") from None


def add_arguments(parser) -> None:
    """Arguments of ``nasfe evaluate``."""

    add_model_arguments(parser)
    parser.add_argument("--testsets", required=True, help="folder built by `nasfe testsets` (manifest.json)")
    parser.add_argument("--sets", nargs="+", default=None, help="test sets to use (default: all in the manifest)")
    parser.add_argument("--out", required=True, help="output folder for report.md, results.* and figures")
    parser.add_argument(
        "--faces",
        default=None,
        help="face folder the test set came from: references for NASFE and the recognition gallery",
    )
    parser.add_argument(
        "--refs", type=int, default=None, help="references per probe (default: the space's identity.refs)"
    )
    parser.add_argument("--baseline-model", default=None, help="model.pt of the BN baseline network (row 'BN')")
    parser.add_argument(
        "--extra-model",
        "--model",
        dest="extra_models",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another model.pt to add as a row (repeatable)",
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["input", "histeq", "classical"],
        help="classical rows (default: input histeq classical)",
    )
    parser.add_argument(
        "--recognizer",
        default=None,
        help="onnx:PATH, torch:PATH or none (default: ../shared/models/mobilefacenet/MobileFaceNet.onnx)",
    )
    parser.add_argument("--y-channel", action="store_true", help="also report PSNR/SSIM on the BT.601 Y channel")
    parser.add_argument(
        "--ssim-convention",
        default="rgb",
        choices=["rgb", "y", "grey"],
        help="also report SSIM on these channels (y: BT.601 luma, the closest to the paper's input "
        "SSIMs; grey: MATLAB rgb2gray); the ssim column stays RGB (docs/DEGRADATION.md)",
    )
    parser.add_argument("--max-images", type=int, default=None, help="seeded subsample of each test set")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsample and of the reference draw")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args) -> int:
    """``nasfe evaluate``."""

    if args.batch_size < 1 or (args.max_images is not None and args.max_images < 1):
        raise CommandError("--batch-size and --max-images must be >= 1")
    bad = [b for b in args.baselines if b not in BASELINES]
    if bad:
        raise CommandError(f"--baselines: unknown {bad}; known: {sorted(BASELINES)}")
    if not Path(args.testsets).is_dir():
        raise CommandError(f"--testsets {args.testsets}: no such folder")
    if args.faces and not Path(args.faces).is_dir():
        raise CommandError(f"--faces {args.faces}: no such folder")
    load_manifest(args.testsets)  # a broken test-set folder is one line now, not after loading the models
    check_files(args.testsets, args.sets)  # and a file that is not as built (sha256): before any model loads
    ensure_writable_dir(args.out)  # now, not after all the computing
    device = resolve_device(args.device)
    model, space, genotype = load_from_args(args, device)
    kind = model_kind(space, genotype)  # the rows name what the network is (BN, NASFE, random #k)
    k = space.identity.refs if args.refs is None else args.refs
    methods = [baseline_method(b) for b in args.baselines]
    for spec in args.extra_models:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CommandError(f"--model {spec!r}: expected NAME=PATH")
        methods.append(network_method(name, load_trained(path, device)[0], device, with_refs=bool(args.faces)))
    if args.baseline_model:
        methods.append(
            network_method(
                "BN (--baseline-model)" if kind == "BN" else "BN",
                load_trained(args.baseline_model, device)[0],
                device,
                with_refs=bool(args.faces),
            )
        )
    if space.model.use_identity:
        methods.append(network_method(f"{kind} w/o I_iden", model, device, with_refs=False))
        if args.faces and not getattr(model, "refs_usable", True):
            print(
                f"note: the face backbone weights ({space.identity.weights}) are not here: no row with references",
                file=sys.stderr,
            )
        elif args.faces:
            methods.append(network_method(kind, model, device, with_refs=True))
        else:
            print(
                f"note: without --faces {kind} runs without identity references (row '{kind} w/o I_iden')",
                file=sys.stderr,
            )
    else:
        methods.append(network_method(kind, model, device, with_refs=False))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise CommandError(f"two rows share a name: {names}")
    recognizer, rec_spec = make_recognizer(args.recognizer)
    if recognizer is not None and space.identity.backbone == "mobilefacenet" and space.identity.weights:
        print(
            "warning: the model was trained with a MobileFaceNet identity backbone; if it is the recogniser's "
            "network, the identity loss trained for this metric",
            file=sys.stderr,
        )
    t0 = time.time()
    result = evaluate_sets(
        methods,
        args.testsets,
        args.sets,
        args.faces,
        k,
        recognizer,
        args.max_images,
        args.batch_size,
        args.y_channel,
        args.seed,
        progress=not args.quiet,
        ssim_convention=args.ssim_convention,
    )
    settings = {
        "model": args.model or args.weights,
        "model_kind": kind,
        "space": space.name,
        "space_hash": space.space_hash(),
        "genotype_id": genotype.genotype_id() if genotype is not None else None,
        "testsets": str(args.testsets),
        "faces": args.faces,
        "refs": k if args.faces else 0,
        "recognizer": rec_spec,
        "max_images": args.max_images,
        "seed": args.seed,
        "device": str(device),
        "ssim_convention": args.ssim_convention,
        "seconds": round(time.time() - t0, 1),
    }
    report = write_outputs(result, args.out, settings)
    print((Path(args.out) / "results.md").read_text())
    print(f"report: {report}")
    return 0
