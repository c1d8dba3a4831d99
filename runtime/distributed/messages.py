"""What rank 0 broadcasts to the workers: one `StepMessage` per step (or heartbeat), nothing else.

A step's rows carry only what the model runner turns into tensors (the tokens computed this step,
their first position, the block table, the adapter slot), never a sequence's whole history. The
adapter writes, activations and slot clears decided on rank 0 since the last message travel with
it, in order, so every shard applies them before the step that may use them and holds the same
adapters in the same slots and pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafleet.runtime.adapters.loader import AdapterWeights
from lorafleet.runtime.adapters.residency import Residence
from lorafleet.runtime.engine.scheduler import ScheduledBatch, ScheduledSeq
from lorafleet.runtime.engine.sequence import Sequence
from lorafleet.runtime.types import SamplingParams


@dataclass(frozen=True)
class WritePages:
    residence: Residence
    weights: AdapterWeights  # host tensors of the whole adapter; each shard cuts its own slices


@dataclass(frozen=True)
class Activate:
    slot: int


@dataclass(frozen=True)
class ClearSlots:
    slots: tuple[int, ...]


AdapterOp = WritePages | Activate | ClearSlots


@dataclass(frozen=True)
class StepRow:
    seq_id: int
    start: int  # position of the first token computed this step (the sequence's num_computed)
    token_ids: tuple[int, ...]  # the tokens computed this step
    num_prompt_tokens: int
    block_table: tuple[int, ...]
    adapter_slot: int  # -1: the base model


@dataclass(frozen=True)
class StepMessage:
    ops: tuple[AdapterOp, ...]
    rows: tuple[StepRow, ...] | None  # None: a heartbeat (ops only, no forward)
    stop: bool = False  # rank 0 is shutting down: workers exit


def step_rows(batch: ScheduledBatch) -> tuple[StepRow, ...]:
    rows = []
    for item in batch.items:
        seq, start = item.seq, item.seq.num_computed
        rows.append(StepRow(
            seq.seq_id, start, tuple(seq.token_ids[start : start + item.num_tokens]), seq.num_prompt_tokens,
            tuple(seq.block_table), seq.adapter_slot if seq.adapter_id is not None else -1,
        ))
    return tuple(rows)


def rebuild_batch(rows: tuple[StepRow, ...]) -> ScheduledBatch:
    """The batch a worker's model runner executes: sequences holding only this step's tokens
    (at their positions; earlier positions are in the KV cache and never read)."""
    items = []
    for row in rows:
        n = len(row.token_ids)
        seq = Sequence(
            row.seq_id, [0] * row.start + list(row.token_ids), row.num_prompt_tokens, 0, SamplingParams(),
            adapter_id=None if row.adapter_slot < 0 else "shard", num_computed=row.start,
            block_table=list(row.block_table), adapter_slot=row.adapter_slot,
        )
        items.append(ScheduledSeq(seq, n))
    return ScheduledBatch(items)
