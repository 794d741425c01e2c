"""Weights & Biases as an engine callback: rank 0 only, offline when W&B is unreachable, never fatal.

What a run records: the run's config (space, phase, workers); losses every ``log_every`` steps;
validation PSNR/SSIM every epoch; alpha and beta as heatmaps; the genotype every epoch as a JSON
artifact and a row of a ``genotypes`` table; sample restorations (degraded | restored | clean).

Any exception from wandb is logged once as a warning and turns the logger off: tracking must
never fail a training run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nasfe.engine.callbacks import Callback
import matplotlib
import matplotlib.pyplot as plt
import torch
from nasfe.imageio import to_uint8
from nasfe.imageio import atomic_write_json
import time
import struct

log = logging.getLogger("nasfe.tracking")

MODES = ("auto", "online", "offline", "disabled")


@dataclass
class WandbSettings:
    """How to open the W&B run (plain data: it travels to the Ray workers)."""

    project: str = "nasfe"
    mode: str = "auto"  # auto: online with an API key and a reachable server, else offline
    group: Optional[str] = None  # one group per nasfe run: its search and retrain phases
    name: Optional[str] = None
    run_id: Optional[str] = None  # stable id: re-running the same nasfe run resumes the W&B run
    dir: Optional[str] = None  # parent of the ``wandb/`` folder (default: the run directory)
    tags: list[str] = field(default_factory=list)
    log_every: int = 1  # steps between loss logs
    extra_config: dict[str, Any] = field(default_factory=dict)
    flush_every: float = 2.0  # seconds between writes of the run's .wandb file (W&B's default: 15)
    sweep_id: Optional[str] = None  # a W&B sweep this run belongs to (nasfe.tracking.wandb_sweep)


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text() or "wandb" in netrc.read_text()
    except OSError:
        return False


def _server_reachable(timeout: float = 2.0) -> bool:
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(requested: str = "auto") -> str:
    """The mode a run will use: ``WANDB_MODE`` wins, ``auto`` falls back to offline when needed."""
    env = os.environ.get("WANDB_MODE")
    if requested == "auto" and env:
        requested = env
    if requested not in MODES + ("dryrun", "run"):
        raise ValueError(f"wandb mode {requested!r}; expected one of {list(MODES)}")
    if requested == "dryrun":
        return "offline"
    if requested == "run":
        return "online"
    if requested != "auto":
        return requested
    if not _has_api_key():
        return "offline"
    return "online" if _server_reachable() else "offline"


def heatmap_figure(matrix, title: str, xlabels: list[str], ylabels: list[str]):
    """A matplotlib figure of a 2-D array (rows = ylabels, columns = xlabels) with values."""

    matplotlib.use("Agg", force=False)

    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 0.7 * cols + 1.5), max(2.0, 0.3 * rows + 1.0)), dpi=80)
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(cols), xlabels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(rows), ylabels, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def restoration_grid(panels: dict[str, Any]):
    """uint8 HxWx3 image: one row per sample, columns degraded | restored | clean."""

    cols = [panels[k].float().clamp(0, 1) for k in ("degraded", "restored", "clean")]
    rows = [torch.cat([c[i] for c in cols], dim=2) for i in range(len(cols[0]))]
    return to_uint8(torch.cat(rows, dim=1))


class WandbLogger(Callback):
    """Logs one training phase to W&B from rank 0; every wandb call is guarded."""

    def __init__(self, settings: Optional[WandbSettings] = None):
        self.settings = settings or WandbSettings()
        self.run = None
        self.disabled = False
        self.mode: Optional[str] = None
        self._table_rows: list[list[Any]] = []
        self._ops: list[str] = []
        self._last_step: Optional[int] = None  # the last step whose history this logger handed to W&B
        self._failed = False  # a W&B call raised (logging is off from then on)

    # ----- guard ---------------------------------------------------------------------------
    def _guard(self, what: str, fn, *args, **kwargs):
        if self.disabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # tracking never fails a run
            log.warning(
                "W&B %s failed (%s: %s); W&B logging is off for the rest of this run", what, type(exc).__name__, exc
            )
            self.disabled = True
            self._failed = True
            return None

    def _active(self, state) -> bool:
        return state.is_main and self.run is not None and not self.disabled

    # ----- hooks ---------------------------------------------------------------------------
    def on_start(self, state, config):
        if not state.is_main:
            return
        self._guard("init", self._init, state, config)

    def _init(self, state, config):
        import wandb

        s = self.settings
        self.mode = resolve_mode(s.mode)
        if self.mode == "disabled":
            self.disabled = True
            return
        root = Path(s.dir or state.run_dir or ".")
        root.mkdir(parents=True, exist_ok=True)
        self._ops = list(config.get("space", {}).get("model", {}).get("operators", []))
        run_config = {
            "phase": state.phase,
            "world_size": state.world_size,
            "epochs": state.epochs,
            "steps_per_epoch": state.steps_per_epoch,
            "resumed_from": config.get("resumed_from"),
            "space": config.get("space"),
            **s.extra_config,
        }
        self.run = wandb.init(
            project=s.project,
            mode=self.mode,
            dir=str(root),
            group=s.group,
            job_type=state.phase,
            name=s.name,
            id=s.run_id,
            resume="allow" if s.run_id else None,
            tags=list(s.tags) or None,
            config=run_config,
            settings=self._wandb_settings(),
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.write_pointer(root, state.phase)

    def _wandb_settings(self):
        """Quiet, and the .wandb file written every ``flush_every`` s: a killed node leaves its
        history up to then in the folder that is copied to storage."""
        import wandb

        # a new phase's run replaces any run still open in this process (W&B's default would hand
        # back the old run, and this phase would log into it)
        base = {
            "silent": True,
            "console": "off",
            "reinit": "finish_previous",
            **({"sweep_id": self.settings.sweep_id} if self.settings.sweep_id else {}),
        }
        try:
            return wandb.Settings(**base, x_transaction_log_flush_interval=float(self.settings.flush_every))
        except Exception:  # noqa: BLE001  (an older wandb without that setting)
            return wandb.Settings(**base)

    def close(self, exit_code: int = 1) -> None:
        """Finish the run after a failure (flushes its file; the resumed segment continues the id)."""
        if self.run is not None and not self.disabled:
            self._guard("finish", self.run.finish, exit_code=exit_code)
            self.disabled = True

    def write_pointer(self, folder: Path, phase: str) -> None:
        """``wandb_<phase>.json`` in ``folder``: mode, id, local run dir, url (how to find the run)."""

        atomic_write_json(Path(folder) / f"wandb_{phase}.json", self.describe())

    def describe(self) -> dict[str, Any]:
        """Where the W&B run is: ``{'mode', 'id', 'dir', 'url', 'sync'}``."""
        if self.run is None:
            return {"mode": self.mode or "disabled"}
        run_dir = str(Path(self.run.dir).parent)  # .../wandb/offline-run-<time>-<id>
        return {
            "mode": self.mode,
            "id": self.run.id,
            "project": self.settings.project,
            "dir": run_dir,
            "url": getattr(self.run, "url", None) if self.mode == "online" else None,
            "sync": f"wandb sync {run_dir}" if self.mode == "offline" else None,
        }

    def on_step(self, state, metrics):
        if not self._active(state) or state.step % max(1, self.settings.log_every):
            return
        data = {f"{state.phase}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        self._guard("log", self.run.log, {"step": state.step, **data})
        if not self._failed:
            self._last_step = state.step

    def on_epoch_end(self, state, metrics, genotype=None):
        if not self._active(state):
            return
        self._guard("epoch log", self._epoch, state, metrics, genotype)

    def _epoch(self, state, metrics, genotype):
        import wandb

        data: dict[str, Any] = {"step": state.step, "epoch": state.epoch}
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                data[f"{state.phase}/{k}"] = v
        for key in ("alphas", "betas"):
            if metrics.get(key) is not None:
                data[f"{state.phase}/{key}"] = wandb.Image(self._heatmap(key, metrics[key]))
        self.run.log(data)
        self._last_step = state.step
        if genotype is not None:
            self._log_genotype(state, genotype)

    def _heatmap(self, key, tensor):
        t = tensor.detach().float().cpu()
        if key == "alphas":  # (cells, edges, ops): softmax over operators, cell types stacked
            probs = t.softmax(-1).reshape(-1, t.shape[-1]).numpy()
            ylabels = [f"c{c}e{e}" for c in range(t.shape[0]) for e in range(t.shape[1])]
            xlabels = self._ops if len(self._ops) == t.shape[-1] else [str(i) for i in range(t.shape[-1])]
        else:  # (cells, levels, 3) transition logits: down / same / up
            probs = t.softmax(-1).reshape(-1, t.shape[-1]).numpy()
            ylabels = [f"l{c}s{s}" for c in range(t.shape[0]) for s in range(t.shape[1])]
            xlabels = ["down", "same", "up"][: t.shape[-1]]
        fig = heatmap_figure(probs, f"softmax({key})", xlabels, ylabels)
        try:
            import wandb

            return wandb.Image(fig)
        finally:
            plt.close(fig)

    def _log_genotype(self, state, genotype):
        import wandb

        d = genotype.to_dict()
        gid = genotype.genotype_id()
        art = wandb.Artifact(
            f"genotype-{self.run.id}",
            type="genotype",
            metadata={"epoch": state.epoch, "step": state.step, "genotype_id": gid},
        )
        with art.new_file("genotype.json") as fh:
            json.dump(d, fh, indent=1)
        self.run.log_artifact(art, aliases=[f"epoch-{state.epoch}", "latest"])
        self._table_rows.append([state.epoch, state.step, gid, json.dumps(d["cells"]), json.dumps(d["path"])])
        table = wandb.Table(columns=["epoch", "step", "genotype_id", "cells", "path"], data=self._table_rows)
        self.run.log({"step": state.step, "genotypes": table})

    def on_images(self, state, panels):
        if not self._active(state):
            return

        def log_images():
            import wandb

            grid = restoration_grid(panels)
            self.run.log(
                {"step": state.step, f"{state.phase}/samples": wandb.Image(grid, caption="degraded | restored | clean")}
            )

        self._guard("image log", log_images)

    def wandb_file(self) -> Optional[Path]:
        """The run's transaction log, ``<run folder>/run-<id>.wandb`` (None without a run)."""
        if self.run is None:
            return None
        return Path(self.run.dir).parent / f"run-{self.run.id}.wandb"

    def wait_flushed(self, timeout: Optional[float] = None) -> bool:
        """Wait until the run's ``.wandb`` file exists and holds the history of the last step
        logged (W&B writes it every ``flush_every`` s, and has no call to flush it now).

        A copy of the run folder taken after this returns True holds everything logged so far.
        ``timeout`` (default: 5 flush intervals, at least 20 s) bounds the wait; False when it
        passed (or there is no run).
        """

        path = self.wandb_file()
        if path is None:
            return False
        if self._failed:  # a W&B call failed: what it wrote so far is all there will be
            return path.is_file()
        limit = timeout if timeout is not None else max(20.0, 5 * float(self.settings.flush_every))
        deadline = time.monotonic() + limit
        while True:
            if path.is_file() and (self._last_step is None or _last_history_step(path) >= self._last_step):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def on_end(self, state, summary):
        if not self._active(state):
            return

        def finish():
            for k, v in summary.items():
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    self.run.summary[f"{state.phase}/{k}"] = v
            self.run.finish()

        self._guard("finish", finish)


