"""The LoRA-aware prefix cache of the block manager, without a model: sharing, identity, eviction,
and reference counts that always return to zero."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from lorafleet.runtime.engine import SamplingParams
from lorafleet.runtime.engine.block_manager import BlockManager
from lorafleet.runtime.engine.scheduler import SampledToken, Scheduler, SchedulerConfig
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus

_ids = itertools.count()


def _seq(tokens: list[int], identity: bytes | None = b"base", adapter: str | None = None) -> Sequence:
    return Sequence(
        seq_id=next(_ids),
        token_ids=list(tokens),
        num_prompt_tokens=len(tokens),
        max_new_tokens=8,
        params=SamplingParams(),
        adapter_id=adapter,
        cache_identity=identity,
    )


def _compute(manager: BlockManager, seq: Sequence) -> None:
    """What a step does to the books: the whole rest of the prompt computed, its full blocks named."""
    manager.allocate(seq, seq.num_uncomputed)
    seq.num_computed = seq.num_tokens
    manager.cache_full_blocks(seq)


def test_a_second_sequence_adopts_the_full_blocks_of_a_shared_prefix_and_computes_the_rest() -> None:
    manager = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    first = _seq(list(range(10)))  # blocks [0-3] [4-7] full, [8, 9] partial
    _compute(manager, first)
    second = _seq(list(range(8)) + [50, 51, 52])
    assert manager.adopt_cached_prefix(second) == (8, 8)
    assert second.num_computed == 8 and second.block_table == first.block_table[:2]
    manager.allocate(second, second.num_uncomputed)
    assert second.block_table[2] not in first.block_table  # the rest is its own
    manager.free(first)
    manager.free(second)
    assert manager.num_free_blocks == 16


def test_the_last_prompt_token_is_always_computed_even_when_every_block_is_cached() -> None:
    manager = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    _compute(manager, _seq(list(range(8))))
    again = _seq(list(range(8)))
    assert manager.adopt_cached_prefix(again) == (4, 4)  # block 2 holds the last token: recomputed
    assert again.num_uncomputed == 4


def test_blocks_are_not_shared_across_adapters_versions_or_the_base() -> None:
    manager = BlockManager(num_blocks=32, block_size=4, enable_prefix_caching=True)
    prompt = list(range(9))
    _compute(manager, _seq(prompt, b"digest-a", "a"))
    for identity in (b"digest-b", b"base", b"digest-a2"):  # another adapter, the base, a new version
        other = _seq(prompt, identity)
        assert manager.adopt_cached_prefix(other) == (8, 0)
    assert manager.adopt_cached_prefix(_seq(prompt, b"digest-a", "a")) == (8, 8)


def test_cached_blocks_survive_their_sequence_and_are_evicted_least_recently_freed_first() -> None:
    manager = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=True)
    old, new = _seq(list(range(5))), _seq(list(range(100, 105)))
    for seq in (old, new):
        _compute(manager, seq)
    manager.free(old)
    manager.free(new)
    assert manager.num_free_blocks == 4 and manager.num_cached_blocks == 2
    filler = _seq(list(range(200, 209)))  # needs 3 blocks: 2 never-used ones, then evicts `old`'s
    manager.allocate(filler, 9)
    assert manager.adopt_cached_prefix(_seq(list(range(5)))) == (4, 0)
    assert manager.adopt_cached_prefix(_seq(list(range(100, 105)))) == (4, 4)


def test_without_identity_or_with_caching_off_nothing_is_shared() -> None:
    on = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    _compute(on, _seq(list(range(9)), identity=None))
    assert on.num_cached_blocks == 0
    off = BlockManager(num_blocks=8, block_size=4)
    _compute(off, _seq(list(range(9))))
    assert off.adopt_cached_prefix(_seq(list(range(9)))) == (0, 0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "step", "abort", "finish"]), st.integers(0, 7), st.integers(0, 3)),
        max_size=60,
    )
)
def test_reference_counts_return_to_zero_under_preemption_abort_and_finish(ops) -> None:  # type: ignore[no-untyped-def]
    # A small pool (preemption happens), 3 prompt families sharing prefixes, 2 adapter identities.
    scheduler = Scheduler(
        SchedulerConfig(num_kv_blocks=6, block_size=4, max_batch_prefill_tokens=8, max_batch_size=4,
                        num_adapter_slots=2, enable_prefix_caching=True)
    )
    live: list[Sequence] = []
    for op, a, b in ops:
        if op == "add":
            prefix = list(range(b * 3, b * 3 + 6))
            seq = _seq(prefix + [90 + a] * (a % 4 + 1), identity=b"base" if a % 2 else b"digest-x",
                       adapter=None if a % 2 else "x")
            seq.max_new_tokens = 3
            scheduler.add(seq)
            live.append(seq)
        elif op == "step" and scheduler.has_work():
            batch = scheduler.schedule()
            for key in batch.adapter_loads:  # the adapter loader writes them at once
                scheduler.adapter_loaded(key)
            sampled = [SampledToken(i.seq, 7, i.seq.num_generated + 1 >= i.seq.max_new_tokens)
                       for i in batch.items if i.samples]
            scheduler.postprocess(batch, sampled)
        elif op in ("abort", "finish") and live:
            scheduler.finish(live.pop(a % len(live)))
        _check_counts(scheduler)
    for seq in scheduler.drain():
        assert seq.status is SequenceStatus.FINISHED
    _check_counts(scheduler)
    manager = scheduler.block_manager
    assert manager.num_free_blocks == manager.num_blocks
    assert all(count == 0 for count in manager._ref_count)


def _check_counts(scheduler: Scheduler) -> None:
    """Every block's count equals the running sequences holding it; free lists hold count-0 blocks."""
    manager = scheduler.block_manager
    holders = [0] * manager.num_blocks
    for seq in scheduler.running:
        for block in seq.block_table:
            holders[block] += 1
    assert holders == manager._ref_count
    unused = set(manager._free) | set(manager._cached)
    assert unused == {b for b in range(manager.num_blocks) if holders[b] == 0}
    assert not set(manager._free) & set(manager._cached)
