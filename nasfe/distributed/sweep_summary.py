"""The sweep's summary: one row per trial, the best trial, written after every finished trial.

:class:`SweepReport` writes ``sweep_table.csv``/``.md`` and ``best/`` into the sweep folder and
updates the W&B summary run (:mod:`nasfe.tracking.wandb_sweep`); :func:`summary_callback` is the
Tune callback that calls it whenever a trial completes or errors, so an interrupted sweep still
has its table. Rows come either from Tune's live ``Trial`` objects (during the sweep) or from the
``ResultGrid`` (after it).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from nasfe.distributed.sweep_space import SweepSpace
from nasfe.config import load_space
from nasfe.genotype import Genotype
from nasfe.model.registry import create_model
from nasfe.imageio import atomic_write_json, atomic_write_text

log = logging.getLogger("nasfe.sweep")

METRIC_KEYS = ("val_psnr", "val_ssim", "input_psnr")


def trial_run_name(trial_id: str) -> str:
    """The nasfe run name of a trial (also its W&B run name)."""
    return f"trial_{trial_id}"


@dataclass
class TrialRow:
    """One row of the sweep table."""

    trial: str
    status: str  # COMPLETED | STOPPED (by ASHA) | DIVERGED | ERROR | RUNNING | PENDING
    params: dict[str, Any]
    epochs: int
    stopped_early: bool
    metrics: dict[str, Any]
    parameters: Optional[int]
    genotype_id: Optional[str]
    run_dir: Optional[str]
    note: str = ""  # why a trial failed: "non-finite loss at search step 12", an error type


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _derived_parameters(run_dir: Path) -> Optional[int]:
    """Trainable parameters of the trial's derived network (from its genotype and space)."""
    gfile, sfile = run_dir / "genotype.json", run_dir / "space.yaml"
    if not gfile.is_file() or not sfile.is_file():
        return None
    try:
        space = load_space(sfile)
        model = create_model(space, Genotype.from_json(gfile, space=space))
        return int(sum(p.numel() for p in model.weight_parameters()))
    except Exception as exc:  # a table cell must not fail the sweep's report
        log.warning("%s: parameters not counted (%s)", run_dir, exc)
        return None


def _genotype_id(run_dir: Optional[Path]) -> Optional[str]:
    if run_dir is None or not (run_dir / "genotype.json").is_file():
        return None
    try:
        return Genotype.from_json(run_dir / "genotype.json").genotype_id()
    except Exception:  # an unreadable genotype only leaves the cell empty
        return None


def make_row(
    trial_id: str,
    config: dict,
    result: dict,
    sweep: SweepSpace,
    trials_dir: Optional[Path],
    error: Optional[str] = None,
    running: bool = False,
    cache: Optional[dict] = None,
) -> TrialRow:
    """One table row from a trial's sampled ``config``, its last ``result`` and its error, if any.

    ``cache`` (trial id -> (genotype id, parameters)) spares rebuilding finished trials' networks.
    """
    m = dict(result or {})
    run_dir = trials_dir / trial_run_name(trial_id) if trials_dir is not None else None
    epochs = int(m.get("epoch", 0) or 0)
    note = ""
    if m.get("diverged"):
        status, note = "DIVERGED", str(m.get("diverged_reason") or "non-finite metrics")
    elif error is not None:
        status, note = "ERROR", error
    elif running:
        status = "RUNNING"
    elif epochs >= sweep.max_t():
        status = "COMPLETED"
    elif epochs > 0:
        status = "STOPPED"  # by ASHA (or an interrupted sweep: see SweepResult.interrupted)
    else:
        status = "PENDING"
    metrics = {k: m[k] for k in METRIC_KEYS if _finite(m.get(k))}
    key = (trial_id, epochs)
    if cache is not None and key in cache:
        gid, params = cache[key]
    else:
        gid = _genotype_id(run_dir)
        params = _derived_parameters(run_dir) if run_dir is not None and not running else None
        if cache is not None and not running:
            cache[key] = (gid, params)
    return TrialRow(
        trial=trial_id,
        status=status,
        params={p.key: (config or {}).get(p.key) for p in sweep.params},
        epochs=epochs,
        stopped_early=status == "STOPPED",
        metrics=metrics,
        parameters=params,
        genotype_id=gid,
        run_dir=str(run_dir) if run_dir is not None else None,
        note=note,
    )


