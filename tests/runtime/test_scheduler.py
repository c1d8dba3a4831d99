"""The scheduler on the CPU without a model: chunking, admission, preemption, fairness."""

from __future__ import annotations

from lorafleet.runtime.engine import SamplingParams
from lorafleet.runtime.engine.scheduler import SampledToken, ScheduledBatch, Scheduler, SchedulerConfig
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus

_ids = iter(range(10**6))


def _seq(prompt: int, adapter: str | None = None) -> Sequence:
    return Sequence(
        seq_id=next(_ids),
        token_ids=list(range(prompt)),
        num_prompt_tokens=prompt,
        max_new_tokens=100,
        params=SamplingParams(),
        adapter_id=adapter,
    )


def _scheduler(
    blocks: int = 64, block_size: int = 4, prefill: int = 32, batch: int = 64, slots: int = 4
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            num_kv_blocks=blocks,
            block_size=block_size,
            max_batch_prefill_tokens=prefill,
            max_batch_size=batch,
            num_adapter_slots=slots,
        )
    )


def _schedule(scheduler: Scheduler) -> ScheduledBatch:
    """`schedule()`, then what the engine's adapter loader does: write the adapters it placed."""
    batch = scheduler.schedule()
    for key in batch.adapter_loads:
        scheduler.adapter_loaded(key)
    return batch


def _run(scheduler: Scheduler, batch: ScheduledBatch) -> list[Sequence]:
    """What the engine loop does after a step: a token is sampled where the prompt is done."""
    sampled = [SampledToken(item.seq, 7, False) for item in batch.items if item.samples]
    return scheduler.postprocess(batch, sampled)


def test_long_prompt_is_prefilled_in_chunks_within_the_token_budget() -> None:
    scheduler = _scheduler(prefill=8)
    seq = _seq(20)
    scheduler.add(seq)
    chunks = []
    while seq.num_generated == 0:
        batch = scheduler.schedule()
        chunks.append(batch.items[0].num_tokens)
        _run(scheduler, batch)
    assert chunks == [8, 8, 4]


def test_new_requests_join_while_others_decode() -> None:
    scheduler = _scheduler()
    first = _seq(4)
    scheduler.add(first)
    _run(scheduler, scheduler.schedule())
    second = _seq(6)
    scheduler.add(second)
    batch = scheduler.schedule()
    assert {(i.seq.seq_id, i.num_tokens) for i in batch.items} == {(first.seq_id, 1), (second.seq_id, 6)}


def test_admission_waits_for_free_blocks() -> None:
    scheduler = _scheduler(blocks=3, block_size=4)
    a, b = _seq(8), _seq(8)
    scheduler.add(a)
    scheduler.add(b)
    batch = scheduler.schedule()
    assert [i.seq for i in batch.items] == [a] and b.status is SequenceStatus.WAITING


def test_running_out_of_blocks_preempts_the_newest_sequence_and_it_resumes_by_recompute() -> None:
    scheduler = _scheduler(blocks=4, block_size=4)
    old, new = _seq(7), _seq(7)
    scheduler.add(old)
    scheduler.add(new)
    _run(scheduler, scheduler.schedule())  # both prefilled: 2 blocks each, pool full
    batch = scheduler.schedule()  # both decode token 8 (fits), then token 9 needs a new block
    _run(scheduler, batch)
    batch = scheduler.schedule()
    assert batch.preempted == [new] and [i.seq for i in batch.items] == [old]
    assert new.num_computed == 0 and new.block_table == [] and new.num_generated == 2
    scheduler.finish(old)
    batch = scheduler.schedule()
    assert [(i.seq, i.num_tokens) for i in batch.items] == [(new, 9)]  # prompt + generated, recomputed


def test_one_adapters_flood_does_not_starve_another_adapter() -> None:
    scheduler = _scheduler(prefill=8, batch=3)
    flood = [_seq(8, "flood") for _ in range(10)]
    for seq in flood:
        scheduler.add(seq)
    late = _seq(8, "other")
    scheduler.add(late)
    admitted = []
    while late.status is SequenceStatus.WAITING:
        batch = _schedule(scheduler)
        admitted += [i.seq for i in batch.items if i.num_tokens > 1]
        _run(scheduler, batch)
        for seq in list(scheduler.running):
            scheduler.finish(seq)  # finish immediately
    assert admitted.index(late) <= 1  # served right after the flood's first request


def test_adapter_without_a_free_slot_waits_without_blocking_others() -> None:
    scheduler = _scheduler(slots=1)
    a1, b1, base = _seq(4, "a"), _seq(4, "b"), _seq(4)
    for seq in (a1, b1, base):
        scheduler.add(seq)
    batch = _schedule(scheduler)  # a's weights start loading into the one slot; the base runs
    assert [i.seq for i in batch.items] == [base]
    assert set(batch.adapter_loads) == {"a"}  # b waits: the slot is taken (by a loading adapter)
    batch = _schedule(scheduler)  # a is ready: admitted
    assert a1 in [i.seq for i in batch.items] and b1.status is SequenceStatus.WAITING
    scheduler.finish(a1)
    _run(scheduler, batch)
    batch = _schedule(scheduler)  # a is idle and no request waits for it: evicted for b
    assert {key: r.slot for key, r in batch.adapter_loads.items()} == {"b": 0}
    batch = _schedule(scheduler)
    assert b1 in [i.seq for i in batch.items]


def test_an_adapter_is_admitted_only_once_its_weights_are_written() -> None:
    scheduler = _scheduler()
    seq = _seq(4, "a")
    scheduler.add(seq)
    for _ in range(3):  # the loader has not reported: the request waits, the adapter is not placed twice
        batch = scheduler.schedule()
        assert batch.is_empty and seq.status is SequenceStatus.WAITING
    scheduler.adapter_loaded("a")
    assert [i.seq for i in scheduler.schedule().items] == [seq]


def test_removing_a_sequence_frees_its_blocks_and_adapter_use() -> None:
    scheduler = _scheduler(blocks=8, slots=1)
    seq = _seq(10, "a")
    scheduler.add(seq)
    _schedule(scheduler)
    _schedule(scheduler)
    assert seq.status is SequenceStatus.RUNNING
    scheduler.finish(seq)
    assert scheduler.block_manager.num_free_blocks == 8
    assert scheduler.adapters.acquire("b", {}) is not None  # "a" had no users left
    assert not scheduler.has_work()


def test_postprocess_advances_appends_and_frees_the_sequences_that_finished() -> None:
    scheduler = _scheduler(blocks=8, slots=1)
    done, going = _seq(4, "a"), _seq(4)
    for seq in (done, going):
        scheduler.add(seq)
    _run(scheduler, _schedule(scheduler))  # a's weights load; the base request runs its prompt
    batch = _schedule(scheduler)
    assert [item.seq for item in batch.items] == [going, done]  # decoding `going`, prefilling `done`
    _run(scheduler, batch)
    batch = _schedule(scheduler)
    assert all(item.samples for item in batch.items)
    finished = scheduler.postprocess(batch, [SampledToken(done, 5, True), SampledToken(going, 6, False)])
    assert finished == [done] and done.status is SequenceStatus.FINISHED
    assert going.token_ids[-1] == 6 and going.num_computed == 6 and going.num_generated == 3
    assert scheduler.running == [going]
    assert scheduler.block_manager.num_free_blocks == 8 - len(going.block_table)
    assert scheduler.snapshot().loaded_adapters == ("a",)  # the slot stays loaded, without users
    assert scheduler.adapters.acquire("b", {}) is not None
