"""Sweep spaces: YAML loading, validation messages, Optuna distributions, concurrency (no Ray)."""

from __future__ import annotations

import textwrap

import pytest

from nasfe.cli import main as cli_main
from nasfe.config import ConfigError
from nasfe.distributed.sweep import default_max_concurrent, optuna_distributions
from nasfe.distributed.sweep_space import load_sweep

VALID = """
base: tiny
overrides: {search.epochs: 3}
params:
  loss.lambda_per: {type: float, low: 0.01, high: 0.2, log: true}
  model.blocks: {type: int, low: 1, high: 3}
  search.lr: {type: choice, values: [1.0e-4, 5.0e-4]}
"""


def write(tmp_path, text, name="sweep_x.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_builtin_sweep_spaces_load(name):
    sweep = load_sweep(name)
    assert sweep.name == name and sweep.num_samples >= 4
    keys = {p.key for p in sweep.params}
    assert {"loss.lambda_per", "loss.lambda_iden", "model.blocks", "search.lr", "search.arch_lr"} <= keys


def test_valid_file_parses_every_field(tmp_path):
    sweep = load_sweep(write(tmp_path, VALID))
    assert sweep.name == "x" and sweep.base == "tiny" and sweep.phase == "search"
    assert sweep.metric == "val_psnr" and sweep.mode == "max" and sweep.max_t() == 3
    by_key = {p.key: p for p in sweep.params}
    assert by_key["loss.lambda_per"].log and by_key["loss.lambda_per"].low == 0.01
    assert by_key["search.lr"].values == [1e-4, 5e-4]
    # a sampled value applies on top of the fixed overrides
    space = sweep.base_space({"model.blocks": 2})
    assert space.model.blocks == 2 and space.search.epochs == 3


@pytest.mark.parametrize(
    "params, fragment",
    [
        (
            "loss.lambda_pre: {type: float, low: 0.1, high: 0.2}",
            "params.loss.lambda_pre: 'loss' has no field 'lambda_pre'",
        ),
        ("los.lambda_per: {type: float, low: 0.1, high: 0.2}", "unknown section 'los'"),
        (
            "loss.lambda_per: {type: float, low: 0.2, high: 0.1}",
            "params.loss.lambda_per: low (0.2) must be < high (0.1)",
        ),
        ("loss.lambda_per: {type: float, low: 0.0, high: 0.1, log: true}", "log: true requires low > 0"),
        ("loss.lambda_per: {type: float, low: x, high: 0.1}", "low must be a finite number"),
        ("model.blocks: {type: float, low: 1, high: 3}", "model.blocks is an integer field; use type: int"),
        ("data.source: {type: float, low: 1, high: 3}", "data.source is a str field"),
        ("model.blocks: {type: int, low: 0, high: 3}", "params.model.blocks = 0 gives an invalid space"),
        ("model.blocks: {type: normal, low: 1, high: 3}", "params.model.blocks.type: expected one of"),
        ("search.lr: {type: choice, values: []}", "params.search.lr.values: expected a non-empty list"),
        ("model.fusion: {type: choice, values: [nas, bogus]}", "params.model.fusion = 'bogus' gives an invalid space"),
    ],
)
def test_invalid_param_names_file_and_key(tmp_path, params, fragment):
    path = write(tmp_path, f"base: tiny\nparams:\n  {params}\n")
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    assert str(path) in str(exc.value)
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("phase: pretrain", "phase: expected one of ['search', 'retrain']"),
        ("mode: maximum", "mode: expected 'max' or 'min'"),
        ("num_samples: 0", "num_samples: expected an integer >= 1"),
        ("bogus: 1", "unknown field(s) ['bogus']"),
        ("asha: {grace_period: 5}", "asha.grace_period (5) exceeds"),
        ("asha: {max_t: 9}", "asha.max_t (9) exceeds search.epochs (3)"),
        ("asha: {reduction_factor: 1}", "asha.reduction_factor: expected an integer >= 2"),
        ("storage: study.db", "storage: expected an Optuna storage URL"),
        ("base: nosuchspace", "base: unknown search space 'nosuchspace'"),
        ("phase: retrain", "phase: retrain needs 'genotype: path/to/genotype.json'"),
    ],
)
def test_invalid_top_level(tmp_path, extra, fragment):
    text = VALID.replace("base: tiny\n", "") if extra.startswith("base:") else VALID
    path = write(tmp_path, extra + "\n" + text)
    with pytest.raises(ConfigError) as exc:
        load_sweep(path)
    assert str(path) in str(exc.value) and fragment in str(exc.value)


def test_not_yaml_and_missing_file(tmp_path):
    bad = write(tmp_path, "params: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep(bad)
    with pytest.raises(ConfigError, match="sweep space file not found"):
        load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown sweep space 'nope'"):
        load_sweep("nope")


def test_cli_invalid_sweep_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "base: tiny\nparams:\n  loss.lambda_per: {type: float, low: 0.3, high: 0.1}\n")
    rc = cli_main(["sweep", "--sweep", str(path), "--wandb-mode", "disabled"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("nasfe sweep: error:") and "low (0.3) must be < high (0.1)" in err[0]
    assert "Traceback" not in capsys.readouterr().err


def test_optuna_distributions_keep_bounds_and_scale(tmp_path):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists = optuna_distributions(load_sweep(write(tmp_path, VALID)))
    assert dists["loss.lambda_per"] == FloatDistribution(0.01, 0.2, log=True)
    assert dists["model.blocks"] == IntDistribution(1, 3)  # high is inclusive, as in the YAML
    assert dists["search.lr"] == CategoricalDistribution([1e-4, 5e-4])


def test_default_concurrency_follows_gpus_then_cpus(tmp_path):
    sweep = load_sweep(write(tmp_path, "workers_per_trial: 2\n" + VALID))
    assert default_max_concurrent(sweep, {"CPU": 64, "GPU": 8}, use_gpu=True) == 4
    assert default_max_concurrent(sweep, {"CPU": 8}, use_gpu=False) == 4
    assert default_max_concurrent(sweep, {"CPU": 1}, use_gpu=False) == 1
    fixed = load_sweep(write(tmp_path, "max_concurrent: 3\n" + VALID, "sweep_y.yaml"))
    assert default_max_concurrent(fixed, {"CPU": 64, "GPU": 8}, use_gpu=True) == 3
