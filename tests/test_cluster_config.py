"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema) and installs nasfe."""

from __future__ import annotations

import copy
import os
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
    # the parts pip and the jobs need, each its own mount under ~/nasfe (never the whole checkout)
    needed = {"nasfe", "jobs", "scripts", "search_spaces", "pyproject.toml", "setup.py", "README.md", "constraints.txt"}
    shipped = {Path(v).name: k for k, v in mounts.items() if k.startswith("/home/ubuntu/nasfe/")}
    assert needed <= set(shipped), needed - set(shipped)
    assert all(shipped[n] == f"/home/ubuntu/nasfe/{n}" for n in needed)
    assert all((REPO / v).exists() for v in mounts.values()), "every mounted path is part of a checkout"
    setup = " && ".join(raw["setup_commands"])
    assert "scripts/setup.sh" in setup and "cu12" in setup  # GPU torch, then the package
    assert "~/nasfe" in setup


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
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh"), "--torch-command"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "NASFE_TORCH": m.group(1)},
        check=True,
    ).stdout
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

    return subprocess.run(
        ["bash", str(REPO / "scripts" / "node_env.sh")],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )


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

    checkout = _checkout(tmp_path / "checkout")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "WANDB_API_KEY": "k" * 40}
    subprocess.run(["bash", str(checkout / "scripts" / "cluster_secrets.sh")], env=env, check=True, capture_output=True)
    out = checkout / "secrets" / "wandb.netrc"
    assert "password " + "k" * 40 in out.read_text() and "machine api.wandb.ai" in out.read_text()
    assert out.stat().st_mode & 0o077 == 0 and out.parent.stat().st_mode & 0o077 == 0


def test_the_secrets_script_never_empties_a_login_it_was_given_no_key_for(tmp_path):
    import subprocess

    checkout = _checkout(tmp_path / "checkout")
    script = ["bash", str(checkout / "scripts" / "cluster_secrets.sh")]
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(script, env={**env, "WANDB_API_KEY": "k" * 40}, check=True, capture_output=True)
    before = (checkout / "secrets" / "wandb.netrc").read_text()
    again = subprocess.run(script, env=env, check=True, capture_output=True, text=True)  # a shell without the key
    assert (checkout / "secrets" / "wandb.netrc").read_text() == before
    assert "kept as it was" in again.stdout


