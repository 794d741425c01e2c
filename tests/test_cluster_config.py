"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema) and installs nasfe."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_ray_schema_validation(raw):
    prepared = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cluster_yaml_has_gpu_spot_workers_and_cpu_head(raw):
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must not take Train workers"
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(w["node_config"]["InstanceType"].startswith(("g", "p")) for w in workers)
    assert all(w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for w in workers)


def test_cluster_yaml_ships_and_installs_the_project(raw):
    mounts = raw["file_mounts"]
    assert "." in mounts.values(), "file_mounts must copy this repository to the nodes"
    target = next(k for k, v in mounts.items() if v == ".")
    setup = " && ".join(raw["setup_commands"])
    assert "scripts/setup.sh" in setup and "cu12" in setup  # GPU torch, then the package
    assert target.rstrip("/").endswith("nasfe") and "~/nasfe" in setup


def test_a_broken_config_is_rejected(raw):
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["head"]["no_such_field"] = 1
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))
