"""Sweep spaces: which hyperparameters a Ray Tune sweep samples, and how (``search_spaces/sweep_*.yaml``).

A sweep space names the search space it sweeps (``base``), the phase each trial runs
(``search`` or ``retrain``), the metric to optimise, the sampler/scheduler settings and, under
``params``, one distribution per dotted config key::

    base: tiny                  # a built-in space name or a path to a space YAML
    phase: search               # each trial is a Ray Train search run (or "retrain")
    metric: val_psnr
    mode: max
    num_samples: 4
    max_concurrent: null        # null: as many as the cluster's GPUs (or CPUs) allow
    workers_per_trial: 1
    seed: 0
    asha: {grace_period: 1, reduction_factor: 2, max_t: null}   # epochs; max_t null: the phase's epochs
    storage: null               # or sqlite:///sweeps/study.db (optuna-dashboard reads it)
    overrides: {search.epochs: 3}                               # fixed for every trial
    params:
      loss.lambda_per: {type: float, low: 0.01, high: 0.2, log: true}
      model.blocks: {type: int, low: 2, high: 4}
      search.lr: {type: choice, values: [1.0e-4, 5.0e-4]}

A search-space file may instead carry the same mapping under a top-level ``sweep:`` key; its
``base`` then defaults to that file. Every check raises :class:`~nasfe.config.ConfigError`
naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nasfe.registry import fusion_is_searched
from nasfe.config import (
    PHASES,
    SPACES_DIR,
    ConfigError,
    SpaceConfig,
    builtin_spaces_path,
    load_space,
    read_yaml,
    resolve_space_path,
)

PARAM_TYPES = ("float", "int", "choice")


@dataclass
class ParamSpec:
    """One swept hyperparameter: a dotted config key and its distribution."""

    key: str  # e.g. "loss.lambda_per"
    type: str  # "float" | "int" | "choice"
    low: Optional[float] = None
    high: Optional[float] = None  # inclusive, for both float and int
    log: bool = False
    step: Optional[float] = None  # optional grid step of an int/float range
    values: Optional[list[Any]] = None  # for "choice"

    def describe(self) -> str:
        """Short human form, e.g. ``float[0.01, 0.2] log``."""
        if self.type == "choice":
            return f"choice{self.values}"
        return (
            f"{self.type}[{self.low}, {self.high}]"
            + (" log" if self.log else "")
            + (f" step {self.step}" if self.step else "")
        )


@dataclass
class AshaConfig:
    """ASHA early stopping, in epochs (Ray Tune's ``ASHAScheduler`` with ``time_attr='epoch'``)."""

    grace_period: int = 1
    reduction_factor: int = 2
    max_t: Optional[int] = None  # None: the phase's epochs


@dataclass
class SweepSpace:
    """A validated sweep space (see the module docstring for the YAML form)."""

    name: str
    base: str
    phase: str = "search"
    metric: str = "val_psnr"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent: Optional[int] = None
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: Optional[float] = None  # None: 1 when the cluster has GPUs, else 0
    seed: int = 0
    asha: AshaConfig = field(default_factory=AshaConfig)
    storage: Optional[str] = None  # an Optuna storage URL (sqlite:///...)
    study_name: Optional[str] = None  # None: the sweep's name
    genotype: Optional[str] = None  # retrain sweeps: the genotype every trial retrains
    overrides: dict[str, Any] = field(default_factory=dict)
    params: list[ParamSpec] = field(default_factory=list)
    source: Optional[str] = None

    def base_space(self, sampled: Optional[dict[str, Any]] = None) -> SpaceConfig:
        """The base search space with the fixed overrides and ``sampled`` values applied."""
        return load_space(self.base, {**self.overrides, **(sampled or {})})

    def phase_epochs(self) -> int:
        """Epochs of one trial (the phase's ``epochs`` after the fixed overrides)."""
        space = self.base_space()
        return space.phase(self.phase).epochs

    def max_t(self) -> int:
        """ASHA's horizon: ``asha.max_t`` or the phase's epochs."""
        return self.asha.max_t or self.phase_epochs()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (YAML/JSON-safe)."""
        d = dataclasses.asdict(self)
        d["params"] = {
            p.pop("key"): {k: v for k, v in p.items() if v is not None and v is not False} for p in d["params"]
        }
        return d


_TOP_KEYS = {f.name for f in dataclasses.fields(SweepSpace)} - {"source"}


def _field_type(key: str) -> Any:
    """The annotation of dotted config key ``section.field`` in :class:`SpaceConfig`, or a ConfigError message."""
    parts = key.split(".")
    if len(parts) != 2:
        raise KeyError(f"expected 'section.field' (e.g. loss.lambda_per), got {key!r}")
    section, name = parts
    top = typing.get_type_hints(SpaceConfig)
    if section not in top or not dataclasses.is_dataclass(top[section]):
        sections = sorted(k for k, t in top.items() if dataclasses.is_dataclass(t))
        raise KeyError(f"unknown section {section!r}; known: {sections}")
    hints = typing.get_type_hints(top[section])
    if name not in hints:
        raise KeyError(f"{section!r} has no field {name!r}; known: {sorted(hints)}")
    tp = hints[name]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[int] -> int
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {what} must be a finite number, got {value!r}")
    return value


def _parse_param(key: str, raw: Any, where: str) -> ParamSpec:
    at = f"{where}: params.{key}"
    try:
        tp = _field_type(key)
    except KeyError as exc:
        raise ConfigError(f"{at}: {exc.args[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{at}: expected a mapping like {{type: float, low: ..., high: ...}}, got {raw!r}")
    allowed = {"type", "low", "high", "log", "step", "values"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{at}: unknown field(s) {unknown}; known: {sorted(allowed)}")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{at}.type: expected one of {list(PARAM_TYPES)}, got {kind!r}")
    if kind == "choice":
        return _parse_choice(key, raw, at)
    return _parse_range(key, kind, tp, raw, at)


def _parse_choice(key: str, raw: dict, at: str) -> ParamSpec:
    extra = sorted(set(raw) & {"low", "high", "log", "step"})
    if extra:
        raise ConfigError(f"{at}: a choice takes 'values' only, not {extra}")
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{at}.values: expected a non-empty list, got {values!r}")
    if len({repr(v) for v in values}) != len(values):
        raise ConfigError(f"{at}.values: lists a value twice: {values}")
    return ParamSpec(key, "choice", values=list(values))


def _parse_range(key: str, kind: str, tp: Any, raw: dict, at: str) -> ParamSpec:
    if "values" in raw:
        raise ConfigError(f"{at}: 'values' belongs to type: choice; a {kind} range takes low/high")
    if tp not in (int, float):
        raise ConfigError(
            f"{at}: {key} is a {getattr(tp, '__name__', tp)} field; "
            f"only numeric fields take a {kind} range (use type: choice)"
        )
    if kind == "float" and tp is int:
        raise ConfigError(f"{at}: {key} is an integer field; use type: int (or choice)")
    for bound in ("low", "high"):
        if bound not in raw:
            raise ConfigError(f"{at}: missing '{bound}'")
    low = _number(raw["low"], at, "low")
    high = _number(raw["high"], at, "high")
    if kind == "int" and (not isinstance(raw["low"], int) or not isinstance(raw["high"], int)):
        raise ConfigError(f"{at}: an int range needs integer low/high, got {raw['low']!r}, {raw['high']!r}")
    if not low < high:
        raise ConfigError(f"{at}: low ({low}) must be < high ({high})")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{at}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{at}: log: true requires low > 0, got low = {low}")
    step = raw.get("step")
    if step is not None:
        _number(step, at, "step")
        if step <= 0:
            raise ConfigError(f"{at}.step: must be > 0, got {step}")
        if log:
            raise ConfigError(f"{at}: step and log: true cannot be combined (Optuna samples one or the other)")
        if kind == "int" and not isinstance(step, int):
            raise ConfigError(f"{at}.step: an int range needs an integer step, got {step!r}")
    return ParamSpec(key, kind, low=low, high=high, log=log, step=step)


def _check_values_load(sweep: SweepSpace, where: str) -> None:
    """Every extreme of every range (and every choice) must give a valid space: catches e.g. blocks: 0."""
    try:
        sweep.base_space()
    except ConfigError as exc:
        raise ConfigError(f"{where}: base {sweep.base!r} with overrides does not load: {exc}") from None
    for p in sweep.params:
        probes = p.values if p.type == "choice" else [p.low, p.high]
        for value in probes:
            try:
                sweep.base_space({p.key: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: params.{p.key} = {value!r} gives an invalid space: {exc}") from None


def _resolve_base(data: dict, where: str, default_base: Optional[str]) -> str:
    base = data.get("base", default_base)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: base: expected the name or path of a search space, got {base!r}")
    # relative paths are relative to the sweep file, so a sweep and its space can travel together
    if base.endswith((".yaml", ".yml")) and not Path(base).is_absolute() and not Path(base).is_file():
        sibling = Path(where).parent / base
        if sibling.is_file():
            base = str(sibling)
    try:
        resolve_space_path(base)
    except ConfigError as exc:
        raise ConfigError(f"{where}: base: {exc}") from None
    return base


def _parse_asha(raw_asha: Any, where: str) -> AshaConfig:
    if not isinstance(raw_asha, dict):
        raise ConfigError(f"{where}: asha: expected a mapping {{grace_period, reduction_factor, max_t}}")
    bad = sorted(set(raw_asha) - {"grace_period", "reduction_factor", "max_t"})
    if bad:
        raise ConfigError(
            f"{where}: asha: unknown field(s) {bad}; known: ['grace_period', 'max_t', 'reduction_factor']"
        )
    asha = AshaConfig(**raw_asha)
    for key, minimum in (("grace_period", 1), ("reduction_factor", 2), ("max_t", 1)):
        v = getattr(asha, key)
        if v is None and key == "max_t":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{where}: asha.{key}: expected an integer >= {minimum}, got {v!r}")
    return asha


def _parse_overrides_and_params(data: dict, where: str) -> tuple[dict, list[ParamSpec]]:
    raw_over = data.get("overrides") or {}
    if not isinstance(raw_over, dict):
        raise ConfigError(f"{where}: overrides: expected a mapping of dotted keys to values")
    for key in raw_over:
        try:
            _field_type(str(key))
        except KeyError as exc:
            raise ConfigError(f"{where}: overrides.{key}: {exc.args[0]}") from None
    raw_params = data.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{where}: params: expected a non-empty mapping of dotted config keys to distributions")
    params = [_parse_param(str(k), v, where) for k, v in raw_params.items()]
    clash = sorted(set(raw_over) & set(raw_params))
    if clash:
        raise ConfigError(f"{where}: {clash} both fixed under overrides and swept under params")
    return dict(raw_over), params


def _fixed_genotype(genotype: str, params: list[ParamSpec], where: str) -> str:
    """A retrain sweep's genotype file (relative to the sweep file when not found as given)."""
    model_keys = [p.key for p in params if p.key.startswith("model.")]
    if model_keys:
        raise ConfigError(
            f"{where}: params {model_keys}: a retrain sweep of a fixed genotype cannot change "
            f"the architecture space; sweep model.* with phase: search"
        )
    gpath = Path(genotype)
    if not gpath.is_absolute() and not gpath.is_file() and (Path(where).parent / gpath).is_file():
        genotype = str(Path(where).parent / gpath)
    if not Path(genotype).is_file():
        raise ConfigError(f"{where}: genotype: file {genotype!r} not found")
    return genotype


def _check_budget(sweep: SweepSpace, where: str) -> None:
    """ASHA's rungs fit the trials' epochs; a retrain sweep of a NAS space names its genotype."""
    asha, phase = sweep.asha, sweep.phase
    epochs = sweep.phase_epochs()
    if asha.grace_period > sweep.max_t():
        raise ConfigError(
            f"{where}: asha.grace_period ({asha.grace_period}) exceeds asha.max_t / {phase}.epochs ({sweep.max_t()})"
        )
    if asha.max_t is not None and asha.max_t > epochs:
        raise ConfigError(f"{where}: asha.max_t ({asha.max_t}) exceeds {phase}.epochs ({epochs}) of the trials")
    if phase == "retrain" and sweep.genotype is None and fusion_is_searched(sweep.base_space().model.fusion):
        raise ConfigError(
            f"{where}: phase: retrain needs 'genotype: path/to/genotype.json' (or a base space with model.fusion: res2)"
        )


#: The scalar fields of a sweep space, in the order they are checked: (key, types, check, expected).
_SCALARS: tuple[tuple[str, Any, Any, str], ...] = (
    ("phase", str, lambda v: v in PHASES, f"one of {list(PHASES)}"),
    ("mode", str, lambda v: v in ("max", "min"), "'max' or 'min'"),
    ("metric", str, bool, "a metric name such as val_psnr"),
    ("num_samples", int, lambda v: v >= 1, "an integer >= 1"),
    ("max_concurrent", int, lambda v: v >= 1, "an integer >= 1 or null"),
    ("workers_per_trial", int, lambda v: v >= 1, "an integer >= 1"),
    ("cpus_per_worker", (int, float), lambda v: v > 0, "a number > 0"),
    ("gpus_per_worker", (int, float), lambda v: v >= 0, "a number >= 0 or null"),
    ("seed", int, None, "an integer"),
    ("storage", str, lambda v: "://" in v, "an Optuna storage URL like sqlite:///study.db, or null"),
    ("study_name", str, bool, "a name or null"),
    ("name", str, bool, "a name"),
    ("genotype", str, bool, "a path to genotype.json or null"),
)


def sweep_from_dict(
    data: Any, where: str, default_name: str = "sweep", default_base: Optional[str] = None
) -> SweepSpace:
    """Build and validate a :class:`SweepSpace` from parsed YAML; errors name ``where`` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    base = _resolve_base(data, where, default_base)

    defaults = {f.name: f.default for f in dataclasses.fields(SweepSpace)}
    values: dict[str, Any] = {}
    for key, tp, check, why in _SCALARS:
        default = default_name if key == "name" else defaults[key]
        value = data.get(key, default)
        if not (value is None and default is None):
            ok = isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool)
            if not ok or (check is not None and not check(value)):
                raise ConfigError(f"{where}: {key}: expected {why}, got {value!r}")
        values[key] = float(value) if key.endswith("per_worker") and value is not None else value
    asha = _parse_asha(data.get("asha") or {}, where)
    overrides, params = _parse_overrides_and_params(data, where)
    if values["phase"] == "retrain" and values["genotype"] is not None:
        values["genotype"] = _fixed_genotype(values["genotype"], params, where)
    sweep = SweepSpace(base=base, asha=asha, overrides=overrides, params=params, source=where, **values)
    _check_values_load(sweep, where)
    _check_budget(sweep, where)
    return sweep


def resolve_sweep_path(name_or_path: str | Path) -> Path:
    """A sweep YAML path, or a built-in name (``tiny`` -> search_spaces/sweep_tiny.yaml)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if p.is_file():
            return p
        if builtin_spaces_path(p) is not None:
            return builtin_spaces_path(p)
        raise ConfigError(f"{p}: sweep space file not found (in {Path.cwd()})")
    for candidate in (SPACES_DIR / f"sweep_{name_or_path}.yaml", SPACES_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(q.stem for q in SPACES_DIR.glob("sweep_*.yaml")) if SPACES_DIR.is_dir() else []
    raise ConfigError(f"unknown sweep space {str(name_or_path)!r}: not a .yaml file and not one of {known}")


def load_sweep(name_or_path: str | Path) -> SweepSpace:
    """Load and validate a sweep space YAML (``yaml.safe_load``)."""
    path = resolve_sweep_path(name_or_path)
    data = read_yaml(path, "sweep space file")  # UTF-8, valid, not empty: else one line naming the file
    default_name = path.stem[len("sweep_") :] if path.stem.startswith("sweep_") else path.stem
    if isinstance(data, dict) and "sweep" in data:  # a search space carrying its own sweep section
        return sweep_from_dict(data["sweep"], str(path), default_name=default_name, default_base=str(path))
    return sweep_from_dict(data, str(path), default_name=default_name)
