"""Which adapter sits in which slot of the stacked LoRA buffers (bookkeeping only, no tensors).

Owned by the scheduler (only the engine loop's thread touches it; other threads read the
scheduler's published snapshot). Slots are handed out on first use and reclaimed
least-recently-used; a slot is never reclaimed while a running sequence uses its adapter
(`acquire`/`release` count users) nor when it is pinned (adapters preloaded at start-up).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class SlotGrant:
    slot: int
    is_new: bool  # True: the caller must write the adapter's weights into `slot`
    evicted: str | None  # adapter that previously held the slot, if any


class AdapterSlots:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # LRU order: oldest first
        self._users: Counter[str] = Counter()
        self.pinned: set[str] = set()
        self._free = list(range(num_slots))
        self.num_loads = 0
        self.num_evictions = 0

    def loaded(self) -> list[str]:
        return list(self._slot_of)

    def can_ever_place(self, adapter_id: str) -> bool:
        """False when every slot is pinned by other adapters (so `adapter_id` would wait forever)."""
        return adapter_id in self.pinned or len(self.pinned) < self.num_slots

    def slot_of(self, adapter_id: str) -> int | None:
        return self._slot_of.get(adapter_id)

    def acquire(self, adapter_id: str, *, pin: bool = False) -> SlotGrant | None:
        """A slot for one more user of `adapter_id`, or None when every slot is busy or pinned."""
        if adapter_id in self._slot_of:
            self._slot_of.move_to_end(adapter_id)
            grant = SlotGrant(self._slot_of[adapter_id], is_new=False, evicted=None)
        else:
            evicted = None
            if self._free:
                slot = self._free.pop(0)
            else:
                evicted = next(
                    (a for a in self._slot_of if not self._users[a] and a not in self.pinned), None
                )
                if evicted is None:
                    return None
                slot = self._slot_of.pop(evicted)
                self.num_evictions += 1
            self._slot_of[adapter_id] = slot
            self.num_loads += 1
            grant = SlotGrant(slot, is_new=True, evicted=evicted)
        if pin:
            self.pinned.add(adapter_id)
        else:
            self._users[adapter_id] += 1
        return grant

    def release(self, adapter_id: str) -> None:
        """One user of `adapter_id` is done (finished, aborted or preempted)."""
        if self._users[adapter_id] <= 0:
            raise RuntimeError(f"release of adapter {adapter_id!r} without a matching acquire")
        self._users[adapter_id] -= 1

    def discard(self, adapter_id: str) -> None:
        """Frees the slot of an adapter whose weights could not be written (it has no users)."""
        slot = self._slot_of.pop(adapter_id, None)
        if slot is not None:
            self._free.append(slot)
        self._users.pop(adapter_id, None)
        self.pinned.discard(adapter_id)
