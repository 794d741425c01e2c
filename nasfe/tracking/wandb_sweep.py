"""W&B side of a sweep: the summary run (updated after every trial) and, online, a W&B sweep.

* :class:`SummaryRun` is one W&B run per sweep (``job_type='sweep-summary'``) with a stable id
  kept in ``<sweep>/wandb_sweep.json``, so a resumed sweep keeps writing into the same run. After
  every finished trial it logs the sweep table (``sweep_table``), ``best/*`` summary keys and,
  when the best trial changes, the best genotype as an artifact (type ``genotype``). Its config
  is flat (``sweep.metric``, ``sweep.params.loss.lambda_per.low`` ...).
* :func:`register_sweep` (online only) registers a W&B sweep whose runs are the trials: the
  sweep's parameters mirror the sweep space, a local controller (Optuna and ASHA choose the
  parameters, W&B never does), and every trial's run joins it (``wandb.Settings(sweep_id=...)``,
  keeping its own stable id and project).
  Offline there is no W&B sweep (the API needs the server): runs are grouped by the sweep name.

Every call is guarded: W&B never fails a sweep.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any, Optional
from nasfe.imageio import atomic_write_json
from nasfe.tracking.wandb_logger import resolve_mode
from nasfe.distributed.run_identity import flatten

log = logging.getLogger("nasfe.tracking")

STATE_FILE = "wandb_sweep.json"


def load_state(sweep_dir: Path) -> dict[str, Any]:
    """``wandb_sweep.json``: the summary run's id and the W&B sweep id (created on first use)."""

    path = Path(sweep_dir) / STATE_FILE
    state = json.loads(path.read_text()) if path.is_file() else {}
    if not state.get("summary_id"):
        state["summary_id"] = secrets.token_hex(8)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, state)
    return state


def save_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    """Write ``wandb_sweep.json``."""

    atomic_write_json(Path(sweep_dir) / STATE_FILE, state)


def sweep_config(sweep, name: str, project: str) -> dict[str, Any]:
    """The W&B sweep configuration mirroring ``sweep`` (a :class:`SweepSpace`)."""
    params: dict[str, Any] = {}
    for p in sweep.params:
        if p.type == "choice":
            params[p.key] = {"values": list(p.values)}
        elif p.type == "int":
            params[p.key] = (
                {"distribution": "q_log_uniform_values", "q": 1, "min": p.low, "max": p.high}
                if p.log
                else {"distribution": "int_uniform", "min": int(p.low), "max": int(p.high)}
            )
        else:
            params[p.key] = {
                "distribution": "log_uniform_values" if p.log else "uniform",
                "min": float(p.low),
                "max": float(p.high),
            }
    return {
        "name": name,
        "project": project,
        "method": "random",
        "metric": {"name": f"{sweep.phase}/{sweep.metric}", "goal": "maximize" if sweep.mode == "max" else "minimize"},
        "parameters": params,
        # Optuna (TPE) and ASHA choose every trial; W&B's own scheduler never proposes runs
        "controller": {"type": "local"},
        "description": f"nasfe sweep {name}: Ray Tune + Optuna TPE + ASHA over {sweep.base}",
    }


def register_sweep(sweep, name: str, settings, sweep_dir: Path) -> Optional[str]:
    """The W&B sweep id of this sweep (registered once, online only; None offline or on failure)."""
    try:
        if resolve_mode(settings.mode) != "online":
            return None
        state = load_state(sweep_dir)
        if state.get("sweep_id"):
            return state["sweep_id"]
        import wandb

        sweep_id = wandb.sweep(sweep_config(sweep, name, settings.project), project=settings.project)
        state["sweep_id"] = sweep_id
        save_state(sweep_dir, state)
        log.info("registered W&B sweep %s (project %s)", sweep_id, settings.project)
        return sweep_id
    except Exception as exc:  # tracking never fails a sweep
        log.warning(
            "W&B sweep not registered (%s: %s); the trials' runs are grouped by name only", type(exc).__name__, exc
        )
        return None