def _short_error(text: Any) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[-1] if lines else "error")[:160]


def rows_from_grid(grid, sweep: SweepSpace, trials_dir: Optional[Path]) -> list[TrialRow]:
    """The sweep table from Tune's ResultGrid (after ``fit()``)."""
    rows = []
    for result in grid:
        m = dict(result.metrics or {})
        trial_id = m.get("trial_id") or Path(result.path).name.replace("trial_", "")
        err = _short_error(result.error) if result.error is not None else None
        rows.append(make_row(trial_id, result.config or {}, m, sweep, trials_dir, error=err))
    return sorted(rows, key=lambda r: r.trial)


def rows_from_trials(
    trials, sweep: SweepSpace, trials_dir: Optional[Path], cache: Optional[dict] = None
) -> list[TrialRow]:
    """The sweep table from Tune's live ``Trial`` objects (inside a Tune callback)."""
    rows = []
    for t in trials:
        err = None
        if t.status == "ERROR":
            err = "error"
            if getattr(t, "error_file", None) and Path(t.error_file).is_file():
                err = _short_error(Path(t.error_file).read_text(errors="replace"))
        rows.append(
            make_row(
                t.trial_id,
                t.config or {},
                t.last_result or {},
                sweep,
                trials_dir,
                error=err,
                running=t.status == "RUNNING",
                cache=cache,
            )
        )
    return sorted(rows, key=lambda r: r.trial)


def pick_best(rows: Sequence[TrialRow], metric: str, mode: str) -> Optional[TrialRow]:
    """The best trial by its last ``metric``, among those that ran to the end (else all that reported).

    Diverged and failed trials never win.
    """
    scored = [r for r in rows if _finite(r.metrics.get(metric)) and r.status not in ("DIVERGED", "ERROR")]
    finished = [r for r in scored if r.status == "COMPLETED"]
    pool = finished or scored
    if not pool:
        return None
    sign = 1 if mode == "max" else -1
    return max(pool, key=lambda r: sign * r.metrics[metric])


def table_columns(sweep: SweepSpace) -> list[str]:
    """Columns of the sweep table."""
    return [
        "trial",
        "status",
        "epochs",
        *[p.key for p in sweep.params],
        "val_psnr",
        "val_ssim",
        "parameters",
        "genotype_id",
        "note",
    ]


def table_data(rows: Sequence[TrialRow], sweep: SweepSpace) -> list[list[Any]]:
    """The sweep table as plain rows (numbers stay numbers: a W&B dashboard can chart them)."""
    return [
        [
            r.trial,
            r.status,
            r.epochs,
            *[r.params.get(p.key) for p in sweep.params],
            r.metrics.get("val_psnr"),
            r.metrics.get("val_ssim"),
            r.parameters,
            r.genotype_id,
            r.note,
        ]
        for r in rows
    ]


