"""Adapter residency on the device, without a model: real sizes, LRU under a byte budget, and what
is never evicted (in use, pinned, loading, or needed by waiting requests)."""

from __future__ import annotations

import itertools

import pytest
from lorafleet.kernels import pages_for_rank
from lorafleet.runtime.adapters import AdapterResidency
from lorafleet.runtime.engine import SamplingParams
from lorafleet.runtime.engine.scheduler import STARVATION_STEPS, Scheduler, SchedulerConfig
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus

PAGE_BYTES = {"qkv": 1000, "o": 300}  # one page index over the group's layers
_ids = itertools.count()


def _residency(slots: int = 8, pages: int = 16) -> AdapterResidency:
    return AdapterResidency(slots, dict.fromkeys(PAGE_BYTES, pages), PAGE_BYTES)


def _bytes(ranks: dict[str, int]) -> int:
    return sum(pages_for_rank(rank) * PAGE_BYTES[group] for group, rank in ranks.items())


def test_each_adapter_costs_its_real_size_with_mixed_ranks() -> None:
    residency = _residency()
    footprints = {"r8": {"qkv": 8}, "r16": {"qkv": 16, "o": 16}, "r64": {"qkv": 64}, "r12": {"o": 12}}
    for key, ranks in footprints.items():
        grant = residency.acquire(key, ranks)
        assert grant is not None and grant.is_new
        assert grant.residence.num_bytes == _bytes(ranks)
        assert {g: len(p) for g, p in grant.residence.pages.items()} == {
            g: pages_for_rank(r) for g, r in ranks.items()
        }
    assert residency.bytes_used == sum(_bytes(r) for r in footprints.values()) == 1000 + 2600 + 8000 + 600
    assert residency.bytes_total == 16 * 1300
    # Nothing pads to the largest rank: the rank-8 adapter holds one qkv page, no o page at all.
    assert residency.residence("r8").pages == {"qkv": (0,)}  # type: ignore[union-attr]


def test_a_slot_gets_consecutive_pages_when_the_free_list_has_a_run() -> None:
    residency = _residency(pages=12)
    for key in ("a", "b", "c"):
        residency.acquire(key, {"qkv": 16})  # pages 0-1, 2-3, 4-5
        residency.release(key)
    residency.discard("b")  # frees 2-3: a run of 2, but a rank-32 adapter needs 4
    grant = residency.acquire("d", {"qkv": 32})
    assert grant is not None and grant.residence.pages["qkv"] == (6, 7, 8, 9)


def test_under_a_full_budget_the_least_recently_used_idle_adapter_is_evicted() -> None:
    residency = _residency(pages=4)  # four rank-8 pages per group
    for key in ("a", "b", "c", "d"):
        residency.acquire(key, {"qkv": 8})
        residency.release(key)
    residency.acquire("a", {"qkv": 8})  # a is used again: b is now the least recently used
    residency.release("a")
    grant = residency.acquire("e", {"qkv": 16})  # needs two pages: b and c go
    assert grant is not None and grant.evicted == ("b", "c")
    assert residency.loaded() == ["d", "a", "e"] and residency.num_evictions == 2
    assert sorted(residency.take_freed_slots()) == [1, 2]


def test_adapters_in_use_pinned_loading_or_protected_are_never_evicted() -> None:
    residency = _residency(slots=8, pages=4)
    residency.acquire("in-use", {"qkv": 8})  # one user, never released
    residency.acquire("pinned", {"qkv": 8}, pin=True)
    residency.acquire("loading", {"qkv": 8}, count_user=False)
    residency.mark_loading("loading")
    residency.acquire("wanted", {"qkv": 8}, count_user=False)  # idle, but a waiting request needs it
    assert residency.acquire("new", {"qkv": 8}, protected=frozenset({"wanted"})) is None
    assert residency.loaded() == ["in-use", "pinned", "loading", "wanted"]
    assert residency.acquire("new", {"qkv": 8}) is not None  # unprotected, "wanted" may go
    assert "wanted" not in residency.loaded()


def test_an_adapter_larger_than_the_free_pages_of_a_group_waits_without_evicting_anything() -> None:
    residency = _residency(pages=4)
    residency.acquire("small", {"qkv": 8})
    residency.release("small")
    assert residency.acquire("huge", {"qkv": 64}) is None  # 8 pages > 4: impossible
    assert residency.loaded() == ["small"] and residency.num_evictions == 0
    assert not residency.can_ever_place("huge", {"qkv": 64})


def _seq(adapter: str) -> Sequence:
    return Sequence(
        next(_ids), list(range(4)), 4, 8, SamplingParams(), adapter_id=adapter, adapter_ranks={"qkv": 8}
    )


def test_a_cold_adapter_waits_for_room_then_evicts_after_the_starvation_guard() -> None:
    scheduler = Scheduler(
        SchedulerConfig(
            num_kv_blocks=64,
            block_size=4,
            max_batch_prefill_tokens=64,
            max_batch_size=64,
            num_adapter_slots=1,
            adapter_pages=(("qkv", 1),),
            adapter_page_bytes=(("qkv", 1000),),
        )
    )
    hot = [_seq("hot")]
    cold = _seq("cold")
    scheduler.add(hot[0])
    batch = scheduler.schedule()
    assert list(batch.adapter_loads) == ["hot"]
    scheduler.adapter_loaded("hot")
    scheduler.add(cold)
    steps = 0
    while cold.status is SequenceStatus.WAITING:
        for seq in list(scheduler.running):  # every admitted request finishes at once...
            scheduler.finish(seq)
        for _ in range(20):  # ...and more keep coming for the hot adapter: its queue never drains
            hot.append(_seq("hot"))
            scheduler.add(hot[-1])
        batch = scheduler.schedule()
        for key in batch.adapter_loads:
            scheduler.adapter_loaded(key)
        steps += 1
        if "cold" in batch.adapter_loads:
            assert steps >= STARVATION_STEPS - 1  # "hot" was protected while its requests waited
            break
    else:
        pytest.fail("the cold adapter was admitted without being loaded")
    assert steps < STARVATION_STEPS + 3 and any(s.status is SequenceStatus.WAITING for s in hot)