class SummaryRun:
    """The sweep's W&B summary run: opened lazily, resumed by id, updated per finished trial."""

    def __init__(self, settings, sweep, name: str, sweep_dir: Path, sweep_id: Optional[str] = None):
        self.settings = settings
        self.sweep = sweep
        self.name = name
        self.sweep_dir = Path(sweep_dir)
        self.sweep_id = sweep_id
        self.run = None
        self.mode: Optional[str] = None
        self.disabled = False
        self.best_logged: Optional[tuple] = None

    def __getstate__(self):  # a Tune callback holding this is pickled with the tuner: no live run
        state = self.__dict__.copy()
        state["run"] = None
        return state

    def _guard(self, what, fn, *args):
        if self.disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # tracking never fails a sweep
            log.warning(
                "W&B sweep summary %s failed (%s: %s); W&B summary is off for this sweep", what, type(exc).__name__, exc
            )
            self.disabled = True
            return None

    def _open(self):
        import wandb

        self.mode = resolve_mode(self.settings.mode)
        if self.mode == "disabled":
            self.disabled = True
            return
        state = load_state(self.sweep_dir)
        config = {"sweep.run_name": self.name, **flatten(self.sweep.to_dict(), "sweep")}
        if self.sweep_id:
            config["sweep.wandb_sweep_id"] = self.sweep_id
        self.run = wandb.init(
            project=self.settings.project,
            mode=self.mode,
            dir=str(self.sweep_dir),
            group=self.name,
            job_type="sweep-summary",
            name=f"{self.name}-summary",
            id=state["summary_id"],
            resume="allow",
            tags=["sweep", "sweep-summary", self.name],
            config=config,
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def update(self, rows, best, columns, data, best_genotype: Path) -> None:
        """Log the table (and the best genotype when the best trial changed)."""
        if self.run is None:
            self._guard("init", self._open)
        if self.run is None or self.disabled:
            return
        self._guard("log", self._log, rows, best, columns, data, best_genotype)

    def _log(self, rows, best, columns, data, best_genotype: Path):
        import wandb

        finished = [r for r in rows if r.status not in ("RUNNING", "PENDING")]
        counts = {s: sum(r.status == s for r in rows) for s in ("COMPLETED", "STOPPED", "DIVERGED", "ERROR")}
        self.run.log(
            {
                "sweep_table": wandb.Table(columns=list(columns), data=[list(r) for r in data]),
                "trials_finished": len(finished),
                **{f"trials_{k.lower()}": v for k, v in counts.items()},
            }
        )
        if best is None:
            return
        metric = self.sweep.metric
        self.run.summary.update(
            {
                "best_trial": best.trial,
                f"best_{metric}": best.metrics.get(metric),
                "best_genotype_id": best.genotype_id,
                **{f"best.{k}": v for k, v in best.params.items()},
            }
        )
        key = (best.trial, best.genotype_id)
        if key != self.best_logged and Path(best_genotype).is_file():
            art = wandb.Artifact(
                f"{self.name}-best-genotype",
                type="genotype",
                metadata={
                    "trial": best.trial,
                    "genotype_id": best.genotype_id,
                    "metric": metric,
                    "value": best.metrics.get(metric),
                    "params": best.params,
                },
            )
            art.add_file(str(best_genotype), name="genotype.json")
            self.run.log_artifact(art, aliases=["best", f"trial-{best.trial}"])
            self.best_logged = key

    def where(self) -> Optional[str]:
        """``'<mode>: <url or local folder>'`` of the run, or None."""
        if self.run is None:
            return None
        try:
            return f"{self.mode}: " + (self.run.url if self.mode == "online" else str(Path(self.run.dir).parent))
        except Exception:
            return None

    def close(self) -> None:
        """Finish the run (the next update of a resumed sweep reopens it by id)."""
        if self.run is not None:
            self._guard("finish", self.run.finish)
            self.run = None
