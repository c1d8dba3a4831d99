"""Replica choice (`gateway/routing.py`): adapter affinity, the load bound, the base model."""

from __future__ import annotations

import math
from collections import Counter

from lorafleet.controlplane.gateway.routing import LOAD_FACTOR, RoundRobin, choose

REPLICAS = ["rep-a", "rep-b", "rep-c"]


def test_an_idle_endpoint_sends_each_adapter_to_one_replica_every_time() -> None:
    for adapter in (f"adapter-{i}" for i in range(20)):
        picks = {choose(REPLICAS, adapter, {}) for _ in range(5)}
        assert len(picks) == 1


def test_adapters_spread_over_the_replicas() -> None:
    firsts = Counter(choose(REPLICAS, f"adapter-{i}", {}) for i in range(60))
    assert set(firsts) == set(REPLICAS) and min(firsts.values()) >= 10


def test_a_hot_adapter_spills_to_its_next_replica_at_the_bound_and_always_the_same_one() -> None:
    home = choose(REPLICAS, "hot", {}, load_factor=1.25)
    assert home is not None
    # 1 outstanding request: the bound ceil(1.25 * 2 / 3) = 1 is reached on its home replica.
    spill = choose(REPLICAS, "hot", {home: 1}, load_factor=1.25)
    assert spill not in (home, None)
    assert choose(REPLICAS, "hot", {home: 1}, load_factor=1.25) == spill
    # Under load the bound grows with the average: a little more on the home replica is fine...
    third = next(r for r in REPLICAS if r not in (home, spill))
    assert choose(REPLICAS, "hot", {home: 2, spill: 1, third: 1}, load_factor=1.25) == home
    # ... but not past 1.25 times the average (ceil(1.25 * 7 / 3) = 3).
    assert choose(REPLICAS, "hot", {home: 3, spill: 3, third: 0}, load_factor=1.25) == third
    # A larger factor keeps it home longer: ceil(2 * 7 / 3) = 5.
    assert choose(REPLICAS, "hot", {home: 3, spill: 3, third: 0}, load_factor=2.0) == home


def test_no_replica_takes_more_than_the_bound_whatever_the_load() -> None:
    load: Counter[str] = Counter()
    for n in range(300):  # one hot adapter, requests that never finish
        pick = choose(REPLICAS, "hot", load)
        assert pick is not None
        assert load[pick] < math.ceil(LOAD_FACTOR * (n + 1) / len(REPLICAS))
        load[pick] += 1
    assert max(load.values()) <= math.ceil(LOAD_FACTOR * 300 / len(REPLICAS))


def test_replicas_that_hold_the_adapter_come_first_least_loaded_first() -> None:
    home = choose(REPLICAS, "a", {})
    others = [r for r in REPLICAS if r != home]
    assert choose(REPLICAS, "a", {}, holders={others[0]}) == others[0]
    assert choose(REPLICAS, "a", {others[0]: 1, others[1]: 0}, holders=set(others)) == others[1]


def test_the_base_model_goes_to_the_least_loaded_replica() -> None:
    assert choose(REPLICAS, None, {"rep-a": 2, "rep-b": 0, "rep-c": 1}) == "rep-b"
    assert choose(REPLICAS, "", {"rep-a": 0, "rep-b": 3, "rep-c": 3}) == "rep-a"


def test_replicas_that_refused_are_not_tried_again() -> None:
    first = choose(REPLICAS, "a", {})
    second = choose(REPLICAS, "a", {}, exclude={first})
    assert second not in (first, None)
    assert choose(REPLICAS, "a", {}, exclude=set(REPLICAS)) is None


def test_round_robin_takes_turns_whatever_the_adapter_and_skips_refused_replicas() -> None:
    rr = RoundRobin()
    assert [rr.choose(REPLICAS) for _ in range(6)] == ["rep-b", "rep-c", "rep-a"] * 2
    assert rr.choose(REPLICAS, exclude={"rep-b", "rep-c"}) == "rep-a"
    assert rr.choose(REPLICAS, exclude=set(REPLICAS)) is None
