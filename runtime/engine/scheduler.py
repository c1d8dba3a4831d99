"""Continuous batching: decides, before every step, which tokens of which sequences run.

Each step:
1. every running sequence gets its next tokens: one for those decoding, the next chunk of the
   prompt (within `max_batch_prefill_tokens`) for those still prefilling; when the KV pool
   cannot hold them, the most recently admitted sequence is preempted (its blocks freed, to be
   recomputed later) until it can;
2. waiting sequences are admitted while prefill budget, free KV blocks, a batch seat and an
   adapter slot are available. Preempted sequences come back first.

Fairness: waiting requests are queued per adapter (base model included) and admission takes the
head of each adapter's queue in turn (round-robin), so a flood of requests for one adapter
cannot starve another adapter's requests; within an adapter the order is first come, first served.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from lorafleet.runtime.adapters.slots import AdapterSlots, SlotGrant
from lorafleet.runtime.engine.block_manager import BlockManager
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_prefill_tokens: int
    max_batch_size: int


@dataclass(frozen=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step, from seq.num_computed


@dataclass
class ScheduledBatch:
    items: list[ScheduledSeq] = field(default_factory=list)
    adapter_loads: dict[str, int] = field(default_factory=dict)  # adapter id -> slot to fill first
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.items


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, block_manager: BlockManager, adapter_slots: AdapterSlots
    ) -> None:
        self.config = config
        self.block_manager = block_manager
        self.adapter_slots = adapter_slots
        self._waiting: OrderedDict[str | None, deque[Sequence]] = OrderedDict()
        self._preempted: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0

    @property
    def num_waiting(self) -> int:
        return len(self._preempted) + sum(len(q) for q in self._waiting.values())

    def has_work(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self._waiting.setdefault(seq.adapter_id, deque()).append(seq)

    def remove(self, seq: Sequence) -> None:
        """Takes `seq` out for good (finished, aborted or failed) and frees what it holds."""
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

    def drain_waiting(self) -> list[Sequence]:
        """Takes every waiting sequence out (shutdown), preempted ones first."""
        drained = list(self._preempted)
        for queue in self._waiting.values():
            drained.extend(queue)
        self._preempted.clear()
        self._waiting.clear()
        for seq in drained:
            seq.status = SequenceStatus.FINISHED
        return drained

    def next_waiting(self) -> Sequence | None:
        """The sequence admission would consider first (preempted ones, then round-robin)."""
        return self._next_waiting(set())

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self._schedule_running(batch)
        if not batch.preempted:
            self._admit(batch, budget)
        return batch

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
            n = min(seq.num_uncomputed, budget)
            if not self.block_manager.can_allocate(seq, n):
                return  # admission by free KV blocks: wait for running sequences to finish
            if seq.adapter_id is not None:
                grant = self.adapter_slots.acquire(seq.adapter_id)
                if grant is None:
                    skipped.add(seq.adapter_id)
                    continue
                self._bind(seq, grant, batch)
            self._pop_waiting(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self.block_manager.allocate(seq, n)
            batch.items.append(ScheduledSeq(seq, n))
            budget -= n

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

    def _bind(self, seq: Sequence, grant: SlotGrant, batch: ScheduledBatch) -> None:
        seq.adapter_slot = grant.slot
        if grant.is_new:
            batch.adapter_loads[seq.adapter_id] = grant.slot  # type: ignore[index]

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

    def _release(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        if seq.adapter_id is not None and seq.adapter_slot >= 0:
            self.adapter_slots.release(seq.adapter_id)
            seq.adapter_slot = -1
