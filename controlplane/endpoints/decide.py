"""The planner's decisions, as pure functions: no database, no launcher, no clock of their own.

`decide(view, replicas, probes, clocks, now)` is one endpoint's reconciliation: record crashes
(with exponential backoff), mark replicas ready or unhealthy, stop what must stop (pause, scale to
zero, scale-down, the old replicas of a finished rolling update), choose the target replica count
(autoscaling with a scale-down cooldown, capped by the namespace's quota), give up after too many
failures, and compute the status the API shows. `settle(...)` recomputes the status once the
launches it asked for have happened. `apply.py` writes the results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from lorafleet.controlplane.endpoints.plan import (
    Census,
    Clocks,
    EndpointView,
    LaunchReport,
    Now,
    Plan,
    PlannerLimits,
    ReplicaView,
)
from lorafleet.controlplane.probes import Probe

WAITING = "Endpoint waiting to be scheduled"


def decide(
    view: EndpointView,
    replicas: Sequence[ReplicaView],
    probes: Mapping[str, Probe],
    clocks: Clocks,
    now: Now,
    limits: PlannerLimits,
) -> Plan:
    """One endpoint's plan for this pass.

    Args:
        view: the endpoint (status columns, typed spec, current digest, placement, quota room).
        replicas: its replica rows, none `stopping`.
        probes: replica key → probe, for rows with a handle.
        clocks: what the planner remembers of the endpoint (backoff, cooldown, request counters).
        now: this pass's instant.
        limits: the reconciler settings.
    """
    plan = Plan(view.id, view.revision, clocks)
    failures, live = _observe(view, replicas, probes, now, limits, plan)
    if failures != view.failure_count:
        plan.status["failure_count"] = failures
    if view.desired_state != "running" or view.state == "failed":
        _stop(plan, live)
        plan.status.update(ready_replicas=0, target_replicas=0)
        if view.desired_state == "paused":
            plan.status["url"] = None
        return _finish(plan)
    current = [r for r in live if r.spec_digest == view.digest]
    old = [r for r in live if r.spec_digest != view.digest]
    if _idle_too_long(view, live, plan, now):
        _stop(plan, live)
        plan.events.append(("scaled-to-zero", "idle longer than scaleToZeroTimeout"))
        plan.status.update(desired_state="scaledToZero", state="scaledToZero", ready_replicas=0,
                           message="Endpoint scaled to zero after being idle", target_replicas=0)
        return _finish(plan)
    target = _target(view, live, plan, now, limits)
    pending_reason = ""
    if view.room is not None and target > view.room.capacity:  # keep what runs, start no more
        target, pending_reason = max(view.room.capacity, len(current)), view.room.reason
    if failures > limits.max_restarts:
        return _finish(_give_up(plan, failures, current, old))
    if len(current) < target and now.monotonic >= plan.clocks.not_before:
        if isinstance(view.placement, str):
            pending_reason = view.placement
        else:
            plan.launches = target - len(current)
    elif len(current) > target:
        surplus = sorted(current, key=lambda r: (r.is_ready, r.id))[: len(current) - target]
        _stop(plan, surplus)
        current = [r for r in current if r not in surplus]
    if sum(r.is_ready for r in current) >= target:
        _stop(plan, old)
        old = []
    plan.census, plan.target = census(current, old), target
    plan.status.update(status_values(view.state, view.message, plan.census, target, pending_reason))
    return _finish(plan)


def settle(view: EndpointView, plan: Plan, reports: Sequence[LaunchReport]) -> Plan:
    """The status, events and failure count once the plan's launches happened.

    Args:
        view: the endpoint as `apply` left it (the plan's status written).
        plan: the plan whose launches were attempted.
        reports: one per launch.
    """
    after = Plan(view.id, view.revision, plan.clocks, census=plan.census, target=plan.target)
    failures, pending_reason, started = view.failure_count, "", 0
    for report in reports:
        if report.error is None:
            started += 1
            after.events.append(
                ("replica-started", f"replica {report.replica_key} started on {report.instance_id}"))
        elif report.no_capacity:
            pending_reason = pending_reason or report.error
        else:
            pending_reason = f"could not start a replica: {report.error}"
            after.clocks = replace(after.clocks, last_failure=pending_reason)
            failures += 1
    after.census = replace(plan.census, current=plan.census.current + started)
    after.status = status_values(view.state, view.message, after.census, plan.target, pending_reason)
    if failures != view.failure_count:
        after.status["failure_count"] = failures
    return after


def census(current: Sequence[ReplicaView], old: Sequence[ReplicaView]) -> Census:
    ready = [r for r in current if r.is_ready]
    old_ready = [r for r in old if r.is_ready]
    serving = ready or old_ready
    return Census(len(current), len(ready), len(old), len(old_ready), serving[0].url if serving else None)


def status_values(
    state: str, message: str, counts: Census, target: int, pending_reason: str
) -> dict[str, Any]:
    """The status columns for these replica counts (`state`/`message`: the endpoint's now)."""
    serving = counts.current_ready or counts.old_ready
    if state == "updateFailed" and counts.old_ready and not counts.current_ready:
        pass  # an update that gave up, while the old replicas still serve: keep saying so
    elif counts.current_ready and not counts.old:
        state, message = "running", "Endpoint is ready"
    elif serving:
        state, message = "updating", "Endpoint waiting for the update"
    elif counts.current:
        state, message = "initializing", "Endpoint is initializing"
    else:
        state, message = "pending", pending_reason or WAITING
    if pending_reason and state != "running":
        message = pending_reason
    return {"state": state, "message": message, "url": counts.serving_url, "ready_replicas": serving,
            "target_replicas": target}


# --- observation ------------------------------------------------------------------------------


def _observe(
    view: EndpointView,
    replicas: Sequence[ReplicaView],
    probes: Mapping[str, Probe],
    now: Now,
    limits: PlannerLimits,
    plan: Plan,
) -> tuple[int, list[ReplicaView]]:
    """Applies the probes: crashes counted and stopped, replicas marked ready or unhealthy.
    Returns the failure count and the live replicas (as they are after this pass)."""
    failures, live, seen = view.failure_count, [], dict(plan.clocks.requests_seen)
    for replica in replicas:
        probe = probes.get(replica.key)
        if probe is None:  # no handle yet (start in progress elsewhere) or just started
            live.append(replica)
            continue
        if probe.status.phase == "exited":
            code = probe.status.exit_code
            what = f"replica {replica.key} exited{'' if code is None else f' with code {code}'}"
            failures = _record_failure(plan, failures, what, probe.logs, now, limits)
            _stop(plan, [replica])
            continue
        if probe.healthy:
            if not replica.is_ready:
                plan.replica_changes[replica.key] = {"state": "ready", "ready_at": now.wall,
                                                     "url": probe.status.url}
                plan.events.append(("replica-ready", f"replica {replica.key} ready at {probe.status.url}"))
                failures = 0
            replica = replace(replica, state="ready", url=probe.status.url, queue_size=probe.queue_size)
            plan.replica_changes.setdefault(replica.key, {})["queue_size"] = probe.queue_size
            counted, previous = probe.requests_seen, seen.get(replica.key)
            if probe.queue_size > 0 or (counted is not None and previous is not None and counted > previous):
                plan.touch_active = now.wall
            if counted is not None:
                seen[replica.key] = counted
        elif replica.is_ready:
            plan.replica_changes[replica.key] = {"state": "unhealthy",
                                                 "message": "health route stopped answering 200"}
            replica = replace(replica, state="unhealthy")
        elif replica.state == "starting" and (
            (now.wall - replica.created_at).total_seconds() > limits.startup_timeout_s
        ):
            what = f"replica {replica.key} not healthy after {limits.startup_timeout_s:.0f} s"
            failures = _record_failure(plan, failures, what, probe.logs, now, limits)
            _stop(plan, [replica])
            continue
        live.append(replica)
    plan.clocks = replace(plan.clocks, requests_seen=seen)
    return failures, live


def _record_failure(
    plan: Plan, failures: int, what: str, lines: tuple[str, ...], now: Now, limits: PlannerLimits
) -> int:
    """Counts a crash (the probe fetched its log lines) and sets the restart backoff."""
    report = what + (":\n" + "\n".join(lines) if lines else " (no log output)")
    failures += 1
    delay = min(limits.backoff_base_s * 2 ** (failures - 1), limits.backoff_max_s)
    plan.clocks = replace(plan.clocks, last_failure=report, not_before=now.monotonic + delay)
    plan.events.append(("replica-failed", f"{report}\nrestart #{failures} in {delay:.1f} s"))
    return failures


# --- decisions --------------------------------------------------------------------------------


def _idle_too_long(view: EndpointView, live: Sequence[ReplicaView], plan: Plan, now: Now) -> bool:
    scaling = view.spec.compute.scaling
    if not scaling.can_scale_to_zero or not any(r.is_ready for r in live):
        return False
    last_active = plan.touch_active or view.last_active_at
    return (now.wall - last_active).total_seconds() > scaling.scale_to_zero_minutes * 60


def _target(
    view: EndpointView, live: Sequence[ReplicaView], plan: Plan, now: Now, limits: PlannerLimits
) -> int:
    """Replicas wanted: the queue per replica under `pendingRequests`, within min/max; a
    scale-down waits `scale_down_cooldown_s` after the last scale-up."""
    scaling = view.spec.compute.scaling
    low, high = max(1, scaling.min_replica), max(1, scaling.max_replica)
    queue = sum(r.queue_size for r in live if r.is_ready)
    wanted = min(high, max(low, math.ceil(queue / scaling.pending_requests)))
    current = max(low, min(high, view.target_replicas or low))
    if wanted > current:
        plan.clocks = replace(plan.clocks, last_scale_up=now.monotonic)
        return wanted
    if wanted < current and now.monotonic - plan.clocks.last_scale_up < limits.scale_down_cooldown_s:
        return current
    return wanted


def _give_up(plan: Plan, failures: int, current: Sequence[ReplicaView], old: Sequence[ReplicaView]) -> Plan:
    """`failed` (or `updateFailed` while old replicas still serve) after too many failures."""
    _stop(plan, current)
    report = plan.clocks.last_failure or "replicas kept failing"
    serving = [r for r in old if r.is_ready]
    state = "updateFailed" if serving else "failed"
    message = (f"Endpoint failed to {'update' if serving else 'deploy'} after {failures} attempts. "
               f"{report}")
    plan.events.append((state, message))
    plan.status.update(state=state, message=message, ready_replicas=len(serving))
    if not serving:
        plan.status["url"] = None
    return plan


def _stop(plan: Plan, replicas: Sequence[ReplicaView]) -> None:
    plan.stops.extend(r.key for r in replicas if r.key not in plan.stops)


def _finish(plan: Plan) -> Plan:
    """Stopped replicas leave the request counters (their keys are never reused)."""
    seen = {k: v for k, v in plan.clocks.requests_seen.items() if k not in plan.stops}
    plan.clocks = replace(plan.clocks, requests_seen=seen)
    return plan
