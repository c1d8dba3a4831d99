"""Continuous batching: decides, before every step, which tokens of which sequences run.

The scheduler owns the waiting and running queues, the KV block manager and the adapter slots;
only the engine loop's thread calls it. Each step:
1. every running sequence gets its next tokens: one for those decoding, the next chunk of the
   prompt (within `max_batch_prefill_tokens`) for those still prefilling; when the KV pool
   cannot hold them, the most recently admitted sequence is preempted (its blocks freed, to be
   recomputed later) until it can;
2. waiting sequences are admitted while prefill budget, free KV blocks, a batch seat and an
   adapter slot are available. Preempted sequences come back first.
After the model ran, `postprocess` advances every sequence by what was computed, appends the
sampled tokens and frees the sequences that finished.

Fairness: waiting requests are queued per adapter (base model included) and admission takes the
head of each adapter's queue in turn (round-robin), so a flood of requests for one adapter
cannot starve another adapter's requests; within an adapter the order is first come, first served.

Adapter memory (docs/runtime.md, "Adapter memory"): an adapter is admitted when it is resident
or fits in free slots and pages, possibly by evicting idle adapters; adapters that waiting
requests still need are protected from eviction (no thrash), so requests whose adapters are
resident are admitted first and a cold adapter waits for room. A cold adapter whose head request
has waited `STARVATION_STEPS` steps lifts that protection (it may then evict an idle adapter that
others wait for), so it cannot wait forever.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from lorafleet.runtime.adapters.residency import AdapterResidency, Residence
from lorafleet.runtime.engine.block_manager import BlockManager
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    num_kv_blocks: int
    block_size: int
    max_batch_prefill_tokens: int
    max_batch_size: int
    num_adapter_slots: int
    enable_prefix_caching: bool = False
    adapter_pages: tuple[tuple[str, int], ...] = ()  # (group, pages in its pool) of the paged groups
    adapter_page_bytes: tuple[tuple[str, int], ...] = ()  # (group, bytes of one page over its layers)


STARVATION_STEPS = 64  # steps a cold adapter's head request waits before protection is lifted


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step, from seq.num_computed

    @property
    def samples(self) -> bool:
        """Whether this step computes the sequence's last known token, so its next one is sampled."""
        return self.seq.num_computed + self.num_tokens == self.seq.num_tokens


@dataclass
class ScheduledBatch:
    items: list[ScheduledSeq] = field(default_factory=list)
    adapter_loads: dict[str, Residence] = field(default_factory=dict)  # adapter key -> where to write it
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.items


@dataclass(frozen=True)
class SampledToken:
    """One sequence's new token; `finished` when its request ends with it (eos, stop, length)."""

    seq: Sequence
    token_id: int
    finished: bool


