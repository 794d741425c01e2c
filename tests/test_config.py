"""Typed configuration: YAML loading, overrides, validation messages, hashing."""

from __future__ import annotations

import re

import pytest
import yaml

from nasfe.config import ConfigError, SPACES_DIR, SpaceConfig, load_space, parse_override, space_from_dict


def write(tmp_path, data, name="space.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_follow_the_paper():
    cfg = SpaceConfig()
    assert cfg.loss.lambda_per == 0.04 and cfg.loss.lambda_iden == 0.003
    assert cfg.retrain.lr == 5e-4 and cfg.retrain.batch_size == 40
    assert cfg.model.blocks == 12


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_loads(path):
    if path.stem.startswith("sweep"):
        pytest.skip("sweep spaces are read by nasfe.distributed.sweep_space")
    cfg = load_space(path)
    assert cfg.source == str(path)
    assert cfg.model.operators


def test_overrides_apply_dotted_keys(tmp_path):
    p = write(tmp_path, {"name": "t", "model": {"blocks": 3}})
    cfg = load_space(p, {"loss.lambda_per": 0.1, "model.blocks": 5})
    assert cfg.loss.lambda_per == 0.1 and cfg.model.blocks == 5


@pytest.mark.parametrize(
    "text, expected",
    [
        ("search.lr=0.001", ("search.lr", 0.001)),
        (" model.operators = [res_op, zero]", ("model.operators", ["res_op", "zero"])),
        ("data.root=a=b", ("data.root", "a=b")),  # only the first '=' splits
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    "text, needle",
    [
        ("search.lr", "expects KEY=VALUE"),
        ("=1", "expects KEY=VALUE"),
        ("a.b={x", "a.b: the value '{x' is not valid YAML"),
    ],
)
def test_parse_override_refuses_with_the_text(text, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_override(text)


def test_int_accepted_where_float_expected(tmp_path):
    cfg = load_space(write(tmp_path, {"loss": {"lambda_per": 1}}))
    assert isinstance(cfg.loss.lambda_per, float)


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"model": {"blokcs": 3}}, "model: unknown field(s) ['blokcs']"),
        ({"model": {"blocks": "many"}}, "model.blocks: expected an integer"),
        ({"model": {"blocks": 0}}, "model.blocks must be >= 1"),
        ({"model": {"operators": ["sep_conv_3x3", "warp_drive"]}}, "unknown operator(s) ['warp_drive']"),
        ({"model": {"operators": ["zero"]}}, "other than 'zero'"),
        ({"model": {"fusion": "magic"}}, "model.fusion = 'magic'"),
        ({"degrade": {"p_blur": 1.5}}, "degrade.p_blur must lie in [0, 1]"),
        ({"degrade": {"r_range": [0.5, 0.1]}}, "degrade.r_range"),
        ({"degrade": {"kernel_sizes": [12]}}, "kernel_sizes must be odd"),
        ({"search": {"epochs": 2, "warmup_epochs": 5}}, "warmup_epochs (5) exceeds"),
        ({"data": {"source": "imagenet"}}, "data.source"),
        ({"model": {"channels": 10, "partial_channels": 4}}, "divisible"),
        ({"model": [1, 2]}, "model: expected a mapping"),
        ({"retrain": {"lr_schedule": "step"}}, "retrain.lr_schedule = 'step'"),
        ({"search": {"lr": 1e-3, "lr_min": 1e-2}}, "search.lr_min must lie in [0, search.lr"),
        ({"retrain": {"lr_warmup_steps": -1}}, "retrain.lr_warmup_steps must be >= 0"),
    ],
)
def test_validation_names_the_field(tmp_path, data, needle):
    p = write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_space(p)
    assert needle in str(exc.value)
    assert str(p) in str(exc.value)


def test_unknown_space_name_lists_known():
    with pytest.raises(ConfigError, match="unknown search space 'nope'"):
        load_space("nope")


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "absent.yaml")


def test_invalid_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(p)


def test_space_hash_tracks_model_section_only():
    a = space_from_dict({"model": {"blocks": 3}})
    b = space_from_dict({"model": {"blocks": 3}, "loss": {"lambda_per": 0.5}})
    c = space_from_dict({"model": {"blocks": 4}})
    assert a.space_hash() == b.space_hash() != c.space_hash()
    assert len(a.space_hash()) == 12


def _load_snapshot_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("snapshots") / "make_shipped_spaces.py"
    spec = importlib.util.spec_from_file_location("make_shipped_spaces", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shipped_space_loads_to_its_recorded_values():
    """The loader reads every shipped space (and each sweep's base with its overrides) and an empty
    space to exactly the keys, values and number types recorded in tests/snapshots."""
    import json

    snap = _load_snapshot_module()
    recorded = json.loads(snap.OUT.read_text())
    now = json.loads(json.dumps(snap.shipped_spaces(), sort_keys=True))
    assert sorted(now) == sorted(recorded)
    for name in recorded:
        # dumped text compares int 3 and float 3.0 apart, which == would not
        assert json.dumps(now[name], sort_keys=True, indent=1) == json.dumps(
            recorded[name], sort_keys=True, indent=1
        ), name


def test_a_setting_both_phases_share_has_its_default_in_one_place():
    """search and retrain sections are PhaseConfig subclasses; a default given in two class bodies
    must differ (epochs; amp: bf16 by default only where retraining measured it faster), so a shared
    default is written once, in PhaseConfig."""
    import dataclasses

    from nasfe.config import PHASES, PhaseConfig

    sections = {type(SpaceConfig().phase(name)) for name in PHASES}
    assert all(issubclass(cls, PhaseConfig) and cls is not PhaseConfig for cls in sections)
    given: dict[str, list[tuple[str, object]]] = {}
    for cls in (PhaseConfig, *sections):
        for name in vars(cls).get("__annotations__", {}):
            if name in vars(cls):  # a default written in this class body
                given.setdefault(name, []).append((cls.__name__, vars(cls)[name]))
    for name, defaults in given.items():
        values = [v for _, v in defaults]
        assert len(values) == len({repr(v) for v in values}), f"{name}: the same default in {defaults}"
    shared = set.intersection(*({f.name for f in dataclasses.fields(cls)} for cls in sections))
    assert shared == {f.name for f in dataclasses.fields(PhaseConfig)}
    assert {n for n, d in given.items() if len(d) > 1} == {"epochs", "amp"}


def test_the_engine_trains_on_the_space_phase_sections_themselves(tmp_path):
    """No second copy of the phase settings: a phase reads its section of the space."""
    import dataclasses
    import importlib
    import pkgutil

    import nasfe.engine
    from nasfe.config import PhaseConfig
    from nasfe.engine.retrain import RetrainPhase
    from nasfe.engine.search import SearchPhase

    space = SpaceConfig()
    assert SearchPhase(space, tmp_path).cfg is space.search
    assert RetrainPhase(space, None, tmp_path).cfg is space.retrain
    phase_fields = {f.name for f in dataclasses.fields(PhaseConfig)}
    for info in pkgutil.iter_modules(nasfe.engine.__path__, "nasfe.engine."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and not issubclass(obj, PhaseConfig):
                overlap = phase_fields & {f.name for f in dataclasses.fields(obj)}
                assert len(overlap) < 5, f"{info.name}.{obj.__name__} repeats phase settings {sorted(overlap)}"
