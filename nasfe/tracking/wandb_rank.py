"""The W&B run of a rank study (``nasfe rank``): one table row per genotype and a scatter plot of
supernet score against stand-alone validation PSNR. Offline without a network; never fails the job."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional
from nasfe.tracking.wandb_logger import resolve_mode

log = logging.getLogger("nasfe.tracking")

#: columns of the W&B table (``rank.json`` rows)
COLUMNS = (
    "label",
    "kind",
    "genotype_id",
    "score_alpha",
    "score_strength",
    "val_psnr",
    "bn_psnr",
    "bn_ssim",
    "bnl_psnr",
    "bnl_ssim",
)


def log_rank(settings, name: str, data: dict[str, Any], png: Path, folder: Path) -> Optional[str]:
    """Log ``data`` (what ``rank.json`` holds) to a W&B run ``<name>-rank`` under ``folder``;
    returns ``'<mode>: <where>'`` or None when W&B is off or failed (a warning, never an error)."""
    try:
        import wandb

        mode = resolve_mode(settings.mode)
        if mode == "disabled":
            return None
        run = wandb.init(
            project=settings.project,
            mode=mode,
            dir=str(folder),
            group=name,
            job_type="rank",
            name=f"{name}-rank",
            tags=["rank", name],
            reinit="create_new",
            config={"rank.name": name, "rank.space": data.get("space")},
            settings=wandb.Settings(silent=True, console="off"),
        )
        try:
            table = wandb.Table(columns=list(COLUMNS), data=[[r.get(c) for c in COLUMNS] for r in data["rows"]])
            logged: dict[str, Any] = {"rank_table": table}
            for rule in ("alpha", "strength"):
                if any(r.get(f"score_{rule}") is not None and r.get("val_psnr") is not None for r in data["rows"]):
                    logged[f"rank_scatter_{rule}"] = wandb.plot.scatter(
                        table, f"score_{rule}", "val_psnr", title=f"supernet score ({rule}) vs stand-alone val PSNR"
                    )
            if Path(png).is_file():
                logged["rank_png"] = wandb.Image(str(png))
            run.log(logged)
            run.summary.update({f"kendall_tau_{k}": v for k, v in (data.get("kendall_tau") or {}).items()})
            run.summary["searched_percentile"] = data.get("searched_percentile")
            where = f"{mode}: " + (run.url if mode == "online" else str(Path(run.dir).parent))
        finally:
            run.finish()
        return where
    except Exception as exc:  # tracking never fails a study
        log.warning("W&B rank table not logged (%s: %s)", type(exc).__name__, exc)
        return None
