"""``nasfe ablation``: train and evaluate the rows of Table 6 at a chosen scale and budget.

Each row is a set of overrides on a base search space (default ``tiny``):

==========================  =====================================================================
row                         overrides
==========================  =====================================================================
BN                          fusion res2, no classifier, no identity, L2 only (lambda_per = lambda_iden = 0)
BN-NAS                      fusion nas (search, then retrain), no classifier, no identity, L2 only
+ classification network    + use_classifier
+ identity information      + use_identity
NASFE (L_mse + L_per)       + lambda_per 0.04
NASFE w/ L_final            + lambda_iden 0.003
==========================  =====================================================================

A searched row searches its own space (the genotype carries the hash of the model section, and the
classifier and identity inputs change it); rows that differ only in the loss reuse that search.
Training runs the engine in this process (no Ray). Every row lives in ``OUT/rows/<row>/`` and
searches in ``OUT/search/<space hash>/``: a rerun resumes, and finished rows are reused.

Evaluation: PSNR/SSIM (RGB, [0, 1], full image) on Test-BN and Test-BNL. Without ``--testsets``
a small pair is built in ``OUT/testsets`` from the base space's *test* identities (never trained
on), whose other images also serve as identity references for the rows that use them.
The table puts our numbers beside the paper's Table 6 (CelebA columns) and the restoration
parameters of each network (Table 6 counts encoders, fusion and decoder, in millions).

Baselines (``--baselines``, default input, histeq, classical) are measured on the same images and
listed first. ``--seeds S1 S2 ...`` trains every row once per seed (search and retrain seeds; the
identity split and the test sets stay fixed) in ``OUT/seed<s>/`` and writes the mean and sample
std over seeds to ``OUT/ablation_seeds.md/.csv/.json`` (updated after every seed). ``--data ROOT``
sets the base space's ``data.root``; ``--lambda-scale F`` multiplies every row's lambda_per and
lambda_iden (e.g. by 1/(3HW) to keep the paper's loss balance with a per-pixel mean L2).

Budget: ``--budget-minutes M`` times one training step of the largest row first and sizes every
phase so the whole ablation takes about M minutes (a search step counts as two training steps);
``--search-epochs/--retrain-epochs/--steps-per-epoch`` set it explicitly instead, and
``--space-budget`` keeps the space's own search/retrain epochs and steps (search_spaces/cpu.yaml).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from nasfe.registry import fusion_is_searched
from nasfe.engine.callbacks import Callback
import dataclasses
from nasfe.config import load_space
from nasfe.engine.retrain import run_retrain
from nasfe.genotype import derive_from_arch
from nasfe.model.registry import create_model
from nasfe.data.faces import open_faces
from nasfe.data.splits import split_identities
from nasfe.data.testsets import build_testsets
from nasfe.imageio import ImageReadError, write_png_atomic
from nasfe.data.faces import fit_to_size
from nasfe.engine.search import run_search
from nasfe.genotype import Genotype
import json
from nasfe.evaluate.evaluate_cmd import baseline_method, evaluate_sets
from nasfe.imageio import atomic_write_json
from nasfe.engine.callbacks import ConsoleProgress
from nasfe.evaluate.evaluate_cmd import network_method
from nasfe.evaluate.model_io import load_trained
from nasfe.evaluate.report import write_table
import statistics
from nasfe.errors import CommandError
from nasfe.config import resolve_space_path
from nasfe.evaluate.model_io import resolve_device
from nasfe.evaluate.baselines import BASELINES

log = logging.getLogger("nasfe.evaluate")

_L2_ONLY = {"loss.lambda_per": 0.0, "loss.lambda_iden": 0.0}
_NAS_BASE = {"model.fusion": "nas", "model.use_classifier": False, "model.use_identity": False, **_L2_ONLY}


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 6: its name, a file-safe slug, space overrides and the paper's CelebA numbers."""

    name: str
    slug: str
    overrides: dict
    paper_bn: tuple[float, float]  # Test-BN CelebA (PSNR, SSIM)
    paper_bnl: tuple[float, float]  # Test-BNL CelebA (PSNR, SSIM)
    paper_params_m: float


