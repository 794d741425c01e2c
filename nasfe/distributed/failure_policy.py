"""Which failures of a Ray Train run are retried, and how often.

Ray Train's default policy charges every worker-group failure to ``FailureConfig.max_failures``,
so on spot nodes the third lost node ends a long job, while a deterministic failure (a divergence,
a bad input file) is rerun from the last checkpoint to fail the same way. nasfe sorts failures:

- **your error** (a :class:`~nasfe.errors.NasfeError`, :class:`~nasfe.errors.DivergenceError`
  included, or a missing file): never retried; the run ends at once with its one-line message;
- **a lost node** (a worker's node died or was preempted): retried from the last checkpoint
  without a limit (each loss is printed). A worker process that died without a word (no Python
  error) is a lost node when its node is gone, or goes within ``NASFE_NODE_DEATH_WAIT_S`` (30 s:
  Ray's health checks need a while to declare a vanished machine dead); otherwise it is a crash;
- **no room for the workers** (the placement group does not fit within Ray Train's start timeout,
  e.g. while the autoscaler boots nodes, or forever when EC2 refuses them for quota): retried,
  with a line every attempt, until ``start_timeout_s`` of waiting in a row, then the run ends with
  a message naming the likely causes;
- **anything else** (a crash, a worker process killed, NCCL): Ray's policy, ``max_failures``.

The policy object is built on the driver and runs inside the Train controller actor.
"""

from __future__ import annotations

import time
from typing import Optional

from nasfe.errors import NasfeError
from nasfe.errors import error_chain
import os

NODE_DIED = ("its node has died", "node has been marked dead", "node died")

USER = "user"
NODE = "node"
STARTUP = "startup"
WORKER_DIED = "worker_died"  # a worker process died: its node's fate decides (see the module doc)
OTHER = "other"


def _errors(training_failed_error) -> list[BaseException]:
    """Every error behind a Train failure: worker failures, health-check causes, controller failure."""

    out: list[BaseException] = []
    for e in error_chain(training_failed_error):
        out.append(e)
        inner = getattr(e, "health_check_failure", None)
        if isinstance(inner, BaseException):
            out.extend(error_chain(inner))
    return out


def failure_kind(training_failed_error) -> str:
    """``user``, ``node``, ``startup``, ``worker_died`` or ``other`` for a Ray Train failure (see the
    module doc); reads the errors only."""
    from ray.exceptions import RayActorError

    errors = _errors(training_failed_error)
    if any(isinstance(e, (NasfeError, FileNotFoundError)) for e in errors):
        return USER
    names = {type(e).__name__ for e in errors}
    if "PreemptionError" in names:
        return NODE
    for e in errors:
        if isinstance(e, RayActorError) and (getattr(e, "preempted", False) or any(s in str(e) for s in NODE_DIED)):
            return NODE
        if type(e).__name__ == "NodeDiedError":
            return NODE
    if "WorkerGroupStartupTimeoutError" in names:
        return STARTUP
    if any(isinstance(e, RayActorError) for e in errors):
        return WORKER_DIED
    return OTHER


def dead_workers_node_is_gone(training_failed_error, wait_s: Optional[float] = None) -> bool:
    """True when a worker that died ran on a node Ray declares dead, now or within ``wait_s``
    (default ``NASFE_NODE_DEATH_WAIT_S``, 30). Needs a connected Ray (the Train controller is)."""

    import ray
    from ray.exceptions import RayActorError

    wait_s = float(os.environ.get("NASFE_NODE_DEATH_WAIT_S", "30")) if wait_s is None else wait_s
    actors = {e.actor_id for e in _errors(training_failed_error) if isinstance(e, RayActorError) and e.actor_id}
    nodes = set()
    for actor in actors:
        try:
            nodes.add(ray._private.state.state.actor_table(actor)["Address"]["NodeID"])
        except Exception:  # noqa: BLE001  (an actor GCS no longer knows says nothing about its node)
            continue
    deadline = time.time() + wait_s
    while nodes:
        alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
        if any(not alive.get(node, False) for node in nodes):
            return True
        if time.time() >= deadline:
            return False
        time.sleep(1.0)
    return False


def _say(line: str) -> None:
    # the controller's stdout reaches the driver's console (log_to_driver)
    print(f"[nasfe] {line}", flush=True)


def make_policy(failure_config, start_timeout_s: Optional[float] = None, demand: str = ""):
    """A Ray Train failure policy sorting failures as the module doc says.

    ``start_timeout_s``: how long the workers may wait for room, in a row, before the run ends
    (None: without end, each wait still printed). ``demand``: what the workers ask for, for the lines.
    """
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

    class NasfeFailurePolicy(DefaultFailurePolicy):
        def __init__(self, config):
            super().__init__(config)
            self.node_losses = 0
            self.waiting_since: Optional[float] = None

        def make_decision(self, training_failed_error):
            kind = failure_kind(training_failed_error)
            if kind == WORKER_DIED:
                kind = NODE if dead_workers_node_is_gone(training_failed_error) else OTHER
            if kind != STARTUP:
                self.waiting_since = None
            if kind == USER:
                return FailureDecision.RAISE
            if kind == NODE:
                self.node_losses += 1
                _say(
                    f"a node of this run was lost ({self.node_losses} so far): restarting the workers from "
                    f"the last checkpoint"
                )
                return FailureDecision.RETRY
            if kind == STARTUP:
                now = time.time()
                self.waiting_since = self.waiting_since or now
                waited = now - self.waiting_since
                if start_timeout_s is not None and waited >= start_timeout_s:
                    return FailureDecision.RAISE
                _say(
                    f"waiting for room for the workers ({demand or 'as requested'}) for {waited / 60:.0f} min"
                    + (f" of at most {start_timeout_s / 60:.0f}" if start_timeout_s is not None else "")
                    + ": the autoscaler is starting nodes, or cannot (docs/CLUSTER.md, 'The first hour')"
                )
                return FailureDecision.RETRY
            return super().make_decision(training_failed_error)

    return NasfeFailurePolicy(failure_config)


def with_failure_policy(trainer_cls):
    """``trainer_cls`` (a Ray Train V2 trainer) whose controller uses :func:`make_policy`.

    The returned class takes two more keyword arguments: ``start_timeout_s`` and ``demand``.
    """

    class Trainer(trainer_cls):
        def __init__(self, *args, start_timeout_s: Optional[float] = None, demand: str = "", **kwargs):
            super().__init__(*args, **kwargs)
            self.nasfe_start_timeout_s = start_timeout_s
            self.nasfe_demand = demand

        def _initialize_and_run_controller(self, **kwargs):
            kwargs["failure_policy"] = make_policy(
                self.run_config.failure_config, self.nasfe_start_timeout_s, self.nasfe_demand
            )
            return super()._initialize_and_run_controller(**kwargs)

    Trainer.__name__ = Trainer.__qualname__ = trainer_cls.__name__
    return Trainer


def no_room_message(workers: int, demand: str, waited_s: float) -> str:
    """The one line a run ends with when its workers found no room for ``waited_s``."""
    return (
        f"{workers} Train worker(s) ({demand}) found no room for {waited_s / 60:.0f} min: the cluster "
        f"cannot grow to them. On AWS check the spot vCPU quota of the instance family (new accounts have "
        f"0; docs/CLUSTER.md, 'The first hour') and the autoscaler's log (ray exec cluster.yaml "
        f"'tail -n 100 /tmp/ray/session_latest/logs/monitor.log'); NASFE_START_TIMEOUT_MIN waits longer"
    )
