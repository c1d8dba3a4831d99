"""Bookkeeping of the paged KV pool: free blocks, each sequence's blocks, and the prefix cache.

Holds no tensors: the pool itself belongs to the model runner. A sequence's `block_table` lists
its blocks in order; token `i` lives in block `block_table[i // block_size]` at offset
`i % block_size`.

**Prefix cache** (LoRA-aware). Every *full* block a sequence computed is named by a hash chain:
`hash(previous block's hash, the sequence's cache identity, this block's tokens)`, where the
identity is the adapter's content digest (or the base model's), so a block computed with one
adapter is never reused for another adapter, the base, or a replaced version of the same adapter
name. A new sequence first adopts the cached blocks of its longest hashed prefix (reference
counted: a block may belong to many sequences) and computes only the rest. Blocks whose last user
finished stay cached and are evicted least-recently-freed first, only when no never-used block is
left. Shared blocks are never written: a cached block is full, a sequence writes only positions
at or after its `num_computed`, and adoption always leaves at least the last prompt token to
compute (its logits start the output), so that token's block is the sequence's own. (That is why
no copy-on-write is needed: the only writes would go to blocks nobody shares.)
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque

from lorafleet.runtime.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = False) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._free: deque[int] = deque(range(num_blocks))  # never used, or evicted
        self._ref_count = [0] * num_blocks
        self._cached: OrderedDict[int, None] = OrderedDict()  # unused but still cached, oldest first
        self._block_of: dict[bytes, int] = {}  # hash -> block holding those tokens' keys/values
        self._hash_of: dict[int, bytes] = {}  # block -> its hash

    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation can take: never used ones plus cached ones nobody uses."""
        return len(self._free) + len(self._cached)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._hash_of)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks `seq` must gain to hold `num_new_tokens` more computed tokens."""
        total = seq.num_computed + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Grows `seq.block_table` so `num_new_tokens` more tokens fit; the caller checked capacity."""
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"KV pool exhausted: need {needed} blocks, {self.num_free_blocks} free")
        for _ in range(needed):
            block = self._take()
            self._ref_count[block] = 1
            seq.block_table.append(block)

    def free(self, seq: Sequence) -> None:
        """Releases every block of `seq` (on finish, abort or preemption); cached ones stay cached."""
        for block in seq.block_table:
            self._ref_count[block] -= 1
            if self._ref_count[block] == 0:
                if block in self._hash_of:
                    self._cached[block] = None  # reusable by a later prefix until evicted
                else:
                    self._free.append(block)
        seq.block_table = []
        seq.num_named_blocks = 0

    # --- prefix cache ----------------------------------------------------------------------

    def adopt_cached_prefix(self, seq: Sequence) -> tuple[int, int]:
        """For a sequence with nothing computed: takes the cached blocks of its longest cached
        prefix (never its last token) and marks those tokens computed.

        Returns (tokens looked up, tokens adopted); both 0 when caching is off for it."""
        assert seq.num_computed == 0 and not seq.block_table
        if not self.enable_prefix_caching or seq.cache_identity is None:
            return 0, 0
        num_full = (seq.num_tokens - 1) // self.block_size  # keep >= 1 token to compute
        hashes = self._chain(seq, num_full)
        for block_hash in hashes:
            block = self._block_of.get(block_hash)
            if block is None:
                break
            if self._ref_count[block] == 0:
                del self._cached[block]
            self._ref_count[block] += 1
            seq.block_table.append(block)
        adopted = len(seq.block_table) * self.block_size
        seq.num_computed = adopted
        seq.num_named_blocks = len(seq.block_table)
        return num_full * self.block_size, adopted

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Names the blocks `seq` has completed (all their tokens computed), so others can reuse them."""
        if not self.enable_prefix_caching or seq.cache_identity is None:
            return
        num_full = min(seq.num_computed // self.block_size, len(seq.block_table))
        if num_full <= seq.num_named_blocks:
            return
        hashes = self._chain(seq, num_full)
        for index in range(seq.num_named_blocks, num_full):
            block, block_hash = seq.block_table[index], hashes[index]
            if block not in self._hash_of and block_hash not in self._block_of:
                self._block_of[block_hash] = block  # (the same tokens computed twice: keep the first)
                self._hash_of[block] = block_hash
        seq.num_named_blocks = num_full

    def _chain(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """The hashes of `seq`'s first `num_blocks` full blocks, extending its memo as needed."""
        hashes = seq.block_hashes
        size = self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            digest = hashlib.blake2b(hashes[-1] if hashes else seq.cache_identity or b"", digest_size=16)
            digest.update(b"".join(t.to_bytes(4, "little") for t in seq.token_ids[i * size : (i + 1) * size]))
            hashes.append(digest.digest())
        return hashes[:num_blocks]

    def _take(self) -> int:
        if self._free:
            return self._free.popleft()
        block, _ = self._cached.popitem(last=False)  # evict the least recently freed cached block
        del self._block_of[self._hash_of.pop(block)]
        return block