# ----- `ray up`, run from a fresh checkout: what Ray's launcher hashes and copies ------------
def _checkout(dest: Path) -> Path:
    """The tracked files of this repository (and the working tree's edits), as a fresh clone has them."""
    import shutil
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def _hashed_paths(raw, checkout: Path, home: Path, monkeypatch) -> list[str]:
    """What Ray's launcher reads when `ray up cluster.yaml` hashes the file mounts, from ``checkout``."""
    import builtins

    from ray.autoscaler._private import util as ray_util

    prepared = prepare_config(copy.deepcopy(raw))
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(ray_util, "_hash_cache", {})
    read: list[str] = []
    real_open = builtins.open

    def spy(path, *args, **kwargs):
        read.append(os.path.abspath(str(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    ray_util.hash_runtime_conf(prepared["file_mounts"], None, prepared, generate_file_mounts_contents_hash=True)
    monkeypatch.setattr(builtins, "open", real_open)
    return read


def test_ray_up_works_without_wandb_secrets_and_never_reads_the_venv(raw, tmp_path, monkeypatch):
    checkout = _checkout(tmp_path / "checkout")
    big = checkout / ".venv" / "lib" / "torch.so"  # what setup.sh leaves in a checkout
    big.parent.mkdir(parents=True)
    big.write_bytes(b"\0" * 1024)
    (checkout / "runs" / "r1").mkdir(parents=True)
    (checkout / "runs" / "r1" / "model.pt").write_bytes(b"x")
    home = tmp_path / "home"  # no ~/.nasfe: scripts/cluster_secrets.sh was never run
    home.mkdir()
    read = _hashed_paths(raw, checkout, home, monkeypatch)  # Ray raised FileNotFoundError here
    assert read and all(p.startswith(str(checkout)) for p in read), read[:5]
    assert not [p for p in read if "/.venv/" in p or "/runs/" in p or "/.git/" in p]
    assert str(checkout / "nasfe" / "distributed" / "ray_train.py") in read
    # with a login the same mounts carry it to the nodes
    (checkout / "secrets" / "wandb.netrc").write_text("machine api.wandb.ai\n  login user\n  password K\n")
    assert str(checkout / "secrets" / "wandb.netrc") in _hashed_paths(raw, checkout, home, monkeypatch)


def test_the_wandb_login_stays_out_of_git_and_of_working_dir_uploads(tmp_path):
    import subprocess
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    checkout = _checkout(tmp_path / "checkout")
    (checkout / "secrets" / "wandb.netrc").write_text("machine api.wandb.ai\n  login user\n  password K\n")
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "secrets/wandb.netrc"], cwd=REPO)
    assert ignored.returncode == 0, "git would commit secrets/wandb.netrc"
    pkg = tmp_path / "wd.zip"  # what `ray job submit --working-dir .` uploads
    create_package(str(checkout), pkg, include_gitignore=True)
    names = zipfile.ZipFile(pkg).namelist()
    assert any(n.endswith("nasfe/distributed/ray_train.py") for n in names)
    assert not [n for n in names if n.endswith("wandb.netrc")], names


def test_the_dashboard_listens_on_the_heads_loopback_only(raw):
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start


# ----- the same versions on every node ----------------------------------------------------------
def _pins() -> dict[str, str]:
    import re

    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", line.strip())
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_every_node_installs_the_versions_of_constraints_txt_without_dev_extras(raw):
    import re
    import tomllib
    from importlib.metadata import version

    import ray

    pins = _pins()
    assert pins.get("ray") == ray.__version__  # a node that joins later cannot get another Ray
    assert "torch" not in pins  # NASFE_TORCH picks the CPU or CUDA build
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", d).group(0)).lower() for d in deps} - {"torch"}
    assert names <= set(pins), names - set(pins)
    for name in names | {"boto3"}:  # what this machine installed is what the file says
        assert version(name) == pins[name], name
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert re.search(r'pip install .*-c "\$CONSTRAINTS"', setup) and "CONSTRAINTS=constraints.txt" in setup
    node = " ".join(raw["setup_commands"])
    assert "NASFE_EXTRAS= " in node, "nodes install no dev extras (pytest, moto)"
    assert "./constraints.txt" in raw["file_mounts"].values()
    head = " ".join(raw["head_setup_commands"])
    assert "-c ~/nasfe/constraints.txt" in head and "boto3" in head


def test_setup_lends_the_amis_torch_instead_of_downloading_it(tmp_path):
    import subprocess
    import sys
    import sysconfig

    checkout = _checkout(tmp_path / "checkout")
    base = tmp_path / "opt-pytorch"  # the Deep Learning AMI's PyTorch environment, torch only
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base)], check=True)
    site = Path(
        subprocess.run(
            [str(base / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text('__version__ = "2.8.0+cu128"\n')
    info = site / "torch-2.8.0+cu128.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.8.0+cu128\n")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "",
        "NASFE_TORCH": "2.8.0+cu128",
        "NASFE_BASE_PYTHON": str(base / "bin" / "python"),
        "PYTHON": sys.executable,
    }
    out = subprocess.run(
        ["bash", "scripts/setup.sh", "--torch-only"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr  # no download was tried (PIP_NO_INDEX)
    assert "torch 2.8.0+cu128 from" in out.stdout
    got = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert got == "2.8.0+cu128"
    del sysconfig


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
    calls = {
        "create_instances": "ec2:RunInstances",
        "create_tags": "ec2:CreateTags",
        "terminate_instances": "ec2:TerminateInstances",
        "instances.filter": "ec2:DescribeInstances",
        "describe_instance_types": "ec2:DescribeInstanceTypes",
    }
    for call, action in calls.items():
        assert call in src, f"Ray's AWS provider no longer calls {call}: revisit the policy"
        assert action in head, action
    passrole = [st for st in pol["nasfe-head"]["Statement"] if "iam:PassRole" in st["Action"]]
    assert passrole and all(
        re.search(r"role/nasfe-worker$", r)
        for st in passrole
        for r in ([st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"])
    )
    for name in ("nasfe-head", "nasfe-worker"):
        assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"} <= _actions(pol[name])
    assert not any(a.startswith(("ec2:", "iam:")) for a in _actions(pol["nasfe-worker"]))


def test_a_jobs_eight_gpu_workers_are_launched_in_one_wave(raw):
    """Ray's scheduler caps pending launches by upscaling_speed (at least 5), but not those of a
    placement group: Train's worker group (8 x {GPU: 1}) gets its 8 nodes at once."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
    from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE
    from ray.core.generated.common_pb2 import Bundle, PlacementStrategy
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData

    cfg = prepare_config(copy.deepcopy(raw))
    head = cfg["head_node_type"]

    class Provider:  # the head alone is up
        def node_tags(self, node):
            return {TAG_RAY_USER_NODE_TYPE: head, TAG_RAY_NODE_KIND: NODE_KIND_HEAD}

        def internal_ip(self, node):
            return "10.0.0.1"

    sched = ResourceDemandScheduler(
        Provider(), cfg["available_node_types"], cfg["max_workers"], head, float(cfg["upscaling_speed"])
    )
    group = PlacementGroupTableData(
        strategy=PlacementStrategy.PACK,
        state=PlacementGroupTableData.PENDING,
        bundles=[Bundle(unit_resources={"GPU": 1.0}) for _ in range(8)],
    )
    idle = {"10.0.0.1": {"CPU": 0.0}}

    def launch(**demand):
        return sched.get_nodes_to_launch(
            ["head"],
            {},
            unused_resources_by_ip=idle,
            max_resources_by_ip=idle,
            ensure_min_cluster_size=[],
            node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
            **demand,
        )[0]

    worker = next(n for n in cfg["available_node_types"] if n != head)
    assert launch(resource_demands=[], pending_placement_groups=[group]) == {worker: 8}
    # the same demand as loose tasks would come in waves: 5 first
    assert launch(resource_demands=[{"GPU": 1.0}] * 8, pending_placement_groups=[]) == {worker: 5}
