"""The planner's decisions, as pure functions: no database, no launcher, no clock of their own.

`decide(view, replicas, probes, clocks, now)` is one endpoint's reconciliation: record crashes
(with exponential backoff), mark replicas ready or unhealthy, take replicas out of service (pause,
scale to zero, scale-down, the old replicas of a finished rolling update), choose the target
replica count (autoscaling on the gateways' load, with a scale-down cooldown, capped by the
namespace's quota), give up after too many failures, collect the replicas' token counts, and
compute the status the API shows. `settle(...)` recomputes the status once the launches it asked
for have happened. `apply.py` writes the results.

A ready replica is never stopped at once: it is first `draining` (gateways stop routing to it
within one refresh) and stopped once it has no request in flight and `drain_grace_s` has passed,
or after `drain_timeout_s` whatever it still serves. So a rolling update or a scale-down loses no
request. Replicas that are not serving (starting, unhealthy, exited) are stopped at once.
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
        view: the endpoint (status columns, typed spec, current digest, placement, quota room, load).
        replicas: its replica rows, none `stopping`.
        probes: replica key → probe, for rows with a handle.
        clocks: what the planner remembers of the endpoint (backoff, cooldown).
        now: this pass's instant.
        limits: the reconciler settings.
    """
    plan = Plan(view.id, view.revision, clocks, moment=now.wall)
    failures, live = _observe(view, replicas, probes, now, limits, plan)
    if failures != view.failure_count:
        plan.status["failure_count"] = failures
    if view.desired_state != "running" or view.state == "failed":
        _retire(plan, live, now)
        plan.status.update(ready_replicas=0, target_replicas=0)
        if view.desired_state in ("paused", "scaledToZero"):  # a scaled-to-zero endpoint keeps its URL
            plan.status["url"] = None if view.desired_state == "paused" else view.gateway_url
        return plan
    current = [r for r in live if r.spec_digest == view.digest]
    old = [r for r in live if r.spec_digest != view.digest]
    if _idle_too_long(view, live, now):
        _retire(plan, live, now)
        plan.events.append(("scaled-to-zero", "idle longer than scaleToZeroTimeout"))
        plan.status.update(desired_state="scaledToZero", state="scaledToZero", ready_replicas=0,
                           message="Endpoint scaled to zero after being idle", target_replicas=0,
                           url=view.gateway_url)
        return plan
    target = _target(view, plan, now, limits)
    pending_reason = ""
    if view.room is not None and target > view.room.capacity:  # keep what runs, start no more
        target, pending_reason = max(view.room.capacity, len(current)), view.room.reason
    if failures > limits.max_restarts:
        return _give_up(plan, failures, current, old, now, view.gateway_url)
    if len(current) < target and now.monotonic >= plan.clocks.not_before:
        if isinstance(view.placement, str):
            pending_reason = view.placement
        else:
            plan.launches = target - len(current)
    elif len(current) > target:
        surplus = sorted(current, key=lambda r: (r.is_ready, r.id))[: len(current) - target]
        _retire(plan, surplus, now)
        current = [r for r in current if r not in surplus]
    if sum(r.is_ready for r in current) >= target:
        _retire(plan, old, now)
        old = []
    plan.census, plan.target = census(current, old), target
    plan.status.update(status_values(view.state, view.message, plan.census, target, pending_reason,
                                     view.gateway_url))
    return plan


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
    after.status = status_values(view.state, view.message, after.census, plan.target, pending_reason,
                                 view.gateway_url)
    if failures != view.failure_count:
        after.status["failure_count"] = failures
    return after


def census(current: Sequence[ReplicaView], old: Sequence[ReplicaView]) -> Census:
    return Census(len(current), sum(r.is_ready for r in current), len(old), sum(r.is_ready for r in old))


