"""The test process does not depend on the machine or on the order of tests (tests/conftest.py)."""

from __future__ import annotations

import torch


def test_a_job_without_an_address_in_the_tests_finds_no_cluster_started_elsewhere_on_the_machine(monkeypatch):
    from ray._common.utils import get_default_ray_temp_dir

    from nasfe.distributed.cluster import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not get_default_ray_temp_dir().startswith("/tmp/ray")  # another run's `ray start` writes there
    assert ray_address(None) is None


def test_torch_runs_on_one_thread_in_the_test_process_whatever_ran_before():
    assert torch.get_num_threads() == 1
