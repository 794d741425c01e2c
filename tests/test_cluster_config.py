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


# ----- the cluster path: what `ray up` runs on the nodes -------------------------------------
REPO = CLUSTER_YAML.parent
#: (torch version, CUDA tag) pairs published on download.pytorch.org/whl/<tag>, from the public
#: release notes and index listings (not reachable from this machine; cu124 ended with torch 2.6)
PUBLISHED_CUDA_TORCH = {
    "cu124": {"2.4.0", "2.4.1", "2.5.0", "2.5.1", "2.6.0"},
    "cu126": {"2.6.0", "2.7.0", "2.7.1", "2.8.0"},
    "cu128": {"2.7.0", "2.7.1", "2.8.0"},
}


def _torch_install(raw) -> tuple[str, str, str]:
    """(version, cuda tag, index url) the node setup installs, as scripts/setup.sh resolves them."""
    import re
    import subprocess

    setup = "\n".join(raw["setup_commands"])
    m = re.search(r"NASFE_TORCH=(\S+)", setup)
    assert m, "setup_commands must pick the CUDA torch with NASFE_TORCH=<version>+<cuda tag>"
    out = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--torch-command"], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin", "NASFE_TORCH": m.group(1)}, check=True).stdout
    spec = re.search(r"torch==(\S+)\s+--index-url\s+(\S+)", out)
    version, tag = spec.group(1).split("+")
    return version, tag, spec.group(2)


def test_cuda_torch_comes_from_a_version_and_index_that_exist(raw):
    version, tag, index = _torch_install(raw)
    assert index == f"https://download.pytorch.org/whl/{tag}"
    assert version in PUBLISHED_CUDA_TORCH.get(tag, set()), f"torch {version} was never published for {tag}"


def test_the_head_venv_has_boto3_for_the_autoscaler(raw):
    prepared = prepare_config(copy.deepcopy(raw))
    head_cmds = prepared["setup_commands"] + prepared["head_setup_commands"]
    start = " ".join(prepared["head_start_ray_commands"])
    venv = "nasfe/.venv/bin/"
    assert f"{venv}ray start --head" in start  # the autoscaler (monitor) runs from this venv
    assert any(venv in c and "pip install" in c and "boto3" in c for c in head_cmds), head_cmds


def test_worker_types_declare_their_gpus(raw):
    head = raw["head_node_type"]
    for name, t in raw["available_node_types"].items():
        if name != head:
            assert t["resources"].get("GPU", 0) >= 1, f"{name} must declare resources: {{GPU: n}}"


def _run_node_env(home: Path):
    import subprocess

    return subprocess.run(["bash", str(REPO / "scripts" / "node_env.sh")], env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)


def test_setup_commands_are_idempotent_and_install_the_wandb_login(raw, tmp_path):
    assert not any(">> ~/.bashrc" in c or ">>~/.bashrc" in c for c in raw["setup_commands"])
    assert any("scripts/node_env.sh" in c for c in raw["setup_commands"])
    (tmp_path / ".netrc").write_text("machine example.org login me password other\n")
    secrets = tmp_path / ".nasfe" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "wandb.netrc").write_text("machine api.wandb.ai\n  login user\n  password K1\n")
    for _ in range(3):  # three `ray up`s
        _run_node_env(tmp_path)
    bashrc = (tmp_path / ".bashrc").read_text()
    assert bashrc.count(". ~/.nasfe/env") == 1
    assert "nasfe/.venv/bin" in (tmp_path / ".nasfe" / "env").read_text()
    netrc = (tmp_path / ".netrc").read_text()
    assert netrc.count("api.wandb.ai") == 1 and "example.org" in netrc and "K1" in netrc
    assert (tmp_path / ".netrc").stat().st_mode & 0o077 == 0


def test_cluster_secrets_script_writes_a_private_wandb_login(tmp_path):
    import subprocess

    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "WANDB_API_KEY": "k" * 40}
    subprocess.run(["bash", str(REPO / "scripts" / "cluster_secrets.sh")], env=env, check=True, capture_output=True)
    out = tmp_path / ".nasfe" / "secrets" / "wandb.netrc"
    assert "password " + "k" * 40 in out.read_text() and "machine api.wandb.ai" in out.read_text()
    assert out.stat().st_mode & 0o077 == 0 and out.parent.stat().st_mode & 0o077 == 0
    # no key anywhere: an empty file, so `ray up`'s file mount still finds the folder
    env.pop("WANDB_API_KEY")
    (tmp_path / "empty").mkdir()
    env["HOME"] = str(tmp_path / "empty")
    subprocess.run(["bash", str(REPO / "scripts" / "cluster_secrets.sh")], env=env, check=True, capture_output=True)
    assert (tmp_path / "empty" / ".nasfe" / "secrets" / "wandb.netrc").read_text() == ""


def _policies() -> dict[str, dict]:
    """The IAM policies of docs/CLUSTER.md: each ```json block after a '#### <name> policy' heading."""
    import json
    import re

    text = (REPO / "docs" / "CLUSTER.md").read_text()
    found = re.findall(r"#### (\S+) policy\n.*?```json\n(.*?)```", text, flags=re.S)
    return {name: json.loads(body) for name, body in found}


def _actions(policy) -> set[str]:
    out = set()
    for st in policy["Statement"]:
        if st.get("Effect") == "Allow":
            acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            out |= set(acts)
    return out


def test_iam_policies_cover_what_the_autoscaler_and_the_runs_call(raw):
    import re

    import ray

    pol = _policies()
    assert {"nasfe-head", "nasfe-worker"} <= set(pol), list(pol)
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for t in raw["available_node_types"].values()}
    assert profiles == {"nasfe-head", "nasfe-worker"}
    head = _actions(pol["nasfe-head"])
    # the EC2 calls Ray's AWS node provider makes from the head, by their IAM action names
    src = (Path(ray.__file__).parent / "autoscaler" / "_private" / "aws" / "node_provider.py").read_text()
    calls = {"create_instances": "ec2:RunInstances", "create_tags": "ec2:CreateTags",
             "terminate_instances": "ec2:TerminateInstances", "instances.filter": "ec2:DescribeInstances",
             "describe_instance_types": "ec2:DescribeInstanceTypes"}
    for call, action in calls.items():
        assert call in src, f"Ray's AWS provider no longer calls {call}: revisit the policy"
        assert action in head, action
    passrole = [st for st in pol["nasfe-head"]["Statement"] if "iam:PassRole" in st["Action"]]
    assert passrole and all(re.search(r"role/nasfe-worker$", r) for st in passrole for r in
                            ([st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]))
    for name in ("nasfe-head", "nasfe-worker"):
        assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"} <= _actions(pol[name])
    assert not any(a.startswith(("ec2:", "iam:")) for a in _actions(pol["nasfe-worker"]))