ROWS: tuple[AblationRow, ...] = (
    AblationRow(
        "BN",
        "bn",
        {"model.fusion": "res2", "model.use_classifier": False, "model.use_identity": False, **_L2_ONLY},
        (19.72, 0.70),
        (19.95, 0.65),
        6.00,
    ),
    AblationRow("BN-NAS", "bn_nas", dict(_NAS_BASE), (22.51, 0.74), (21.17, 0.70), 6.25),
    AblationRow(
        "+ classification network",
        "cls",
        {**_NAS_BASE, "model.use_classifier": True},
        (23.28, 0.76),
        (21.56, 0.72),
        6.25,
    ),
    AblationRow(
        "+ identity information",
        "iden",
        {**_NAS_BASE, "model.use_classifier": True, "model.use_identity": True},
        (24.88, 0.81),
        (23.06, 0.80),
        6.40,
    ),
    AblationRow(
        "NASFE (L_mse + L_per)",
        "per",
        {**_NAS_BASE, "model.use_classifier": True, "model.use_identity": True, "loss.lambda_per": 0.04},
        (25.10, 0.84),
        (23.35, 0.83),
        6.40,
    ),
    AblationRow(
        "NASFE w/ L_final",
        "final",
        {
            **_NAS_BASE,
            "model.use_classifier": True,
            "model.use_identity": True,
            "loss.lambda_per": 0.04,
            "loss.lambda_iden": 0.003,
        },
        (25.57, 0.87),
        (23.80, 0.85),
        6.40,
    ),
)
ROW_SLUGS = [r.slug for r in ROWS]
EVAL_SETS = ("Test-BN", "Test-BNL")


def scale_lambdas(rows: Sequence[AblationRow], factor: float) -> list[AblationRow]:
    """``rows`` with their perceptual and identity loss weights multiplied by ``factor`` (rows with
    zero weights stay zero, so L2-only rows never run the loss backbone)."""

    if factor == 1.0:
        return list(rows)
    keys = ("loss.lambda_per", "loss.lambda_iden")
    return [
        dataclasses.replace(
            r, overrides={**r.overrides, **{k: r.overrides[k] * factor for k in keys if k in r.overrides}}
        )
        for r in rows
    ]


def row_space(base: str, row: AblationRow, schedule: dict[str, Any]):
    """The search space of ``row``: the base space with the row's and the schedule's overrides."""

    return load_space(base, {**row.overrides, **schedule})


