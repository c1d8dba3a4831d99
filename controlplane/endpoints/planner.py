"""Per-endpoint reconciliation: from (spec, replica rows, probes) to launcher calls and a status.

`reconcile` runs inside one short transaction per endpoint and makes no launcher call: it returns a
`Plan` (replicas to stop, replicas to start) that the reconciler carries out after the commit, then
`record_launches` and `after_launches` write the outcome (see `plan.py` for the crash safety). It
owns the in-memory backoff clocks; everything else it needs is in the database, so a new leader
continues where the last one left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets as token_source
import time
import uuid
from typing import Any

from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.clock import utcnow
from lorafleet.controlplane.endpoints import repository
from lorafleet.controlplane.endpoints.local_paths import LocalRoots
from lorafleet.controlplane.endpoints.plan import Launch, LaunchOutcome, Plan
from lorafleet.controlplane.endpoints.quota import QuotaRoom
from lorafleet.controlplane.endpoints.spec import (
    DEFAULT_PENDING_REQUESTS,
    DEFAULT_SCALE_TO_ZERO_MINUTES,
    launch_digest_fields,
    runtime_env,
)
from lorafleet.controlplane.errors import ControlPlaneError
from lorafleet.controlplane.launchers.base import Launcher, NoCapacityError, ReplicaSpec
from lorafleet.controlplane.models import Endpoint, Replica
from lorafleet.controlplane.probes import Probe
from lorafleet.controlplane.secretbox import SecretBox
from lorafleet.controlplane.settings import Settings
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

log = logging.getLogger("lorafleet.controlplane.reconciler")


def spec_digest(spec: dict[str, Any], secrets: dict[str, str]) -> str:
    payload = {
        "spec": launch_digest_fields(spec),
        "secrets": hashlib.sha256(json.dumps(secrets, sort_keys=True).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class EndpointPlanner:
    def __init__(
        self, settings: Settings, launcher: Launcher, hardware: Hardware, secret_box: SecretBox
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.hardware = hardware
        self.secret_box = secret_box
        self.roots = LocalRoots(settings.local_root_paths)
        # Keyed by endpoint id: ids are never reused (models.Endpoint), so no state passes on.
        self._not_before: dict[int, float] = {}  # endpoint id → monotonic time of next start
        self._last_failure: dict[int, str] = {}  # endpoint id → last crash report
        self._last_scale_up: dict[int, float] = {}
        self._requests_seen: dict[str, float] = {}  # replica key → request counter

    @staticmethod
    def wants_metrics(spec: dict[str, Any]) -> bool:
        scaling = spec["compute"]["scaling"]
        return scaling["maxReplica"] > 1 or scaling["minReplica"] == 0

    def reconcile(
        self,
        session: Session,
        endpoint: Endpoint,
        namespace: str,
        replicas: list[Replica],
        probes: dict[str, Probe],
        room: QuotaRoom | None = None,
    ) -> Plan:
        """Decides one endpoint's launcher calls and writes its status; calls no launcher.

        Args:
            session: the open session; the caller commits (then carries out the plan).
            endpoint: the endpoint row.
            namespace: its namespace's name.
            replicas: its replica rows, none `stopping`.
            probes: replica_key → probe, for rows with a handle.
            room: how many replicas of the current spec the namespace's quota allows (None: no cap).
        """
        plan = Plan(endpoint=endpoint, revision=endpoint.revision)
        live = self._observe(session, endpoint, replicas, probes, plan)
        if endpoint.desired_state != "running" or endpoint.state == "failed":
            for replica in live:
                self._stop(session, replica, plan)
            values: dict[str, Any] = {"ready_replicas": 0, "target_replicas": 0}
            if endpoint.desired_state == "paused":
                values["url"] = None
            self._write(session, endpoint, values)
            return plan
        secrets = self.secret_box.open(endpoint.secrets_encrypted) if endpoint.secrets_encrypted else {}
        digest = spec_digest(endpoint.spec, secrets)
        current = [r for r in live if r.spec_digest == digest]
        old = [r for r in live if r.spec_digest != digest]
        if self._idle_too_long(endpoint, live):
            for replica in live:
                self._stop(session, replica, plan)
            repository.add_event(
                session,
                endpoint_id=endpoint.id,
                kind="scaled-to-zero",
                message="idle longer than scaleToZeroTimeout",
            )
            self._write(session, endpoint, {
                "desired_state": "scaledToZero", "state": "scaledToZero", "ready_replicas": 0,
                "message": "Endpoint scaled to zero after being idle", "target_replicas": 0,
            })
            return plan
        target = self._target(endpoint, live)
        pending_reason = ""
        if room is not None and target > room.capacity:  # keep what runs, start no more than the quota
            target, pending_reason = max(room.capacity, len(current)), room.reason
        if endpoint.failure_count > self.settings.max_restarts:
            return self._give_up(session, endpoint, current, old, plan)
        if len(current) < target and time.monotonic() >= self._not_before.get(endpoint.id, 0.0):
            pending_reason = self._start(
                session, endpoint, namespace, secrets, digest, target - len(current), plan
            ) or pending_reason
        elif len(current) > target:
            for replica in sorted(current, key=lambda r: (r.state == "ready", r.id))[: len(current) - target]:
                self._stop(session, replica, plan)
                current.remove(replica)
        ready = [r for r in current if r.state == "ready"]
        if len(ready) >= target:
            for replica in old:
                self._stop(session, replica, plan)
            old = []
        plan.current, plan.old, plan.target = current, old, target
        self._write(session, endpoint, self._status(endpoint, current, old, target, pending_reason))
        return plan

    # --- after the launches (each step in its own short transaction) ----------------------

    @staticmethod
    def record_launches(session: Session, outcomes: list[LaunchOutcome]) -> None:
        """Saves the handles of started replicas; deletes the rows of launches that failed."""
        for outcome in outcomes:
            if outcome.handle is not None:
                outcome.launch.replica.handle = outcome.handle
            else:
                session.delete(outcome.launch.replica)

    def after_launches(self, session: Session, plan: Plan, outcomes: list[LaunchOutcome]) -> None:
        """Events, failure counting and the status once the plan's launches are recorded."""
        endpoint = plan.endpoint
        assert endpoint is not None
        pending_reason = ""
        for outcome in outcomes:
            launch, error = outcome.launch, outcome.error
            if error is None:
                plan.current.append(launch.replica)
                repository.add_event(
                    session,
                    endpoint_id=endpoint.id,
                    kind="replica-started",
                    message=f"replica {launch.spec.replica_key} started on {launch.instance_id}",
                )
            elif isinstance(error, NoCapacityError):
                pending_reason = pending_reason or error.message
            else:
                pending_reason = f"could not start a replica: {error}"
                self._last_failure[endpoint.id] = pending_reason
                self._write(session, endpoint, {"failure_count": endpoint.failure_count + 1})
        status = self._status(endpoint, plan.current, plan.old, plan.target, pending_reason)
        self._write(session, endpoint, status)

    # --- observation ----------------------------------------------------------------------

    def _observe(
        self,
        session: Session,
        endpoint: Endpoint,
        replicas: list[Replica],
        probes: dict[str, Probe],
        plan: Plan,
    ) -> list[Replica]:
        """Applies probes to replica rows; removes crashed ones. Returns the live replicas."""
        live, now = [], utcnow()
        for replica in replicas:
            probe = probes.get(replica.replica_key)
            if probe is None:  # no handle yet (start in progress elsewhere) or just started
                live.append(replica)
                continue
            age = (now - replica.created_at).total_seconds()
            if probe.status.phase == "exited":
                self._record_failure(
                    session,
                    endpoint,
                    replica,
                    f"replica {replica.replica_key} exited"
                    f"{'' if probe.status.exit_code is None else f' with code {probe.status.exit_code}'}",
                    probe.logs,
                )
                self._stop(session, replica, plan)
                continue
            if probe.healthy:
                if replica.state != "ready":
                    replica.state, replica.ready_at, replica.url = "ready", now, probe.status.url
                    repository.add_event(
                        session,
                        endpoint_id=endpoint.id,
                        kind="replica-ready",
                        message=f"replica {replica.replica_key} ready at {probe.status.url}",
                    )
                    if endpoint.failure_count:
                        self._write(session, endpoint, {"failure_count": 0})
                replica.queue_size = probe.queue_size
                self._note_activity(session, endpoint, replica, probe)
            elif replica.state == "ready":
                replica.state, replica.message = "unhealthy", "health route stopped answering 200"
            elif replica.state == "starting" and age > self.settings.startup_timeout_s:
                self._record_failure(
                    session,
                    endpoint,
                    replica,
                    f"replica {replica.replica_key} not healthy "
                    f"after {self.settings.startup_timeout_s:.0f} s",
                    probe.logs,
                )
                self._stop(session, replica, plan)
                continue
            live.append(replica)
        return live

    def _note_activity(self, session: Session, endpoint: Endpoint, replica: Replica, probe: Probe) -> None:
        seen = probe.requests_seen
        previous = self._requests_seen.get(replica.replica_key)
        busy = probe.queue_size > 0 or (seen is not None and previous is not None and seen > previous)
        if seen is not None:
            self._requests_seen[replica.replica_key] = seen
        if busy:
            moment = utcnow()
            repository.touch_active(session, endpoint_id=endpoint.id, moment=moment)
            set_committed_value(endpoint, "last_active_at", moment)  # no ORM flush: it bumps revision

    def _record_failure(
        self, session: Session, endpoint: Endpoint, replica: Replica, what: str, lines: tuple[str, ...]
    ) -> None:
        """Counts a crash (the probe fetched its log lines: no launcher call in the transaction)."""
        report = what + (":\n" + "\n".join(lines) if lines else " (no log output)")
        self._last_failure[endpoint.id] = report
        self._write(session, endpoint, {"failure_count": endpoint.failure_count + 1})
        delay = min(
            self.settings.backoff_base_s * 2 ** (endpoint.failure_count - 1), self.settings.backoff_max_s
        )
        self._not_before[endpoint.id] = time.monotonic() + delay
        repository.add_event(
            session,
            endpoint_id=endpoint.id,
            kind="replica-failed",
            message=f"{report}\nrestart #{endpoint.failure_count} in {delay:.1f} s",
        )

    # --- decisions ------------------------------------------------------------------------

    def _idle_too_long(self, endpoint: Endpoint, live: list[Replica]) -> bool:
        scaling = endpoint.spec["compute"]["scaling"]
        if scaling["minReplica"] != 0 or not any(r.state == "ready" for r in live):
            return False
        minutes = scaling.get("scaleToZeroTimeout") or DEFAULT_SCALE_TO_ZERO_MINUTES
        return (utcnow() - endpoint.last_active_at).total_seconds() > minutes * 60

    def _target(self, endpoint: Endpoint, live: list[Replica]) -> int:
        scaling = endpoint.spec["compute"]["scaling"]
        low, high = max(1, scaling["minReplica"]), max(1, scaling["maxReplica"])
        threshold = (scaling.get("measure") or {}).get("pendingRequests") or DEFAULT_PENDING_REQUESTS
        queue = sum(r.queue_size for r in live if r.state == "ready")
        wanted = min(high, max(low, math.ceil(queue / threshold)))
        current = max(low, min(high, endpoint.target_replicas or low))
        now = time.monotonic()
        if wanted > current:
            self._last_scale_up[endpoint.id] = now
            return wanted
        if (
            wanted < current
            and now - self._last_scale_up.get(endpoint.id, 0.0) < self.settings.scale_down_cooldown_s
        ):
            return current
        return wanted

    def _start(
        self,
        session: Session,
        endpoint: Endpoint,
        namespace: str,
        secrets: dict[str, str],
        digest: str,
        count: int,
        plan: Plan,
    ) -> str:
        """Adds `count` replica rows (state `starting`, no handle) and their launches to the plan;
        returns why none can be placed ('' when they can)."""
        spec = endpoint.spec
        compute, provider = spec["compute"], spec["provider"]
        try:
            instance = self.hardware.resolve(vendor=provider["vendor"], region=provider["region"],
                                             instance_type=compute["instanceType"],
                                             instance_size=compute["instanceSize"])
            env, folders = runtime_env(spec, secrets, self.roots)
        except ControlPlaneError as e:
            return f"cannot place the endpoint: {e.message}"
        for _ in range(count):
            key, api_key = f"rep-{uuid.uuid4().hex[:12]}", token_source.token_urlsafe(32)
            replica_spec = ReplicaSpec(
                key, namespace, endpoint.name, instance, env, tuple(spec["model"].get("args") or ()),
                spec.get("healthRoute", "/health"), api_key=api_key, folders=tuple(folders),
            )
            replica = Replica(replica_key=key, endpoint_id=endpoint.id, launcher=self.launcher.name,
                              spec_digest=digest, state="starting",
                              api_key_encrypted=self.secret_box.seal({"api_key": api_key}))
            session.add(replica)  # committed before the launch: adopt() can always match the replica
            plan.launches.append(Launch(replica, replica_spec, instance.id))
        return ""

    def _give_up(
        self,
        session: Session,
        endpoint: Endpoint,
        current: list[Replica],
        old: list[Replica],
        plan: Plan,
    ) -> Plan:
        for replica in current:
            self._stop(session, replica, plan)
        report = self._last_failure.get(endpoint.id, "replicas kept failing")
        serving = [r for r in old if r.state == "ready"]
        state = "updateFailed" if serving else "failed"
        message = (
            f"Endpoint failed to {'update' if serving else 'deploy'} after "
            f"{endpoint.failure_count} attempts. {report}"
        )
        repository.add_event(session, endpoint_id=endpoint.id, kind=state, message=message)
        values: dict[str, Any] = {"state": state, "message": message, "ready_replicas": len(serving)}
        if not serving:
            values["url"] = None
        self._write(session, endpoint, values)
        return plan

    def _status(
        self, endpoint: Endpoint, current: list[Replica], old: list[Replica], target: int, pending_reason: str
    ) -> dict[str, Any]:
        ready = [r for r in current if r.state == "ready"]
        old_ready = [r for r in old if r.state == "ready"]
        serving = ready or old_ready
        url = serving[0].url if serving else None
        if endpoint.state == "updateFailed" and old_ready and not ready:
            state, message = "updateFailed", endpoint.message
        elif ready and not old:
            state, message = "running", "Endpoint is ready"
        elif serving:
            state, message = "updating", "Endpoint waiting for the update"
        elif current:
            state, message = "initializing", "Endpoint is initializing"
        else:
            state = "pending"
            message = pending_reason or "Endpoint waiting to be scheduled"
        if pending_reason and state != "running":
            message = pending_reason
        return {
            "state": state,
            "message": message,
            "url": url,
            "ready_replicas": len(serving),
            "target_replicas": target,
        }

    # --- effects --------------------------------------------------------------------------

    def _stop(self, session: Session, replica: Replica, plan: Plan) -> None:
        """Marks the replica `stopping` for the reconciler to stop after the commit."""
        self._requests_seen.pop(replica.replica_key, None)
        if replica.handle:
            replica.state = "stopping"
            plan.stops.append(replica)
        else:
            session.delete(replica)

    @staticmethod
    def _write(session: Session, endpoint: Endpoint, values: dict[str, Any]) -> None:
        changed = {k: v for k, v in values.items() if getattr(endpoint, k) != v}
        if changed:
            repository.write_status(
                session, endpoint_id=endpoint.id, revision=endpoint.revision, values=changed
            )
            for key, value in changed.items():  # keep the loaded row in step, without an ORM flush
                set_committed_value(endpoint, key, value)