def status_values(state: str, message: str, counts: Census, target: int, pending_reason: str,
                  url: str | None) -> dict[str, Any]:
    """The status columns for these replica counts (`state`/`message`: the endpoint's now; `url`:
    its URL, shown while a replica serves)."""
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
    return {"state": state, "message": message, "url": url if serving else None, "ready_replicas": serving,
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
    """Applies the probes: crashes counted and stopped, replicas marked ready or unhealthy, drained
    replicas stopped, tokens collected. Returns the failure count and the replicas in service."""
    failures, live = view.failure_count, []
    for replica in replicas:
        probe = probes.get(replica.key)
        if probe is None:  # no handle yet (start in progress elsewhere) or just started
            if replica.state != "draining":
                live.append(replica)
            continue
        _collect_tokens(plan, replica, probe)
        if replica.state == "draining":
            if probe.status.phase == "exited" or _drained(replica, probe, now, limits):
                plan.stops.append(replica.key)
            continue
        if probe.status.phase == "exited":
            code = probe.status.exit_code
            what = f"replica {replica.key} exited{'' if code is None else f' with code {code}'}"
            failures = _record_failure(plan, failures, what, probe.logs, now, limits)
            plan.stops.append(replica.key)
            continue
        if probe.healthy:
            if not replica.is_ready:
                _change(plan, replica, state="ready", ready_at=now.wall, url=probe.status.url)
                plan.events.append(("replica-ready", f"replica {replica.key} ready at {probe.status.url}"))
                failures = 0
            replica = replace(replica, state="ready", url=probe.status.url, queue_size=probe.queue_size)
            _change(plan, replica, queue_size=probe.queue_size)
        elif replica.is_ready:
            _change(plan, replica, state="unhealthy", message="health route stopped answering 200")
            replica = replace(replica, state="unhealthy")
        elif replica.state == "starting" and (
            (now.wall - replica.created_at).total_seconds() > limits.startup_timeout_s
        ):
            what = f"replica {replica.key} not healthy after {limits.startup_timeout_s:.0f} s"
            failures = _record_failure(plan, failures, what, probe.logs, now, limits)
            plan.stops.append(replica.key)
            continue
        live.append(replica)
    return failures, live


def _drained(replica: ReplicaView, probe: Probe, now: Now, limits: PlannerLimits) -> bool:
    """Whether a draining replica may stop: past the grace period (no gateway routes to it any
    more) with nothing in flight, or past the drain timeout."""
    since = (now.wall - (replica.drain_started_at or now.wall)).total_seconds()
    idle = not probe.healthy or probe.in_flight == 0
    return (since >= limits.drain_grace_s and idle) or since >= limits.drain_timeout_s


def _collect_tokens(plan: Plan, replica: ReplicaView, probe: Probe) -> None:
    """Adds the tokens the replica counted since the last pass to the plan's usage."""
    if probe.tokens is None:
        return
    seen = replica.usage_seen
    for adapter, counts in probe.tokens.items():
        before = seen.get(adapter) or (0, 0)
        # A counter below what was seen was reset (cannot happen for one replica key; be safe).
        deltas = [int(c - b) if c >= b else int(c) for c, b in zip(counts, before, strict=False)]
        if any(deltas):
            total = plan.usage.get(adapter, (0, 0))
            plan.usage[adapter] = (total[0] + deltas[0], total[1] + deltas[1])
    tokens = {adapter: [int(c) for c in counts] for adapter, counts in probe.tokens.items()}
    if tokens != dict(seen):
        _change(plan, replica, usage_seen=tokens)


def _change(plan: Plan, replica: ReplicaView, **values: Any) -> None:
    plan.replica_changes.setdefault(replica.key, {}).update(values)


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


def _idle_too_long(view: EndpointView, live: Sequence[ReplicaView], now: Now) -> bool:
    """No request through the gateway for `scaleToZeroTimeout` minutes (gateways reset the timer)."""
    scaling = view.spec.compute.scaling
    if not scaling.can_scale_to_zero or not any(r.is_ready for r in live) or view.load > 0:
        return False
    return (now.wall - view.last_active_at).total_seconds() > scaling.scale_to_zero_minutes * 60


def _target(view: EndpointView, plan: Plan, now: Now, limits: PlannerLimits) -> int:
    """Replicas wanted: the gateways' load (pending + in flight) per replica at most
    `pendingRequests`, within min/max; a scale-down waits `scale_down_cooldown_s` after the last
    scale-up."""
    scaling = view.spec.compute.scaling
    low, high = max(1, scaling.min_replica), max(1, scaling.max_replica)
    wanted = min(high, max(low, math.ceil(view.load / scaling.pending_requests)))
    current = max(low, min(high, view.target_replicas or low))
    if wanted > current:
        plan.clocks = replace(plan.clocks, last_scale_up=now.monotonic)
        return wanted
    if wanted < current and now.monotonic - plan.clocks.last_scale_up < limits.scale_down_cooldown_s:
        return current
    return wanted


def _give_up(plan: Plan, failures: int, current: Sequence[ReplicaView], old: Sequence[ReplicaView],
             now: Now, url: str | None) -> Plan:
    """`failed` (or `updateFailed` while old replicas still serve) after too many failures."""
    _retire(plan, current, now)
    report = plan.clocks.last_failure or "replicas kept failing"
    serving = [r for r in old if r.is_ready]
    state = "updateFailed" if serving else "failed"
    message = (f"Endpoint failed to {'update' if serving else 'deploy'} after {failures} attempts. "
               f"{report}")
    plan.events.append((state, message))
    plan.status.update(state=state, message=message, ready_replicas=len(serving),
                       url=url if serving else None)
    return plan


def _retire(plan: Plan, replicas: Sequence[ReplicaView], now: Now) -> None:
    """Takes replicas out of service: a ready one drains first, any other stops at once."""
    for replica in replicas:
        if replica.is_ready:
            _change(plan, replica, state="draining", drain_started_at=now.wall)
        elif replica.key not in plan.stops:
            plan.stops.append(replica.key)
