"""Which Ray Train failures are retried: your errors and divergence never, a lost node without a
limit, a wait for room up to a bound, anything else up to ``max_failures``. The policy is checked
here on Ray's own error types; tests/test_cluster_failures.py runs it on several raylets."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")
from ray.exceptions import RayActorError  # noqa: E402
from ray.train import FailureConfig  # noqa: E402
from ray.train.v2._internal.exceptions import (  # noqa: E402
    WorkerGroupStartupTimeoutError,
    WorkerHealthCheckFailedError,
)
from ray.train.v2._internal.execution.failure_handling import FailureDecision  # noqa: E402
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError  # noqa: E402

from nasfe.distributed.failure_policy import (  # noqa: E402
    NODE,
    OTHER,
    STARTUP,
    USER,
    WORKER_DIED,
    failure_kind,
    make_policy,
)
from nasfe.errors import ConfigError, DivergenceError  # noqa: E402

RETRY, RAISE = FailureDecision.RETRY, FailureDecision.RAISE


def _workers(*errors) -> WorkerGroupError:
    return WorkerGroupError("worker errors", dict(enumerate(errors)))


def _node_lost() -> WorkerGroupError:
    died = RayActorError(error_msg="The actor died because its node has died. Node Id: 0123abcd")
    # the surviving rank fails with a collective error; the lost node decides
    return _workers(
        RuntimeError("Connection closed by peer [127.0.0.1]:4242"),
        WorkerHealthCheckFailedError("worker health check failed", died),
    )


def test_failures_are_sorted_into_user_node_startup_and_other():
    assert failure_kind(_workers(DivergenceError("loss", 3, "search"))) == USER
    assert failure_kind(_workers(ConfigError("space.yaml: search.lr: must be > 0"))) == USER
    assert failure_kind(_node_lost()) == NODE
    assert failure_kind(_workers(RayActorError(error_msg="x", preempted=True))) == NODE
    assert failure_kind(ControllerError(WorkerGroupStartupTimeoutError(num_workers=8))) == STARTUP
    assert failure_kind(_workers(RuntimeError("CUDA error: an illegal memory access"))) == OTHER
    died = RayActorError(actor_id="ab" * 16, error_msg="The actor died unexpectedly before finishing this task.")
    assert failure_kind(_workers(died)) == WORKER_DIED  # a machine that vanished, or a crash: its node decides


def test_a_worker_that_died_without_a_word_counts_as_a_lost_node_only_when_its_node_is_gone(monkeypatch):
    import nasfe.distributed.failure_policy as fp

    died = _workers(RayActorError(actor_id="ab" * 16, error_msg="The actor died unexpectedly before finishing."))
    gone = {"value": True}
    monkeypatch.setattr(fp, "dead_workers_node_is_gone", lambda err, wait_s=None: gone["value"])
    policy = make_policy(FailureConfig(max_failures=1))
    assert [policy.make_decision(died) for _ in range(4)] == [RETRY] * 4 and policy.node_losses == 4
    gone["value"] = False  # the node lives on: a crash (a segfault, the OOM killer), Ray's budget
    assert [policy.make_decision(died) for _ in range(2)] == [RETRY, RAISE]


def test_a_divergence_is_never_retried_and_lost_nodes_always_are(capsys):
    policy = make_policy(FailureConfig(max_failures=5))
    assert policy.make_decision(_workers(DivergenceError("gradient", 12, "search"))) == RAISE
    policy = make_policy(FailureConfig(max_failures=2))
    assert [policy.make_decision(_node_lost()) for _ in range(10)] == [RETRY] * 10
    assert "lost (10 so far)" in capsys.readouterr().out
    # other failures keep Ray's budget, and lost nodes did not use it up
    crash = _workers(RuntimeError("boom"))
    assert [policy.make_decision(crash) for _ in range(3)] == [RETRY, RETRY, RAISE]


def test_the_wait_for_room_is_bounded_and_said(capsys, monkeypatch):
    import nasfe.distributed.failure_policy as fp

    now = [1000.0]
    monkeypatch.setattr(fp.time, "time", lambda: now[0])
    startup = ControllerError(WorkerGroupStartupTimeoutError(num_workers=8))
    policy = make_policy(FailureConfig(), start_timeout_s=600, demand="8 x {'GPU': 1.0}")
    decisions = []
    for _ in range(11):  # one Ray Train start timeout a minute
        decisions.append(policy.make_decision(startup))
        now[0] += 60
    assert decisions == [RETRY] * 10 + [RAISE]
    out = capsys.readouterr().out
    assert "waiting for room for the workers (8 x {'GPU': 1.0}) for 9 min of at most 10" in out
    assert "docs/CLUSTER.md" in out
    # a start after a node loss waits from zero again
    assert policy.make_decision(_node_lost()) == RETRY and policy.make_decision(startup) == RETRY
    unbounded = make_policy(FailureConfig(), start_timeout_s=None)
    now[0] += 10**6
    assert unbounded.make_decision(startup) == RETRY
