"""What one endpoint's reconciliation decided, to be carried out once its transaction committed.

The planner decides inside a short database transaction and records its intent there (a new
replica row in state `starting` without a handle; a replica to stop in state `stopping`). The
reconciler commits, then calls the launcher with no transaction open (a launch may take seconds,
e.g. placing Ray actors, and SQLite has one writer), then records the outcome in a new short
transaction. Every crash point in between is recoverable from the rows alone:

* a `starting` row without a handle whose replica never started: dropped at the next pass or by
  `adopt()` (which finds no such replica), and the planner starts a fresh one;
* a replica that started but whose handle was not recorded: `adopt()` finds it by its
  `replica_key` and records the handle (the same leader keeps the handle in memory and retries);
* a `stopping` row: stopped again (launchers' `stop` is idempotent), then deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorafleet.controlplane.launchers.base import ReplicaHandle, ReplicaSpec
from lorafleet.controlplane.models import Endpoint, Replica


@dataclass(frozen=True)
class Launch:
    """One replica to start: its committed intent row and what to start.

    Args:
        replica: the row, state `starting`, handle None until the launch is recorded.
        spec: what the launcher starts.
        instance_id: the catalog instance it runs on (for the event message).
    """

    replica: Replica
    spec: ReplicaSpec
    instance_id: str


@dataclass(frozen=True)
class LaunchOutcome:
    """The result of one `Launch`: a handle, or the error `start` raised."""

    launch: Launch
    handle: ReplicaHandle | None = None
    error: Exception | None = None


@dataclass
class Plan:
    """Launcher calls decided for one endpoint, plus what is needed to write its status after them.

    Args:
        endpoint: the endpoint row as the decision saw it (its status columns kept in step).
        revision: the spec revision the decision was made for (status writes are conditional on it).
        stops: rows marked `stopping` (each with a handle), to stop and then delete.
        launches: replicas to start, in order.
        current: live replicas of the current spec (not counting `launches`).
        old: live replicas of an older spec (rolling update).
        target: the replica count the decision aimed at.
    """

    endpoint: Endpoint | None = None
    revision: int = 0
    stops: list[Replica] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    current: list[Replica] = field(default_factory=list)
    old: list[Replica] = field(default_factory=list)
    target: int = 0