@dataclass(frozen=True)
class SchedulerSnapshot:
    """The scheduler's counters at one moment, for readers on other threads."""

    num_waiting: int = 0
    num_running: int = 0
    num_free_blocks: int = 0
    num_preemptions: int = 0
    adapter_loads: int = 0
    adapter_evictions: int = 0
    loaded_adapters: tuple[str, ...] = ()  # version keys in device memory, least recently used first
    pinned_adapters: frozenset[str] = frozenset()
    adapter_bytes_used: int = 0  # device bytes the resident adapters occupy (their real size)
    adapter_bytes_total: int = 0  # the device adapter budget
    prefix_cache_query_tokens: int = 0  # prompt tokens looked up in the prefix cache (cumulative)
    prefix_cache_hit_tokens: int = 0  # of which found cached


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.block_manager = BlockManager(
            config.num_kv_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching
        )
        self.adapters = AdapterResidency(
            config.num_adapter_slots, dict(config.adapter_pages), dict(config.adapter_page_bytes)
        )
        self._retired: set[str] = set()  # versions no longer served: freed when their last user ends
        self.num_steps = 0
        self._waiting: OrderedDict[str | None, deque[Sequence]] = OrderedDict()
        self._preempted: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0
        self.num_prefix_query_tokens = 0  # prompt tokens of admitted sequences looked up in the cache
        self.num_prefix_hit_tokens = 0  # of which found there (not recomputed)

    # --- queues -----------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self._preempted) + sum(len(q) for q in self._waiting.values())

    def has_work(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        seq.arrival_step = self.num_steps
        self._waiting.setdefault(seq.adapter_id, deque()).append(seq)

    def finish(self, seq: Sequence) -> None:
        """Takes `seq` out for good (finished, aborted or failed) and frees what it holds."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        elif seq in self._preempted:
            self._preempted.remove(seq)
        elif seq in self._waiting.get(seq.adapter_id, ()):
            self._waiting[seq.adapter_id].remove(seq)
            if not self._waiting[seq.adapter_id]:
                del self._waiting[seq.adapter_id]
        seq.status = SequenceStatus.FINISHED

    def drain(self) -> list[Sequence]:
        """Takes every sequence out (shutdown): running ones, then preempted, then waiting."""
        drained = list(self.running) + list(self._preempted)
        for queue in self._waiting.values():
            drained.extend(queue)
        for seq in drained:
            self.finish(seq)
        return drained

    def snapshot(self) -> SchedulerSnapshot:
        slots = self.adapters
        return SchedulerSnapshot(
            num_waiting=self.num_waiting,
            num_running=len(self.running),
            num_free_blocks=self.block_manager.num_free_blocks,
            num_preemptions=self.num_preemptions,
            adapter_loads=slots.num_loads,
            adapter_evictions=slots.num_evictions,
            loaded_adapters=tuple(slots.loaded()),
            pinned_adapters=frozenset(slots.pinned),
            adapter_bytes_used=slots.bytes_used,
            adapter_bytes_total=slots.bytes_total,
            prefix_cache_query_tokens=self.num_prefix_query_tokens,
            prefix_cache_hit_tokens=self.num_prefix_hit_tokens,
        )

    # --- adapters ---------------------------------------------------------------------------

    def pin(self, key: str, ranks: dict[str, int]) -> Residence:
        """A residence that holds `key` for good (adapters preloaded at start); raises when full."""
        grant = self.adapters.acquire(key, ranks, pin=True)
        if grant is None:
            raise RuntimeError(f"adapter {key!r} does not fit in the adapter memory next to the pinned ones")
        return grant.residence

    def prefetch(
        self, key: str, ranks: dict[str, int], candidate: Sequence | None = None
    ) -> Residence | None:
        """Places `key` ahead of its requests if it fits without evicting anything in use or
        protected (for `candidate`, a waiting request of it); returns the residence to write, now
        *loading* (None: already placed, or no room now)."""
        if self.adapters.residence(key) is not None:
            return None
        grant = self.adapters.acquire(key, ranks, count_user=False, protected=self._protected(candidate))
        if grant is None:
            return None
        self.adapters.mark_loading(key)
        return grant.residence

    def adapter_loaded(self, key: str) -> None:
        """Its weights are written: its requests can be admitted from the next step on (a version
        retired while it loaded is freed instead)."""
        self.adapters.mark_ready(key)
        if key in self._retired and self.adapters.users(key) == 0:
            self._retired.discard(key)
            self.adapters.discard(key)

    def retire(self, key: str) -> None:
        """`key` is no longer served (replaced or unloaded): its memory is freed at once if nobody
        uses it, else when its last running request ends."""
        self.adapters.pinned.discard(key)
        if self.adapters.users(key) == 0 and not self.adapters.is_loading(key):
            self.adapters.discard(key)
        else:  # in use, or its pages are being written: freed when that ends
            self._retired.add(key)

    def drop_adapter(self, key: str) -> list[Sequence]:
        """Frees the residence of an adapter whose weights could not be written, and takes out the
        sequences that wait for it or use it (returned, for the caller to fail)."""
        users = [s for s in self.running if s.adapter_id == key] + list(self._waiting.get(key, ()))
        users += [s for s in self._preempted if s.adapter_id == key]
        for seq in users:
            self.finish(seq)
        self.adapters.discard(key)
        return users

    def next_unplaceable(self) -> Sequence | None:
        """The head of the queue when nothing runs and its adapter can never be admitted (the pinned
        adapters leave it no slot or pages for good, so it would wait forever); else None."""
        if self.running:
            return None
        head = self._next_waiting(set())
        if head is None or head.adapter_id is None:
            return None
        return None if self.adapters.can_ever_place(head.adapter_id, head.adapter_ranks) else head

    # --- a step -----------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        """The next step's work; `adapter_loads` lists adapters placed for waiting requests, whose
        weights the caller writes (off the step) before `adapter_loaded` lets them run."""
        self.num_steps += 1
        batch = ScheduledBatch()
        budget = self._schedule_running(batch)
        if not batch.preempted:
            self._admit(batch, budget)
        self._prefetch_waiting(batch)
        return batch

    def _request_load(self, seq: Sequence, batch: ScheduledBatch) -> None:
        assert seq.adapter_id is not None
        if self.adapters.residence(seq.adapter_id) is None:
            residence = self.prefetch(seq.adapter_id, seq.adapter_ranks, seq)
            if residence is not None:
                batch.adapter_loads[seq.adapter_id] = residence

    def _prefetch_waiting(self, batch: ScheduledBatch) -> None:
        """Places the adapters of the requests at the head of each queue ahead of their admission,
        where they fit without evicting anything needed, so a full batch does not delay their load."""
        heads = [queue[0] for key, queue in self._waiting.items() if queue and key is not None]
        for seq in heads + [s for s in self._preempted if s.adapter_id is not None]:
            self._request_load(seq, batch)

    def postprocess(self, batch: ScheduledBatch, sampled: Iterable[SampledToken]) -> list[Sequence]:
        """Records a step: each item's tokens are now computed, each sampled token is appended,
        and the sequences whose request ended are freed. Returns those finished sequences."""
        for item in batch.items:
            item.seq.num_computed += item.num_tokens
            self.block_manager.cache_full_blocks(item.seq)  # before a finish frees them
        finished = []
        for token in sampled:
            token.seq.token_ids.append(token.token_id)
            if token.finished:
                self.finish(token.seq)
                finished.append(token.seq)
        return finished

    def _schedule_running(self, batch: ScheduledBatch) -> int:
        budget = self.config.max_batch_prefill_tokens
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING:  # preempted earlier in this loop
                continue
            n = seq.num_uncomputed
            if n > 1:  # still prefilling: the next chunk, within budget
                n = min(n, budget)
                if n == 0:
                    continue
            while not self.block_manager.can_allocate(seq, n):
                victim = self.running[-1]
                self._preempt(victim, batch)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.block_manager.allocate(seq, n)
                batch.items.append(ScheduledSeq(seq, n))
                if seq.num_uncomputed > 1:
                    budget -= n
        return budget

    def _admit(self, batch: ScheduledBatch, budget: int) -> None:
        skipped: set[str | None] = set()  # adapters without a free slot this step
        while budget > 0 and len(self.running) < self.config.max_batch_size:
            seq = self._next_waiting(skipped)
            if seq is None:
                return
            queried, hit = self.block_manager.adopt_cached_prefix(seq) if seq.num_computed == 0 else (0, 0)
            n = min(seq.num_uncomputed, budget)
            if not self.block_manager.can_allocate(seq, n):
                self._release_blocks(seq)
                return  # admission by free KV blocks: wait for running sequences to finish
            if seq.adapter_id is not None:
                if not self.adapters.is_ready(seq.adapter_id):  # placed and written first (loader)
                    self._request_load(seq, batch)
                    self._release_blocks(seq)
                    skipped.add(seq.adapter_id)
                    continue
                grant = self.adapters.acquire(seq.adapter_id, seq.adapter_ranks)
                assert grant is not None and not grant.is_new  # resident and ready
                seq.adapter_slot = grant.residence.slot
            self._pop_waiting(seq)
            self.num_prefix_query_tokens += queried
            self.num_prefix_hit_tokens += hit
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self.block_manager.allocate(seq, n)
            batch.items.append(ScheduledSeq(seq, n))
            budget -= n

    def _protected(self, candidate: Sequence | None = None) -> frozenset[str]:
        """Adapters that waiting requests need (not to be evicted for `candidate`'s adapter), unless
        the candidate has waited so long that it may evict them."""
        if candidate is not None and self.num_steps - candidate.arrival_step >= STARVATION_STEPS:
            return frozenset()
        needed = {seq.adapter_id for seq in self._preempted if seq.adapter_id is not None}
        needed.update(key for key, queue in self._waiting.items() if queue and key is not None)
        if candidate is not None:
            needed.discard(candidate.adapter_id)
        return frozenset(needed)

    def _next_waiting(self, skipped: set[str | None]) -> Sequence | None:
        if self._preempted and self._preempted[0].adapter_id not in skipped:
            return self._preempted[0]
        for adapter_id, queue in self._waiting.items():
            if queue and adapter_id not in skipped:
                return queue[0]
        return None

    def _pop_waiting(self, seq: Sequence) -> None:
        if self._preempted and self._preempted[0] is seq:
            self._preempted.popleft()
            return
        queue = self._waiting[seq.adapter_id]
        queue.popleft()
        self._waiting.move_to_end(seq.adapter_id)  # round-robin: this adapter goes to the back
        if not queue:
            del self._waiting[seq.adapter_id]

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        # Recompute: drop the cached keys/values; the tokens (prompt + generated) stay.
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = SequenceStatus.WAITING
        self._preempted.appendleft(seq)
        batch.preempted.append(seq)
        batch.items = [item for item in batch.items if item.seq is not seq]

    def _release_blocks(self, seq: Sequence) -> None:
        """Gives back what admission took before it gave up on `seq` (its adopted cached prefix)."""
        self.block_manager.free(seq)
        seq.num_computed = 0

    def _release(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        if seq.adapter_id is not None and seq.adapter_slot >= 0:
            self.adapters.release(seq.adapter_id)
            seq.adapter_slot = -1
            if seq.adapter_id in self._retired and self.adapters.users(seq.adapter_id) == 0:
                self._retired.discard(seq.adapter_id)
                self.adapters.discard(seq.adapter_id)
