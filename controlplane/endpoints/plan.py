"""The planner's inputs and its `Plan`: plain frozen data, no database rows, no I/O.

`decide.py` turns (an endpoint's view, its replicas, their probes, the planner's clocks, now) into a
`Plan`; `apply.py` writes a plan in one short transaction and records its intent there (a new
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

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lorafleet.controlplane.catalog.types import InstanceType
from lorafleet.controlplane.endpoints.quota import QuotaRoom
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec
from lorafleet.controlplane.launchers.base import LocalFolder, ReplicaHandle, ReplicaSpec
from lorafleet.controlplane.models import Replica


@dataclass(frozen=True)
class Now:
    """One instant on both clocks: `wall` (naive UTC, as stored) and `monotonic` (backoff, cooldown)."""

    wall: datetime
    monotonic: float


@dataclass(frozen=True)
class Placement:
    """Where and how new replicas of the current spec would run, resolved before the transaction
    (the catalog may ask the launcher, e.g. Ray's nodes): the instance, the replica's settings and
    the local folders it may read."""

    instance: InstanceType
    env: Mapping[str, str]
    folders: tuple[LocalFolder, ...]


@dataclass(frozen=True)
class AdapterItem:
    """One adapter of an endpoint's live set (`endpoint_adapters`) as a pass read it.

    Args:
        load_path: what a replica loads: the real folder of a local source (re-checked against
            `LOCAL_ROOTS` at each pass) or the Hub repo id; None when the source is refused now
            (`refused` says why).
    """

    id: int
    version: int
    name: str
    source: str
    revision: str | None
    digest: str | None
    load_path: str | None
    refused: str = ""
    state: str = "pending"
    message: str = ""
    ready_replicas: int = 0
    target_replicas: int = 0

    @property
    def tag(self) -> str:
        """The version a replica records (`Replica.adapter_versions`): row id and version, so a
        name removed and added again (a new row) never matches what a replica loaded before."""
        return f"{self.id}.{self.version}"


@dataclass(frozen=True)
class EndpointView:
    """An endpoint as a pass saw it: its status columns, typed spec and current digest.

    Args:
        gateway_url: the endpoint's stable URL (`status.url` whenever it can serve).
        placement: resolved launch parameters, or why no replica can be placed (a message); None
            when the endpoint is not meant to run.
        room: how many replicas of the current spec the namespace's quota allows (None: no cap).
        load: pending + in-flight requests the gateways report for the endpoint (autoscaling).
        adapters: the live adapter set; new replicas start with it in their `LORA_ADAPTERS`.
    """

    id: int
    namespace: str
    name: str
    revision: int
    desired_state: str
    state: str
    message: str
    url: str | None
    failure_count: int
    ready_replicas: int
    target_replicas: int
    last_active_at: datetime
    spec: EndpointSpec
    digest: str
    gateway_url: str | None = None
    placement: Placement | str | None = None
    room: QuotaRoom | None = None
    load: int = 0
    adapters: tuple[AdapterItem, ...] = ()


@dataclass(frozen=True)
class ReplicaView:
    """A replica row as a pass saw it (rows being stopped are not shown to the planner)."""

    id: int
    key: str
    state: str
    spec_digest: str
    has_handle: bool
    created_at: datetime
    url: str | None = None
    queue_size: float = 0.0
    drain_started_at: datetime | None = None
    usage_seen: Mapping[str, Any] = field(default_factory=dict)  # adapter → [prompt, generated] counted

    @classmethod
    def of(cls, row: Replica) -> ReplicaView:
        return cls(row.id, row.replica_key, row.state, row.spec_digest, bool(row.handle), row.created_at,
                   row.url, row.queue_size, row.drain_started_at, row.usage_seen or {})

    @property
    def is_ready(self) -> bool:
        return self.state == "ready"


@dataclass(frozen=True)
class Clocks:
    """The planner's memory of one endpoint between passes (kept in the leader's process only;
    a new leader starts from zero, which at worst restarts a replica sooner than backoff said).

    Args:
        not_before: monotonic time before which no replica is started (crash backoff).
        last_failure: the last crash report, for the `failed` message.
        last_scale_up: monotonic time of the last scale-up (scale-down cooldown).
    """

    not_before: float = 0.0
    last_failure: str = ""
    last_scale_up: float = 0.0


@dataclass(frozen=True)
class Census:
    """Replica counts the status is computed from (current spec and older specs)."""

    current: int = 0
    current_ready: int = 0
    old: int = 0
    old_ready: int = 0


@dataclass
class Plan:
    """What one pass decided for one endpoint.

    Args:
        endpoint_id, revision: the endpoint and the spec revision decided for (status writes are
            conditional on it).
        status: status columns to write (only those that differ from the row are written).
        events: `(kind, message)` to append.
        replica_changes: replica key → columns to set on its row (ready, unhealthy, draining,
            queue size, token counters seen).
        stops: keys of replicas to stop (rows with a handle are marked `stopping`, the others
            deleted at once).
        launches: how many replicas of the current spec to start.
        usage: adapter ('' = base) → (prompt, generated) tokens the replicas counted since the
            last pass, to add to the endpoint's usage at `moment`.
        clocks: the endpoint's clocks after this pass.
        census, target: what the status was computed from (recomputed after the launches).
    """

    endpoint_id: int
    revision: int
    clocks: Clocks
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    replica_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    stops: list[str] = field(default_factory=list)
    launches: int = 0
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)
    moment: datetime | None = None
    census: Census = field(default_factory=Census)
    target: int = 0


@dataclass(frozen=True)
class Launch:
    """One replica to start: its committed intent row and what to start.

    Args:
        replica: the row, state `starting`, handle None until the launch is recorded.
        spec: what the launcher starts.
    """

    replica: Replica
    spec: ReplicaSpec


@dataclass(frozen=True)
class LaunchOutcome:
    """The result of one `Launch`: a handle, or the error `start` raised."""

    launch: Launch
    handle: ReplicaHandle | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class LaunchReport:
    """A launch's outcome as the planner needs it (no handle, no row)."""

    replica_key: str
    instance_id: str
    error: str | None = None
    no_capacity: bool = False  # `NoCapacityError`: wait, do not count a failure


@dataclass(frozen=True)
class PlannerLimits:
    """The reconciler settings the decisions depend on."""

    startup_timeout_s: float = 900.0
    max_restarts: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    scale_down_cooldown_s: float = 60.0
    drain_grace_s: float = 3.0  # every gateway has stopped routing to a draining replica by then
    drain_timeout_s: float = 120.0

    @classmethod
    def from_settings(cls, settings: Any) -> PlannerLimits:
        return cls(settings.startup_timeout_s, settings.max_restarts, settings.backoff_base_s,
                   settings.backoff_max_s, settings.scale_down_cooldown_s, settings.drain_grace_s,
                   settings.drain_timeout_s)
