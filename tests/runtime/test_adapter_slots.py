"""Adapter slots: LRU reuse, never evicting an adapter in use, pinned adapters stay."""

from __future__ import annotations

import pytest
from lorafleet.runtime.adapters.slots import AdapterSlots


def test_first_use_loads_and_later_uses_share_the_slot() -> None:
    slots = AdapterSlots(2)
    first = slots.acquire("a")
    again = slots.acquire("a")
    assert first is not None and first.is_new and again is not None and not again.is_new
    assert first.slot == again.slot and slots.num_loads == 1


def test_least_recently_used_idle_adapter_is_evicted() -> None:
    slots = AdapterSlots(2)
    slots.acquire("a"), slots.acquire("b")
    slots.release("a"), slots.release("b")
    slots.acquire("a")  # a is now the most recent
    slots.release("a")
    grant = slots.acquire("c")
    assert grant is not None and grant.evicted == "b" and slots.loaded() == ["a", "c"]
    assert slots.num_evictions == 1


def test_adapter_in_use_is_never_evicted() -> None:
    slots = AdapterSlots(1)
    slots.acquire("a")
    assert slots.acquire("b") is None
    assert slots.loaded() == ["a"]
    slots.release("a")
    assert slots.acquire("b") is not None


def test_pinned_adapter_is_never_evicted_even_when_idle() -> None:
    slots = AdapterSlots(2)
    slots.acquire("pinned", pin=True)
    slots.acquire("x")
    slots.release("x")
    grant = slots.acquire("y")
    assert grant is not None and grant.evicted == "x"
    slots.release("y")
    assert "pinned" in slots.loaded()


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        AdapterSlots(1).release("a")


def test_an_adapter_that_can_never_get_a_slot_is_known_up_front() -> None:
    slots = AdapterSlots(1)
    slots.acquire("pinned", pin=True)
    assert slots.can_ever_place("pinned") and not slots.can_ever_place("other")
