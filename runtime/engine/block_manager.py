"""Bookkeeping of the paged KV pool: which blocks are free, which belong to which sequence.

Holds no tensors: the pool itself belongs to the model runner. A sequence's `block_table` lists
its blocks in order; token `i` lives in block `block_table[i // block_size]` at offset
`i % block_size`.
"""

from __future__ import annotations

from collections import deque

from lorafleet.runtime.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks `seq` must gain to hold `num_new_tokens` more computed tokens."""
        total = seq.num_computed + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grows `seq.block_table` so `num_new_tokens` more tokens fit; the caller checked capacity."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"KV pool exhausted: need {needed} blocks, {len(self._free)} free")
        seq.block_table.extend(self._free.popleft() for _ in range(needed))

    def free(self, seq: Sequence) -> None:
        """Returns every block of `seq` to the pool (on finish, abort or preemption)."""
        self._free.extend(seq.block_table)
        seq.block_table = []