def _last_history_step(path: Path) -> int:
    """The largest ``step`` of the history records in a ``.wandb`` file (-1 when none or unreadable)."""
    best = -1
    try:
        records = read_offline_records(path)
    except (OSError, ValueError):
        return best
    for r in records:
        if r.WhichOneof("record_type") != "history":
            continue
        for item in r.history.item:
            if (item.key or "/".join(item.nested_key)) == "step":
                try:
                    best = max(best, int(json.loads(item.value_json)))
                except (TypeError, ValueError):
                    pass
    return best


def read_offline_records(path: str | Path) -> list[Any]:
    """The records of a run's ``.wandb`` file as ``wandb_internal_pb2.Record`` messages.

    The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of LevelDB-log chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle,
    4 last). Used to inspect offline runs (and by the tests) without a W&B server. A file read
    while W&B still writes it (or copied then) yields the records before its torn tail.
    """

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a .wandb transaction log")
    block, head = 32768, 7
    pos, pending, out = head, b"", []
    while pos + head <= len(data):
        left = block - pos % block
        if left < head:  # a block tail too short for a chunk header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + head])
        pos += head
        chunk = data[pos : pos + length]
        if len(chunk) < length:  # a file copied or read while W&B writes it: drop the torn tail
            break
        pos += length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
        elif kind == 0 and length == 0:  # padding to the end of the block
            pos += block - pos % block if pos % block else 0
    records = []
    for r in out:
        try:
            records.append(wandb_internal_pb2.Record.FromString(r))
        except Exception:  # noqa: BLE001  (a record torn by a concurrent write: only ever the last)
            break
    return records
