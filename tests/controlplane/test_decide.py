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
URL = "http://gateway.example/endpoints/alice/ep"
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
        spec=spec(), digest=DIGEST, gateway_url=URL, placement=PLACED, room=None, load=0,
    )
    values.update(fields)
    return EndpointView(**values)


def replica(key: str, state: str = "ready", digest: str = DIGEST, rid: int = 1, age_s: float = 10,
            drain_s: float | None = None, seen: dict[str, list[int]] | None = None) -> ReplicaView:
    drain = None if drain_s is None else T0 - timedelta(seconds=drain_s)
    return ReplicaView(rid, key, state, digest, True, T0 - timedelta(seconds=age_s),
                       f"http://127.0.0.1:9{rid:03d}", 0.0, drain, seen or {})


def healthy(rep: ReplicaView, in_flight: float = 0.0, tokens: dict | None = None) -> Probe:
    return Probe(ReplicaStatus("running", rep.url), healthy=True, in_flight=in_flight, tokens=tokens)


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
    assert plan.status["state"] == "running" and plan.status["url"] == URL  # the gateway's, not the replica's
    assert plan.status["failure_count"] == 0 and plan.launches == 0


def test_gateway_load_above_the_threshold_scales_up_and_scale_down_waits_for_the_cooldown() -> None:
    ep = view(spec=spec(min_replica=1, max_replica=3, pending=2), target_replicas=1, state="running", load=5)
    rep = replica("r1")
    up = decide(ep, [rep], {"r1": healthy(rep)}, Clocks(), at(), LIMITS)
    assert up.target == 3 and up.launches == 2 and up.clocks.last_scale_up == at().monotonic

    reps = [replica(f"r{i}", rid=i) for i in (1, 2, 3)]
    calm = {r.key: healthy(r) for r in reps}
    ep3 = replace(ep, target_replicas=3, load=0)
    soon = decide(ep3, reps, calm, up.clocks, at(LIMITS.scale_down_cooldown_s - 1), LIMITS)
    assert soon.target == 3 and soon.replica_changes["r1"].get("state") is None
    later = decide(ep3, reps, calm, up.clocks, at(LIMITS.scale_down_cooldown_s + 1), LIMITS)
    assert later.target == 1 and later.stops == []  # ready replicas drain before they stop
    draining = {k for k, v in later.replica_changes.items() if v.get("state") == "draining"}
    assert draining == {"r1", "r2"}  # the oldest first
    assert later.status["state"] == "running" and later.status["ready_replicas"] == 1


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
    new_probe = Probe(ReplicaStatus("running", new.url), healthy=False)
    probes = {"old": healthy(old), "new": new_probe}
    update_failed = decide(ep, [old, new], probes, clocks, at(), LIMITS)
    assert update_failed.status["state"] == "updateFailed" and update_failed.stops == ["new"]
    assert update_failed.status["url"] == URL  # the old replica keeps serving


def test_a_rolling_update_drains_old_replicas_only_once_the_new_ones_are_ready() -> None:
    old = replica("old", digest="older")
    ep = view(state="updating")
    starting = decide(ep, [old], {"old": healthy(old)}, Clocks(), at(), LIMITS)
    assert starting.launches == 1 and starting.stops == []
    assert starting.status["state"] == "updating" and starting.status["url"] == URL

    new = replica("new", state="starting", rid=2)
    done = decide(ep, [old, new], {"old": healthy(old), "new": healthy(new)}, Clocks(), at(), LIMITS)
    assert done.stops == [] and done.replica_changes["old"]["state"] == "draining"
    assert done.replica_changes["old"]["drain_started_at"] == at().wall
    assert done.status["state"] == "running" and done.status["url"] == URL


def test_a_draining_replica_stops_once_idle_after_the_grace_period_or_at_the_timeout() -> None:
    ep = view(state="running")
    new = replica("new", rid=2)
    for drain_s, in_flight, stops in [(LIMITS.drain_grace_s - 0.5, 0, False),  # gateways may still route
                                      (LIMITS.drain_grace_s + 0.5, 2, False),  # requests in flight
                                      (LIMITS.drain_grace_s + 0.5, 0, True),
                                      (LIMITS.drain_timeout_s + 1, 2, True)]:
        old = replica("old", state="draining", digest="older", drain_s=drain_s)
        probes = {"old": healthy(old, in_flight=in_flight), "new": healthy(new)}
        plan = decide(ep, [old, new], probes, Clocks(), at(), LIMITS)
        assert (plan.stops == ["old"]) is stops, (drain_s, in_flight)
        assert plan.status["state"] == "running" and plan.status["ready_replicas"] == 1


def test_replicas_tokens_are_collected_by_difference_per_adapter() -> None:
    rep = replica("r1", seen={"": [10, 4], "a": [5, 5]})
    tokens = {"": (12.0, 9.0), "a": (5.0, 5.0), "b": (3.0, 1.0)}
    plan = decide(view(state="running"), [rep], {"r1": healthy(rep, tokens=tokens)}, Clocks(), at(), LIMITS)
    assert plan.usage == {"": (2, 5), "b": (3, 1)} and plan.moment == at().wall
    assert plan.replica_changes["r1"]["usage_seen"] == {"": [12, 9], "a": [5, 5], "b": [3, 1]}


def test_pause_drains_ready_replicas_stops_the_others_and_drops_the_url() -> None:
    reps = [replica("r1"), replica("r2", state="starting", rid=2)]
    plan = decide(view(desired_state="paused", state="paused"), reps, {}, Clocks(), at(), LIMITS)
    assert plan.stops == ["r2"] and plan.replica_changes["r1"]["state"] == "draining"
    assert plan.status == {"ready_replicas": 0, "target_replicas": 0, "url": None}


def test_a_scaled_to_zero_endpoint_keeps_its_url_to_be_woken_through() -> None:
    plan = decide(view(desired_state="scaledToZero", state="scaledToZero"), [], {}, Clocks(), at(), LIMITS)
    assert plan.status["url"] == URL


def test_an_endpoint_idle_at_the_gateway_scales_to_zero_and_traffic_keeps_it_up() -> None:
    ep = view(spec=spec(min_replica=0, max_replica=1, idle_minutes=1), state="running",
              last_active_at=T0 - timedelta(minutes=2))
    rep = replica("r1")
    idle = decide(ep, [rep], {"r1": healthy(rep)}, Clocks(), at(), LIMITS)
    assert idle.replica_changes["r1"]["state"] == "draining"
    assert idle.status["desired_state"] == "scaledToZero"
    assert ("scaled-to-zero", "idle longer than scaleToZeroTimeout") in idle.events
    assert idle.status["url"] == URL

    recent = replace(ep, last_active_at=T0 - timedelta(seconds=30))  # a gateway served it lately
    assert decide(recent, [rep], {"r1": healthy(rep)}, Clocks(), at(), LIMITS).status["state"] == "running"
    waiting = replace(ep, load=1)  # a request is held at a gateway right now
    assert decide(waiting, [rep], {"r1": healthy(rep)}, Clocks(), at(), LIMITS).status["state"] == "running"


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