def _cell(v: Any) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def render_table(rows: Sequence[TrialRow], sweep: SweepSpace, best: Optional[TrialRow]) -> tuple[str, str]:
    """``(csv, markdown)`` of the sweep table; the best trial is marked in the Markdown."""
    cols = table_columns(sweep)
    data = table_data(rows, sweep)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows([["" if v is None else v for v in r] for r in data])
    counts = {s: sum(r.status == s for r in rows) for s in ("COMPLETED", "STOPPED", "DIVERGED", "ERROR")}
    md = [
        f"# Sweep {sweep.name}",
        "",
        f"{len(rows)} trials ({', '.join(f'{n} {s.lower()}' for s, n in counts.items() if n)}), metric "
        f"{sweep.metric} ({sweep.mode}); phase {sweep.phase} of space {sweep.base}.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r, vals in zip(rows, data):
        cells = [_cell(v) for v in vals]
        if best is not None and r.trial == best.trial:
            cells[0] = f"**{cells[0]}** (best)"
        md.append("| " + " | ".join(cells) + " |")
    return buf.getvalue(), "\n".join(md) + "\n"


def save_best(best: TrialRow, sweep: SweepSpace, out: Path) -> list[Path]:
    """``best/genotype.json``, ``best/config.yaml`` (a loadable space) and ``best/trial.json``."""

    out.mkdir(parents=True, exist_ok=True)
    files = []
    run_dir = Path(best.run_dir) if best.run_dir else None
    source = None
    if run_dir is not None and (run_dir / "genotype.json").is_file():
        source = run_dir / "genotype.json"
    elif sweep.genotype:  # a retrain sweep: the genotype it retrained
        source = Path(sweep.genotype)
    if source is not None:
        atomic_write_text(out / "genotype.json", source.read_text())
        files.append(out / "genotype.json")
    space = load_space(sweep.base, {**sweep.overrides, **best.params})
    atomic_write_text(out / "config.yaml", yaml.safe_dump(space.to_dict(), sort_keys=False))
    atomic_write_json(
        out / "trial.json",
        {
            "trial": best.trial,
            "params": best.params,
            "metrics": best.metrics,
            "epochs": best.epochs,
            "parameters": best.parameters,
            "genotype_id": best.genotype_id,
            "run_dir": best.run_dir,
            "metric": sweep.metric,
            "mode": sweep.mode,
        },
    )
    files += [out / "config.yaml", out / "trial.json"]
    return files


class SweepReport:
    """Writes the table, the best trial and the W&B summary; call :meth:`update` with fresh rows."""

    def __init__(self, sweep: SweepSpace, sweep_dir: Path, wandb_summary=None, publish=None):
        self.sweep = sweep
        self.sweep_dir = Path(sweep_dir)
        self.wandb = wandb_summary  # a nasfe.tracking.wandb_sweep.SummaryRun, or None
        self.publish = publish  # called after each update: copies the summary to the sweep's storage
        self.updates = 0

    def update(self, rows: Sequence[TrialRow]) -> tuple[Optional[TrialRow], list[Path]]:
        """Rewrite the summary from ``rows``; returns ``(best, files written)``. Never raises."""

        best = pick_best(rows, self.sweep.metric, self.sweep.mode)
        files: list[Path] = []
        try:
            text_csv, text_md = render_table(rows, self.sweep, best)
            atomic_write_text(self.sweep_dir / "sweep_table.csv", text_csv)
            atomic_write_text(self.sweep_dir / "sweep_table.md", text_md)
            files = [self.sweep_dir / "sweep_table.csv", self.sweep_dir / "sweep_table.md"]
            if best is not None:
                files += save_best(best, self.sweep, self.sweep_dir / "best")
        except Exception as exc:  # a summary must not stop the sweep
            log.warning("sweep summary not written (%s: %s)", type(exc).__name__, exc)
        if self.wandb is not None:
            self.wandb.update(
                rows,
                best,
                table_columns(self.sweep),
                table_data(rows, self.sweep),
                self.sweep_dir / "best" / "genotype.json",
            )
        if self.publish is not None:
            try:
                self.publish()
            except Exception as exc:  # noqa: BLE001  (the next update copies it again)
                log.warning("sweep summary not copied to storage (%s: %s)", type(exc).__name__, exc)
        self.updates += 1
        return best, files


def summary_callback(report: SweepReport, trials_dir: Path, refresh=None):
    """A Tune callback that rewrites the summary whenever a trial completes or errors.

    ``refresh(names)``, when given, first copies those trials' files into ``trials_dir`` (S3 storage).
    """
    from ray import tune

    class SweepSummaryCallback(tune.Callback):
        def __init__(self):
            self.cache: dict = {}

        def _update(self, trials):
            if refresh is not None:
                refresh([trial_run_name(t.trial_id) for t in trials if t.status != "PENDING"])
            report.update(rows_from_trials(trials, report.sweep, trials_dir, self.cache))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._update(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._update(trials)

    return SweepSummaryCallback()
