"""A request as the scheduler sees it: tokens, how many are in the KV cache, its block table."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from lorafleet.runtime.types import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One request's decoding state. Owned by the scheduler; the block table by the block manager."""

    seq_id: int
    token_ids: list[int]  # prompt, then generated tokens
    num_prompt_tokens: int
    max_new_tokens: int
    params: SamplingParams
    adapter_id: str | None = None  # the adapter version's key (name@digest), None = the base model
    adapter_ranks: dict[str, int] = field(default_factory=dict)  # its rank per paged projection group
    generator: torch.Generator | None = None  # None = greedy
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed: int = 0  # tokens whose keys/values are in the cache
    block_table: list[int] = field(default_factory=list)
    adapter_slot: int = -1  # valid while RUNNING with an adapter
    num_preemptions: int = 0
    arrival_step: int = 0  # the scheduler's step count when it was queued (starvation guard)
    output: Any = None  # the engine's per-request output state (opaque to the scheduler)
    # Prefix cache: what the keys/values depend on besides the tokens (the adapter's content digest,
    # or the base model's); None = this sequence neither reuses nor offers cached blocks.
    cache_identity: bytes | None = None
    block_hashes: list[bytes] = field(default_factory=list)  # hash chain of its full blocks (memo)
    num_named_blocks: int = 0  # leading blocks of block_table already entered in the cache

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed
