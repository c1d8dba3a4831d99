"""The planner's pure decisions (`endpoints/decide.py`), without a database or a launcher: targets and
the scale-down cooldown, crash backoff, giving up, rolling updates and the status they show."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from lorafleet.controlplane.catalog.types import InstanceType
from lorafleet.controlplane.endpoints.decide import decide, settle
from lorafleet.controlplane.endpoints.plan import (
    Clocks,
    EndpointView,
    LaunchReport,
    Now,
    Placement,
    PlannerLimits,
    ReplicaView,
)
from lorafleet.controlplane.endpoints.quota import QuotaRoom
from lorafleet.controlplane.endpoints.spec_view import EndpointSpec
from lorafleet.controlplane.launchers.base import ReplicaStatus
from lorafleet.controlplane.probes import Probe

T0 = datetime(2026, 1, 1, 12, 0, 0)
LIMITS = PlannerLimits(startup_timeout_s=60, max_restarts=2, backoff_base_s=1, backoff_max_s=8,
                       scale_down_cooldown_s=30)
DIGEST = "current-digest"
PLACED = Placement(InstanceType.__new__(InstanceType), {"MODEL_ID": "/m"}, ())


def spec(min_replica: int = 1, max_replica: int = 1, pending: float | None = None,
         idle_minutes: int | None = None) -> EndpointSpec:
    scaling: dict[str, Any] = {"minReplica": min_replica, "maxReplica": max_replica,
                               "scaleToZeroTimeout": idle_minutes}
    if pending is not None:
        scaling["measure"] = {"pendingRequests": pending}
    return EndpointSpec.from_stored({
        "type": "protected", "healthRoute": "/health", "provider": {"vendor": "v", "region": "r"},
        "compute": {"accelerator": "cpu", "instanceType": "t", "instanceSize": "x1", "scaling": scaling},
        "model": {"repository": "org/m"},
    })


def view(**fields: Any) -> EndpointView:
    values: dict[str, Any] = dict(
        id=1, namespace="alice", name="ep", revision=3, desired_state="running", state="pending",
        message="", url=None, failure_count=0, ready_replicas=0, target_replicas=0, last_active_at=T0,
        spec=spec(), digest=DIGEST, placement=PLACED, room=None,
    )
    values.update(fields)
    return EndpointView(**values)


def replica(key: str, state: str = "ready", digest: str = DIGEST, rid: int = 1, age_s: float = 10,
            queue: float = 0.0) -> ReplicaView:
    return ReplicaView(rid, key, state, digest, True, T0 - timedelta(seconds=age_s),
                       f"http://127.0.0.1:9{rid:03d}", queue)


def healthy(rep: ReplicaView, queue: float = 0.0, seen: float | None = None) -> Probe:
    return Probe(ReplicaStatus("running", rep.url), healthy=True, queue_size=queue, requests_seen=seen)


def exited(code: int = 1) -> Probe:
    return Probe(ReplicaStatus("exited", None, code), logs=("boom",))


def at(seconds: float = 0.0) -> Now:
    return Now(T0 + timedelta(seconds=seconds), 1000.0 + seconds)


def test_a_new_endpoint_launches_its_minimum_and_waits_initializing() -> None:
    plan = decide(view(spec=spec(min_replica=2, max_replica=3)), [], {}, Clocks(), at(), LIMITS)
    assert plan.launches == 2 and plan.stops == []
    assert plan.status["state"] == "pending" and plan.status["target_replicas"] == 2


def test_a_replica_that_turns_healthy_makes_the_endpoint_running_with_its_url() -> None:
    rep = replica("r1", state="starting")
    plan = decide(view(failure_count=1), [rep], {"r1": healthy(rep)}, Clocks(), at(), LIMITS)
    assert plan.replica_changes["r1"]["state"] == "ready"
    assert ("replica-ready", f"replica r1 ready at {rep.url}") in plan.events
    assert plan.status["state"] == "running" and plan.status["url"] == rep.url
    assert plan.status["failure_count"] == 0 and plan.launches == 0


def test_queue_above_the_threshold_scales_up_and_scale_down_waits_for_the_cooldown() -> None:
    ep = view(spec=spec(min_replica=1, max_replica=3, pending=2), target_replicas=1, state="running")
    rep = replica("r1")
    up = decide(ep, [rep], {"r1": healthy(rep, queue=5)}, Clocks(), at(), LIMITS)
    assert up.target == 3 and up.launches == 2 and up.clocks.last_scale_up == at().monotonic

    reps = [replica(f"r{i}", rid=i) for i in (1, 2, 3)]
    calm = {r.key: healthy(r) for r in reps}
    ep3 = replace(ep, target_replicas=3)
    soon = decide(ep3, reps, calm, up.clocks, at(LIMITS.scale_down_cooldown_s - 1), LIMITS)
    assert soon.target == 3 and soon.stops == []
    later = decide(ep3, reps, calm, up.clocks, at(LIMITS.scale_down_cooldown_s + 1), LIMITS)
    assert later.target == 1 and later.stops == ["r1", "r2"]  # not ready first, then the oldest


def test_a_crash_is_counted_and_the_restart_waits_for_the_exponential_backoff() -> None:
    ep = view(state="running", failure_count=1)
    rep = replica("r1")
    plan = decide(ep, [rep], {"r1": exited(137)}, Clocks(), at(), LIMITS)
    assert plan.stops == ["r1"] and plan.status["failure_count"] == 2
    assert plan.clocks.not_before == at().monotonic + 2  # base 1 s · 2^(2-1)
    kinds = [kind for kind, _ in plan.events]
    assert kinds == ["replica-failed"] and "exited with code 137:\nboom" in plan.events[0][1]
    assert plan.launches == 0  # still backing off

    again = decide(replace(ep, failure_count=2), [], {}, plan.clocks, at(1.9), LIMITS)
    assert again.launches == 0
    again = decide(replace(ep, failure_count=2), [], {}, plan.clocks, at(2.1), LIMITS)
    assert again.launches == 1


def test_a_replica_not_healthy_by_the_startup_deadline_counts_as_a_failure() -> None:
    rep = replica("r1", state="starting", age_s=LIMITS.startup_timeout_s + 1)
    probe = Probe(ReplicaStatus("running", rep.url), healthy=False, logs=("loading",))
    plan = decide(view(), [rep], {"r1": probe}, Clocks(), at(), LIMITS)
    assert plan.stops == ["r1"] and plan.status["failure_count"] == 1
    assert "not healthy after 60 s:\nloading" in plan.events[0][1]


def test_past_max_restarts_the_endpoint_gives_up_failed_or_update_failed() -> None:
    clocks = Clocks(last_failure="replica r9 exited with code 1:\nboom")
    failed = decide(view(failure_count=LIMITS.max_restarts + 1), [], {}, clocks, at(), LIMITS)
    assert failed.status["state"] == "failed" and failed.status["url"] is None
    message = failed.status["message"]
    assert "failed to deploy after 3 attempts" in message and "boom" in message
    assert failed.launches == 0

    old, new = replica("old", digest="older"), replica("new", state="starting", rid=2)
    ep = view(state="updating", failure_count=LIMITS.max_restarts + 1)
    update_failed = decide(ep, [old, new], {"old": healthy(old)}, clocks, at(), LIMITS)
    assert update_failed.status["state"] == "updateFailed" and update_failed.stops == ["new"]
    assert "url" not in update_failed.status  # the old replica keeps serving


def test_a_rolling_update_stops_old_replicas_only_once_the_new_ones_are_ready() -> None:
    old = replica("old", digest="older")
    ep = view(state="updating")
    starting = decide(ep, [old], {"old": healthy(old)}, Clocks(), at(), LIMITS)
    assert starting.launches == 1 and starting.stops == []
    assert starting.status["state"] == "updating" and starting.status["url"] == old.url

    new = replica("new", state="starting", rid=2)
    done = decide(ep, [old, new], {"old": healthy(old), "new": healthy(new)}, Clocks(), at(), LIMITS)
    assert done.stops == ["old"] and done.status["state"] == "running"
    assert done.status["url"] == new.url


def test_pause_stops_every_replica_and_drops_the_url() -> None:
    reps = [replica("r1"), replica("r2", rid=2)]
    plan = decide(view(desired_state="paused", state="paused"), reps, {}, Clocks(), at(), LIMITS)
    assert plan.stops == ["r1", "r2"]
    assert plan.status == {"ready_replicas": 0, "target_replicas": 0, "url": None}


def test_an_idle_endpoint_with_min_zero_scales_to_zero_and_activity_keeps_it_up() -> None:
    ep = view(spec=spec(min_replica=0, max_replica=1, idle_minutes=1), state="running",
              last_active_at=T0 - timedelta(minutes=2))
    rep = replica("r1")
    idle = decide(ep, [rep], {"r1": healthy(rep, seen=5)}, Clocks(requests_seen={"r1": 5}), at(), LIMITS)
    assert idle.stops == ["r1"] and idle.status["desired_state"] == "scaledToZero"
    assert ("scaled-to-zero", "idle longer than scaleToZeroTimeout") in idle.events

    busy = decide(ep, [rep], {"r1": healthy(rep, seen=6)}, Clocks(requests_seen={"r1": 5}), at(), LIMITS)
    assert busy.stops == [] and busy.touch_active == at().wall


def test_the_quota_caps_the_target_and_the_status_says_why() -> None:
    ep = view(spec=spec(min_replica=2, max_replica=2))
    plan = decide(replace(ep, room=QuotaRoom(0, "waiting for quota: ...")), [], {}, Clocks(), at(), LIMITS)
    assert plan.launches == 0 and plan.status["message"] == "waiting for quota: ..."


def test_an_endpoint_that_cannot_be_placed_stays_pending_with_the_reason() -> None:
    plan = decide(view(placement="cannot place the endpoint: unknown vendor"), [], {}, Clocks(), at(), LIMITS)
    assert plan.launches == 0 and plan.status["state"] == "pending"
    assert plan.status["message"] == "cannot place the endpoint: unknown vendor"


def test_settle_counts_started_replicas_and_failed_launches() -> None:
    ep = view()
    plan = decide(ep, [], {}, Clocks(), at(), LIMITS)
    ok = settle(ep, plan, [LaunchReport("r1", "local/cpu")])
    assert ok.status["state"] == "initializing"
    assert ok.events == [("replica-started", "replica r1 started on local/cpu")]
    full = settle(ep, plan, [LaunchReport("r1", "i", "no free GPU now", no_capacity=True)])
    assert full.status["message"] == "no free GPU now" and "failure_count" not in full.status
    broken = settle(ep, plan, [LaunchReport("r1", "i", "spawn failed")])
    assert broken.status["failure_count"] == 1
    assert broken.clocks.last_failure == "could not start a replica: spawn failed"
