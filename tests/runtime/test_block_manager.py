"""The block manager hands out whole blocks and gets every one of them back."""

from __future__ import annotations

import pytest
from lorafleet.runtime.engine import SamplingParams
from lorafleet.runtime.engine.block_manager import BlockManager
from lorafleet.runtime.engine.sequence import Sequence


def _seq(n: int) -> Sequence:
    return Sequence(
        seq_id=n, token_ids=list(range(n)), num_prompt_tokens=n, max_new_tokens=4, params=SamplingParams()
    )


def test_allocation_rounds_up_to_whole_blocks_and_grows_only_at_block_boundaries() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    seq = _seq(5)
    assert manager.blocks_needed(seq, 5) == 2
    manager.allocate(seq, 5)
    assert len(seq.block_table) == 2 and manager.num_free_blocks == 6
    seq.num_computed = 5
    assert manager.blocks_needed(seq, 3) == 0  # tokens 6..8 fit in block 2
    assert manager.blocks_needed(seq, 4) == 1


def test_free_returns_every_block_and_blocks_are_never_shared() -> None:
    manager = BlockManager(num_blocks=6, block_size=4)
    a, b = _seq(8), _seq(9)
    manager.allocate(a, 8)
    manager.allocate(b, 9)
    assert not set(a.block_table) & set(b.block_table)
    assert manager.num_free_blocks == 1
    manager.free(a)
    manager.free(b)
    assert manager.num_free_blocks == 6 and a.block_table == [] == b.block_table


def test_allocating_beyond_the_pool_raises_instead_of_overcommitting() -> None:
    manager = BlockManager(num_blocks=2, block_size=4)
    seq = _seq(12)
    assert not manager.can_allocate(seq, 12)
    with pytest.raises(RuntimeError, match="exhausted"):
        manager.allocate(seq, 12)
    assert manager.num_free_blocks == 2
