"""Which adapters are resident on the device: their slot, their pages, their users (no tensors).

Owned by the scheduler (only the engine loop's thread touches it; other threads read the
scheduler's published snapshot). An adapter needs one slot (a row of the kernels' page tables)
and, in each projection group it targets, `ceil(rank / PAGE_RANK)` pages of that group's pool:
its real size, never padded to the largest rank. Slots and pages are handed out on first use;
idle adapters (no running sequence uses them) are evicted least-recently-used when an adapter
needs room, never one that is in use or pinned (preloaded), and never one in `protected` (the
scheduler protects adapters that waiting requests still need, so a new adapter cannot make them
thrash). Several resident versions of one adapter name can coexist (a replaced adapter keeps its
slot until its last running request finishes). A newly placed adapter is *loading* until its
weights are written (by the engine's loader thread, while the batch keeps decoding): it cannot
be evicted then, and its requests are admitted once it is *ready*.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass

from lorafleet.kernels import PAGE_RANK, pages_for_rank


@dataclass(frozen=True)
class Residence:
    """Where one adapter lives: its slot and, per group it targets, its pages in rank order."""

    slot: int
    pages: Mapping[str, tuple[int, ...]]
    ranks: Mapping[str, int]  # per group it targets: its largest rank there
    num_bytes: int


@dataclass(frozen=True)
class Grant:
    residence: Residence
    is_new: bool  # True: the caller must write the adapter's weights into the residence
    evicted: tuple[str, ...] = ()


class AdapterResidency:
    def __init__(
        self, num_slots: int, pages_per_group: Mapping[str, int], page_bytes: Mapping[str, int]
    ) -> None:
        self.num_slots = num_slots
        self.pages_per_group = dict(pages_per_group)
        self.page_bytes = dict(page_bytes)
        self._resident: OrderedDict[str, Residence] = OrderedDict()  # LRU order: oldest first
        self._users: Counter[str] = Counter()
        self._loading: set[str] = set()  # placed, weights still being written
        self.pinned: set[str] = set()
        self._free_slots = list(range(num_slots))
        self._free_pages = {group: deque(range(count)) for group, count in self.pages_per_group.items()}
        self.num_loads = 0
        self.num_evictions = 0
        self.freed_slots: list[int] = []  # slots vacated since the model runner last cleared them

    def take_freed_slots(self) -> list[int]:
        """Slots vacated since the last call (the runner clears their page-table rows)."""
        freed, self.freed_slots = self.freed_slots, []
        return freed

    # --- reading ---------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        return list(self._resident)

    def residence(self, key: str) -> Residence | None:
        return self._resident.get(key)

    def users(self, key: str) -> int:
        return self._users[key]

    def is_ready(self, key: str) -> bool:
        """Resident with its weights written: its requests can run."""
        return key in self._resident and key not in self._loading

    def is_loading(self, key: str) -> bool:
        return key in self._loading

    def mark_loading(self, key: str) -> None:
        self._loading.add(key)

    def mark_ready(self, key: str) -> None:
        self._loading.discard(key)

    @property
    def bytes_total(self) -> int:
        return sum(self.pages_per_group[g] * self.page_bytes.get(g, 0) for g in self.pages_per_group)

    @property
    def bytes_used(self) -> int:
        return sum(r.num_bytes for r in self._resident.values())

    def footprint_bytes(self, ranks: Mapping[str, int]) -> int:
        """Bytes an adapter with these per-group ranks occupies once resident."""
        return sum(pages_for_rank(rank, PAGE_RANK) * self.page_bytes.get(g, 0) for g, rank in ranks.items())

    def can_ever_place(self, key: str, ranks: Mapping[str, int]) -> bool:
        """False when the pinned adapters leave no slot, or not enough pages, for it for good."""
        if key in self.pinned:
            return True
        if len(self.pinned) >= self.num_slots:
            return False
        for group, rank in ranks.items():
            pinned_pages = sum(len(self._resident[k].pages.get(group, ())) for k in self.pinned)
            if pages_for_rank(rank) > self.pages_per_group.get(group, 0) - pinned_pages:
                return False
        return True

    # --- changing --------------------------------------------------------------------------

    def acquire(
        self,
        key: str,
        ranks: Mapping[str, int],
        *,
        pin: bool = False,
        count_user: bool = True,
        protected: frozenset[str] = frozenset(),
    ) -> Grant | None:
        """A residence for one more user of `key` (placing it if needed), or None when it does
        not fit without evicting an adapter in use, pinned or protected."""
        if key in self._resident:
            self._resident.move_to_end(key)
            grant = Grant(self._resident[key], is_new=False)
        else:
            victims = self._victims(ranks, protected | {key})
            if victims is None:
                return None
            for victim in victims:
                self._evict(victim)
            residence = self._place(key, ranks)
            self.num_loads += 1
            grant = Grant(residence, is_new=True, evicted=tuple(victims))
        if pin:
            self.pinned.add(key)
        elif count_user:
            self._users[key] += 1
        return grant

    def release(self, key: str) -> None:
        """One user of `key` is done (finished, aborted or preempted)."""
        if self._users[key] <= 0:
            raise RuntimeError(f"release of adapter {key!r} without a matching acquire")
        self._users[key] -= 1

    def discard(self, key: str) -> None:
        """Frees `key`'s slot and pages at once (its weights could not be written, or it was
        unloaded and has no user left); a no-op for an adapter that is not resident."""
        if key in self._resident:
            self._evict(key, counted=False)
        self._users.pop(key, None)
        self._loading.discard(key)
        self.pinned.discard(key)

    def _victims(self, ranks: Mapping[str, int], keep: frozenset[str]) -> list[str] | None:
        """Idle adapters to evict, least recently used first, so that `ranks` fits; None if impossible."""
        free_slots = len(self._free_slots)
        free_pages = {group: len(pages) for group, pages in self._free_pages.items()}
        needed = {group: pages_for_rank(rank) for group, rank in ranks.items()}
        if any(group not in free_pages for group in needed):
            return None  # a group without a page pool (the model cannot take this adapter)

        def fits() -> bool:
            return free_slots > 0 and all(free_pages[g] >= n for g, n in needed.items())

        victims: list[str] = []
        for key, residence in self._resident.items():
            if fits():
                break
            if self._users[key] or key in self.pinned or key in keep or key in self._loading:
                continue
            victims.append(key)
            free_slots += 1
            for group, pages in residence.pages.items():
                free_pages[group] += len(pages)
        return victims if fits() else None

    def _place(self, key: str, ranks: Mapping[str, int]) -> Residence:
        slot = self._free_slots.pop(0)
        pages = {group: self._take_pages(group, pages_for_rank(rank)) for group, rank in ranks.items()}
        residence = Residence(slot, pages, dict(ranks), self.footprint_bytes(ranks))
        self._resident[key] = residence
        return residence

    def _take_pages(self, group: str, count: int) -> tuple[int, ...]:
        """`count` free pages of `group`, consecutive when the free list has such a run (the CPU
        path then reads the slot's pages as one slice of the pool), else the lowest ones."""
        free = self._free_pages[group]
        ordered = sorted(free)
        for start in range(len(ordered) - count + 1):
            if ordered[start + count - 1] - ordered[start] == count - 1:
                chosen = ordered[start : start + count]
                break
        else:
            chosen = ordered[:count]
        for page in chosen:
            free.remove(page)
        return tuple(chosen)

    def _evict(self, key: str, *, counted: bool = True) -> None:
        residence = self._resident.pop(key)
        self._free_slots.append(residence.slot)
        self.freed_slots.append(residence.slot)
        for group, pages in residence.pages.items():
            self._free_pages[group].extend(pages)
        self.num_evictions += counted