# ---- budget -----------------------------------------------------------------------------------------
def schedule_from_args(search_epochs: int, retrain_epochs: int, steps_per_epoch: Optional[int]) -> dict[str, Any]:
    """Explicit epochs (and steps per epoch) for every search and retrain phase."""
    s: dict[str, Any] = {
        "search.epochs": search_epochs,
        "search.warmup_epochs": max(0, min(search_epochs - 1, search_epochs // 2)),
        "retrain.epochs": retrain_epochs,
    }
    if steps_per_epoch:
        s.update({"search.steps_per_epoch": steps_per_epoch, "retrain.steps_per_epoch": steps_per_epoch})
    return s


class _StepClock(Callback):
    """Records when each training step ends (to time steps without setup and validation)."""

    def __init__(self):
        self.times: list[float] = []

    def on_step(self, state, metrics):
        self.times.append(time.time())


def schedule_for_budget(
    base: str,
    rows: Sequence[AblationRow],
    minutes: float,
    work_dir: Path,
    device: str,
    base_overrides: Optional[dict] = None,
) -> tuple[dict[str, Any], float]:
    """Steps per phase so that all ``rows`` take about ``minutes``: three timed retrain steps of the
    most expensive row give seconds per step (the time between step ends, so setup and validation
    are left out); a search step counts twice; two epochs per phase."""

    probe = rows[-1]
    space = row_space(
        base,
        probe,
        {**(base_overrides or {}), "retrain.epochs": 1, "retrain.steps_per_epoch": 3, "retrain.val_batches": 1},
    )
    geno = _initial_genotype(space) if fusion_is_searched(space.model.fusion) else None
    clock = _StepClock()
    run_retrain(space, geno, work_dir / "calibration", callbacks=[clock], device=device, resume=False)
    per_step = max(1e-3, (clock.times[-1] - clock.times[0]) / max(1, len(clock.times) - 1))
    searches = len(
        {
            row_space(base, r, dict(base_overrides or {})).space_hash()
            for r in rows
            if r.overrides.get("model.fusion") == "nas"
        }
    )
    units = len(rows) + 2 * searches
    steps = max(2, int(minutes * 60 / per_step / units))
    spe = max(1, steps // 2)
    log.info(
        "budget %.1f min: %.2f s/step measured, %d step(s) per phase (2 epochs x %d)", minutes, per_step, 2 * spe, spe
    )
    return {
        "search.epochs": 2,
        "search.warmup_epochs": 1,
        "search.steps_per_epoch": spe,
        "retrain.epochs": 2,
        "retrain.steps_per_epoch": spe,
    }, per_step


def _initial_genotype(space):
    """The genotype of a fresh supernet's (seeded) architecture weights: used only to time a step."""

    with torch.random.fork_rng():
        torch.manual_seed(space.search.seed)
        net = create_model(space)
    return derive_from_arch(net.arch_parameters(), space)  # edge weights too, in partial-channel mode


# ---- test data ---------------------------------------------------------------------------------------
def build_ablation_testsets(
    base: str, out: Path, images: int, seed: int = 0, overrides: Optional[dict] = None
) -> tuple[Path, Path]:
    """Write the base space's test identities to ``out/test_faces/<identity>/`` (at the training size)
    and build Test-BN and Test-BNL from ``images`` of them in ``out/testsets``; returns both folders."""

    space = load_space(base, overrides)
    faces = open_faces(space.data)
    test = split_identities(faces, space.data)["test"]
    if not test:
        raise ValueError(f"space {space.name!r}: its data has no test identities (data.test_fraction)")
    folder = out / "test_faces"

    written = 0
    for i, rec in enumerate(test):
        path = folder / rec.identity / f"{i:05d}.png"
        if not path.is_file():
            try:
                write_png_atomic(path, fit_to_size(faces.load(rec), space.data.height, space.data.width))
            except ImageReadError as exc:
                print(f"nasfe ablation: test face skipped: {exc}", file=sys.stderr)
                continue
        written += 1
    root = out / "testsets"
    build_testsets(root, faces=str(folder), sets=EVAL_SETS, seed=seed, images=min(images, written), progress=False)
    return root, folder


# ---- the rows ---------------------------------------------------------------------------------------------
def train_row(
    base: str, row: AblationRow, schedule: dict[str, Any], out: Path, device: str, callbacks=()
) -> dict[str, Any]:
    """Search (when the row's fusion is searched; shared by rows of the same model section) and
    retrain one row; returns ``{'model_pt', 'space', 'genotype', 'seconds'}`` (a finished row is reused)."""

    space = row_space(base, row, schedule)
    run = out / "rows" / row.slug
    genotype = None
    summaries = [run / "retrain_summary.json"]
    if fusion_is_searched(space.model.fusion):
        sdir = out / "search" / space.space_hash()
        if not (sdir / "search_summary.json").is_file():
            run_search(space, sdir, callbacks=callbacks, device=device)
        genotype = Genotype.from_json(sdir / "genotype.json", space=space)
        summaries.append(sdir / "search_summary.json")
    if not (run / "retrain_summary.json").is_file():
        run_retrain(space, genotype, run, callbacks=callbacks, device=device)
    # the phases' own times, so a reused row reports what training it took, not 0
    seconds = sum(float(json.loads(p.read_text()).get("seconds") or 0.0) for p in summaries)
    return {"model_pt": run / "model.pt", "space": space, "genotype": genotype, "seconds": seconds}


def _scores(res: dict) -> dict[str, Any]:
    """PSNR/SSIM on Test-BN (``bn_*``) and Test-BNL (``bnl_*``) of one method's ``evaluate_sets`` rows."""
    by_set = {r["test_set"]: r for r in res["rows"]}
    return {
        "bn_psnr": by_set["Test-BN"]["psnr"],
        "bn_ssim": by_set["Test-BN"]["ssim"],
        "bnl_psnr": by_set["Test-BNL"]["psnr"],
        "bnl_ssim": by_set["Test-BNL"]["ssim"],
        "images": by_set["Test-BN"]["images"],
    }


def score_test_sets(
    label: str,
    model,
    space,
    model_pt: Path,
    cache_name: str,
    testsets: str | Path,
    faces,
    max_images: Optional[int],
    device: str,
    progress: bool,
) -> dict[str, Any]:
    """Test-BN/Test-BNL scores of one trained network, cached in ``cache_name`` beside ``model_pt``
    (valid while the test sets, faces, image cap and the model file stay the same)."""
    cache = model_pt.with_name(cache_name)
    key = {
        "testsets": str(Path(testsets).resolve()),
        "faces": str(faces),
        "max_images": max_images,
        "model_mtime_ns": model_pt.stat().st_mtime_ns,
    }
    scores = _cached_scores(cache, key)
    if scores is None:
        method = network_method(label, model, torch.device(device), with_refs=bool(faces))
        res = evaluate_sets(
            [method],
            testsets,
            EVAL_SETS,
            faces=faces,
            k_refs=space.identity.refs,
            recognizer=None,
            max_images=max_images,
            progress=progress,
        )
        scores = _store_scores(cache, key, _scores(res))
    return scores


def evaluate_baselines(
    names: Sequence[str], testsets: str | Path, max_images: Optional[int], progress: bool = True
) -> list[dict[str, Any]]:
    """Table rows of the classical baselines (``input``, ``histeq``, ``classical`` ...) on the same
    Test-BN/Test-BNL images the rows are measured on (same seeded subsample)."""

    table = []
    for name in names:
        key = {"method": name, "max_images": max_images}
        cached = _cached_scores(Path(testsets) / "ablation_scores" / f"{name}.json", key)
        if cached is None:
            res = evaluate_sets(
                [baseline_method(name)],
                testsets,
                EVAL_SETS,
                faces=None,
                k_refs=0,
                recognizer=None,
                max_images=max_images,
                progress=progress,
            )
            cached = _store_scores(Path(testsets) / "ablation_scores" / f"{name}.json", key, _scores(res))
        table.append({"row": f"{name} (baseline)", **cached})
    return table


def _cached_scores(path: Path, key: dict) -> Optional[dict]:
    """Scores stored by :func:`_store_scores` for the same ``key`` (and the same model file), or None."""

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get("scores") if data.get("key") == key else None


def _store_scores(path: Path, key: dict, scores: dict) -> dict:
    atomic_write_json(path, {"key": key, "scores": scores})
    return scores


TABLE_COLUMNS = [
    "row",
    "bn_psnr",
    "bn_ssim",
    "bnl_psnr",
    "bnl_ssim",
    "paper_bn_psnr",
    "paper_bn_ssim",
    "paper_bnl_psnr",
    "paper_bnl_ssim",
    "params_M",
    "paper_params_M",
    "train_seconds",
]


def run_ablation(
    base: str,
    out: str | Path,
    rows: Sequence[AblationRow] = ROWS,
    schedule: Optional[dict] = None,
    budget_minutes: Optional[float] = None,
    testsets: Optional[str | Path] = None,
    faces: Optional[str | Path] = None,
    test_images: int = 8,
    max_images: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
    baselines: Sequence[str] = (),
    base_overrides: Optional[dict] = None,
    only_finished: bool = False,
) -> dict[str, Any]:
    """Train and evaluate ``rows``; writes ablation.md/.csv/.json in ``out``; returns the table rows.
    ``only_finished``: rows not trained yet are left out instead of trained (to tabulate what a
    run has so far).

    ``baselines``: classical methods measured on the same images, listed first. ``base_overrides``
    (e.g. ``{"data.root": ...}``) apply to the base space everywhere, test sets included.
    """

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    per_step = None
    base_overrides = dict(base_overrides or {})
    if schedule is None:
        if budget_minutes is None:
            raise ValueError("give a schedule or budget_minutes")
        schedule, per_step = schedule_for_budget(base, rows, budget_minutes, out, device, base_overrides)
    schedule = {**base_overrides, **schedule}
    if testsets is None:
        testsets, faces = build_ablation_testsets(base, out, test_images, overrides=base_overrides)
    callbacks = [ConsoleProgress(bar=progress)]
    table = evaluate_baselines(baselines, testsets, max_images, progress)
    for row in rows:
        if only_finished and not (out / "rows" / row.slug / "retrain_summary.json").is_file():
            print(f"== {row.name}: not finished in {out}, left out (--only-finished)", file=sys.stderr)
            continue
        print(f"== {row.name}", file=sys.stderr)
        trained = train_row(base, row, schedule, out, device, callbacks)
        model, space, _ = load_trained(trained["model_pt"], device)
        # a finished row measured on the same test images is not measured again (reruns aggregate seeds)
        scores = score_test_sets(
            row.name,
            model,
            space,
            Path(trained["model_pt"]),
            "ablation_scores.json",
            testsets,
            faces,
            max_images,
            device,
            progress,
        )
        params = model.parameter_counts()["restoration"] / 1e6
        table.append(
            {
                "row": row.name,
                **scores,
                "paper_bn_psnr": row.paper_bn[0],
                "paper_bn_ssim": row.paper_bn[1],
                "paper_bnl_psnr": row.paper_bnl[0],
                "paper_bnl_ssim": row.paper_bnl[1],
                "params_M": params,
                "paper_params_M": row.paper_params_m,
                "train_seconds": round(trained["seconds"], 1),  # search + retrain
                "genotype_id": trained["genotype"].genotype_id() if trained["genotype"] is not None else None,
                "model_pt": str(trained["model_pt"]),
            }
        )
    write_table(table, TABLE_COLUMNS, out / "ablation.md", out / "ablation.csv")
    atomic_write_json(
        out / "ablation.json",
        {
            "base_space": base,
            "schedule": schedule,
            "seconds_per_step": per_step,
            "budget_minutes": budget_minutes,
            "testsets": str(testsets),
            "faces": str(faces) if faces else None,
            "device": device,
            "total_seconds": round(time.time() - t_start, 1),
            "rows": table,
            "note": "bn_* = Test-BN, bnl_* = Test-BNL, ours at this budget; paper_* = Table 6, CelebA columns",
        },
    )
    return {"rows": table, "schedule": schedule}


# ---- seeds ------------------------------------------------------------------------------------------------
SCORE_KEYS = ("bn_psnr", "bn_ssim", "bnl_psnr", "bnl_ssim")


def aggregate_seeds(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per table row over seeds: mean, sample std (ddof 1; 0 for one seed), min and max of
    every score, the mean training seconds, and the seeds it covers."""

    names: list[str] = []
    for table in per_seed.values():
        names += [r["row"] for r in table if r["row"] not in names]
    out = []
    for name in names:
        got = {s: r for s, table in per_seed.items() for r in table if r["row"] == name}
        first = next(iter(got.values()))
        agg: dict[str, Any] = {"row": name, "seeds": sorted(got)}
        for key in SCORE_KEYS:
            vals = [float(r[key]) for r in got.values()]
            agg[key] = statistics.fmean(vals)
            agg[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            agg[f"{key}_min"], agg[f"{key}_max"] = min(vals), max(vals)
        for key in ("paper_bn_psnr", "paper_bn_ssim", "paper_bnl_psnr", "paper_bnl_ssim", "params_M", "paper_params_M"):
            if key in first:
                agg[key] = first[key]
        secs = [r["train_seconds"] for r in got.values() if r.get("train_seconds") is not None]
        if secs:
            agg["train_seconds"] = statistics.fmean(secs)
        agg["table"] = " / ".join(
            f"{agg[k]:.2f} ± {agg[k + '_std']:.2f}" if "psnr" in k else f"{agg[k]:.3f} ± {agg[k + '_std']:.3f}"
            for k in SCORE_KEYS
        )
        out.append(agg)
    return out


def run_seeds(
    base: str,
    out: str | Path,
    seeds: Sequence[int],
    rows: Sequence[AblationRow] = ROWS,
    schedule: Optional[dict] = None,
    budget_minutes: Optional[float] = None,
    testsets: Optional[str | Path] = None,
    faces: Optional[str | Path] = None,
    test_images: int = 8,
    max_images: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
    baselines: Sequence[str] = (),
    base_overrides: Optional[dict] = None,
    only_finished: bool = False,
) -> dict[str, Any]:
    """:func:`run_ablation` once per seed (``search.seed`` and ``retrain.seed``; the data split and
    the test sets stay fixed) in ``out/seed<s>/``, then mean and spread over seeds in
    ``out/ablation_seeds.md/.csv/.json``. Baselines are deterministic: measured once."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_overrides = dict(base_overrides or {})
    if schedule is None:
        if budget_minutes is None:
            raise ValueError("give a schedule or budget_minutes")
        schedule, _ = schedule_for_budget(base, rows, budget_minutes / max(1, len(seeds)), out, device, base_overrides)
    if testsets is None:
        testsets, faces = build_ablation_testsets(base, out, test_images, overrides=base_overrides)
    per_seed: dict[int, list[dict[str, Any]]] = {}
    base_rows = evaluate_baselines(baselines, testsets, max_images, progress)
    for seed in seeds:
        print(f"=== seed {seed}", file=sys.stderr)
        sched = {**schedule, "search.seed": seed, "retrain.seed": seed}
        res = run_ablation(
            base,
            out / f"seed{seed}",
            rows,
            sched,
            None,
            testsets,
            faces,
            test_images,
            max_images,
            device,
            progress,
            (),
            base_overrides,
            only_finished,
        )
        per_seed[seed] = base_rows + res["rows"]
        table = aggregate_seeds(per_seed)
        cols = ["row", "seeds"] + [c for k in SCORE_KEYS for c in (k, f"{k}_std")] + ["params_M", "train_seconds"]
        write_table(table, cols, out / "ablation_seeds.md", out / "ablation_seeds.csv")
        atomic_write_json(
            out / "ablation_seeds.json",
            {
                "base_space": base,
                "schedule": schedule,
                "seeds": list(seeds),
                "finished_seeds": sorted(per_seed),
                "testsets": str(testsets),
                "faces": str(faces) if faces else None,
                "device": device,
                "rows": table,
                "per_seed": {str(s): t for s, t in per_seed.items()},
                "note": "mean over seeds, *_std = sample std (ddof 1); bn_* = Test-BN, bnl_* = Test-BNL",
            },
        )
    return {"rows": aggregate_seeds(per_seed), "per_seed": per_seed, "schedule": schedule}


# ---- command ----------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """Arguments of ``nasfe ablation``."""
    parser.add_argument("--space", default="tiny", help="base search space (YAML or built-in name; default tiny)")
    parser.add_argument("--out", required=True, help="output folder (rows, searches, test sets, ablation.md)")
    parser.add_argument("--rows", nargs="+", default=ROW_SLUGS, choices=ROW_SLUGS, help="rows to run (default all)")
    parser.add_argument(
        "--budget-minutes", type=float, default=None, help="size every phase to fit about this many minutes"
    )
    parser.add_argument("--search-epochs", type=int, default=None)
    parser.add_argument("--retrain-epochs", type=int, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument(
        "--space-budget",
        action="store_true",
        help="train every phase as the space's own search/retrain sections say (epochs, steps)",
    )
    parser.add_argument(
        "--testsets", default=None, help="built test sets with Test-BN and Test-BNL (default: build small ones)"
    )
    parser.add_argument("--faces", default=None, help="face folder of --testsets (identity references)")
    parser.add_argument("--test-images", type=int, default=8, help="clean faces of the built test sets")
    parser.add_argument("--max-images", type=int, default=None, help="seeded subsample of each test set")
    parser.add_argument(
        "--lambda-scale",
        type=float,
        default=1.0,
        help="multiply every row's lambda_per and lambda_iden (Table 6's 0.04 / 0.003) by this "
        "factor, e.g. 1/(3*H*W) to keep the paper's balance with a per-pixel mean L2",
    )
    parser.add_argument(
        "--only-finished",
        action="store_true",
        help="tabulate the rows (and seeds) already trained in OUT; train nothing",
    )
    parser.add_argument(
        "--data", default=None, help="face folder: sets data.root of the base space (rows and test sets)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="train every row once per seed (OUT/seed<s>/) and report mean and spread "
        "(OUT/ablation_seeds.md); default: the space's seeds, one run",
    )
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["input", "histeq", "classical"],
        help="classical methods measured on the same images (default: input histeq classical; "
        "none: give the flag alone)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args) -> int:
    """``nasfe ablation``."""

    resolve_space_path(args.space)
    explicit = args.search_epochs is not None or args.retrain_epochs is not None
    if sum([explicit, args.budget_minutes is not None, args.space_budget]) > 1:
        raise CommandError("give one budget: --budget-minutes, --search-epochs/--retrain-epochs or --space-budget")
    if not explicit and args.budget_minutes is None and not args.space_budget:
        raise CommandError(
            "give a budget: --budget-minutes M, --search-epochs N --retrain-epochs N, "
            "or --space-budget (the space's own epochs)"
        )
    schedule = {} if args.space_budget else None
    if explicit:
        se, re_ = args.search_epochs or 1, args.retrain_epochs or 1
        if se < 1 or re_ < 1 or (args.steps_per_epoch is not None and args.steps_per_epoch < 1):
            raise CommandError("--search-epochs, --retrain-epochs and --steps-per-epoch must be >= 1")
        schedule = schedule_from_args(se, re_, args.steps_per_epoch)
    elif args.budget_minutes is not None and args.budget_minutes <= 0:
        raise CommandError(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    if args.faces and not args.testsets:
        raise CommandError("--faces goes with --testsets (the built test sets come with their own faces)")

    bad = [b for b in args.baselines if b not in BASELINES]
    if bad:
        raise CommandError(f"--baselines: unknown {bad}; known: {sorted(BASELINES)}")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise CommandError(f"--seeds: repeated seed in {args.seeds}")
    if not args.lambda_scale > 0:
        raise CommandError(f"--lambda-scale must be > 0, got {args.lambda_scale}")
    base_overrides: dict[str, Any] = {}
    if args.data is not None:
        if not Path(args.data).expanduser().is_dir():
            raise CommandError(f"--data {args.data}: no such folder")
        base_overrides["data.root"] = str(Path(args.data).expanduser())
    device = str(resolve_device(args.device))
    rows = scale_lambdas([r for r in ROWS if r.slug in args.rows], args.lambda_scale)
    common = dict(
        schedule=schedule,
        budget_minutes=args.budget_minutes,
        testsets=args.testsets,
        faces=args.faces,
        test_images=args.test_images,
        max_images=args.max_images,
        device=device,
        progress=not args.quiet,
        baselines=args.baselines,
        base_overrides=base_overrides,
        only_finished=args.only_finished,
    )
    if args.seeds:
        result = run_seeds(args.space, args.out, args.seeds, rows, **common)
        table = Path(args.out) / "ablation_seeds.md"
    else:
        result = run_ablation(args.space, args.out, rows, **common)
        table = Path(args.out) / "ablation.md"
    print(table.read_text())
    print(f"{len(result['rows'])} row(s); table: {table} (.csv, .json)")
    return 0
