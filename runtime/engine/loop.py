"""The engine's background loop: take commands, schedule, run the model, sample, emit events.

Runs on the engine's one loop thread; everything it touches (scheduler, block manager, adapter
slots, model runner) is touched by no other thread.
"""

from __future__ import annotations

import logging
import queue
from typing import TYPE_CHECKING

from lorafleet.runtime.engine.scheduler import ScheduledBatch
from lorafleet.runtime.engine.sequence import Sequence, SequenceStatus
from lorafleet.runtime.engine.types import GenerationError, TokenEvent
from lorafleet.runtime.layers.sampler import SampleRequest, sample

if TYPE_CHECKING:
    from lorafleet.runtime.engine.llm_engine import Engine

logger = logging.getLogger(__name__)


def run_loop(engine: Engine) -> None:
    while not engine._stopping.is_set():
        _drain_inbox(engine, block=not engine.scheduler.has_work())
        _snapshot(engine)
        if engine._stopping.is_set() or not engine.scheduler.has_work():
            continue
        batch = engine.scheduler.schedule()
        try:
            if batch.is_empty:
                _fail_unschedulable(engine)
            else:
                _step(engine, batch)
        except Exception as e:  # a bug or device error: fail this batch, keep serving
            logger.exception("engine step failed")
            for item in batch.items:
                _fail(engine, item.seq, GenerationError(f"generation failed: {e}"))
        _snapshot(engine)
    for seq in list(engine.scheduler.running) + _drain_waiting(engine):
        _fail(engine, seq, GenerationError("the engine shut down before the request finished"))
    _snapshot(engine)


def _drain_inbox(engine: Engine, block: bool) -> None:
    try:
        command = engine._inbox.get() if block else engine._inbox.get_nowait()
        while True:
            kind, seq = command
            if kind == "add":
                engine.scheduler.add(seq)
            elif kind == "abort" and seq.status is not SequenceStatus.FINISHED:
                engine.scheduler.remove(seq)  # frees its KV blocks and adapter slot use
            command = engine._inbox.get_nowait()
    except queue.Empty:
        pass


def _drain_waiting(engine: Engine) -> list[Sequence]:
    while True:  # requests submitted while shutting down fail too
        try:
            kind, seq = engine._inbox.get_nowait()
        except queue.Empty:
            break
        if kind == "add":
            engine.scheduler.add(seq)
    return engine.scheduler.drain_waiting()


def _step(engine: Engine, batch: ScheduledBatch) -> None:
    for adapter_id, slot in batch.adapter_loads.items():
        try:
            engine.runner.set_adapter(slot, engine.store.get(adapter_id))
        except Exception as e:  # e.g. the files vanished since validation: fail only its requests
            users = [item.seq for item in batch.items if item.seq.adapter_id == adapter_id]
            for seq in users + [s for s in engine.scheduler.running if s.adapter_id == adapter_id]:
                if seq.status is not SequenceStatus.FINISHED:
                    _fail(engine, seq, GenerationError(f"adapter {adapter_id!r} failed to load: {e}"))
            engine.adapter_slots.discard(adapter_id)
    batch.items = [item for item in batch.items if item.seq.status is SequenceStatus.RUNNING]
    if not batch.items:
        return
    wants = {
        item.seq.seq_id
        for item in batch.items
        if item.seq.output.request.decoder_input_details
        and item.seq.num_computed < item.seq.num_prompt_tokens
    }
    out = engine.runner.execute(batch, wants)
    for item in batch.items:
        item.seq.num_computed += item.num_tokens
    by_id = {item.seq.seq_id: item.seq for item in batch.items}
    for seq_id, (start, logits) in out.prompt_logits.items():
        by_id[seq_id].output.add_prompt_logits(start, logits)
    if not out.sample_seqs:
        return
    rows = [SampleRequest(s.params, s.token_ids, s.generator) for s in out.sample_seqs]
    events = []
    for seq, choice in zip(out.sample_seqs, sample(out.sample_logits, rows), strict=True):
        seq.token_ids.append(choice.token_id)
        event = seq.output.add_token(choice, engine.eos_token_ids)
        engine._generated_tokens += 1
        if event.finish_reason is not None:
            engine.scheduler.remove(seq)
        events.append((seq, event))
    _snapshot(engine)  # before the events go out: a caller woken by the last one sees the new state
    for seq, event in events:
        _emit(engine, seq, event)


def _emit(engine: Engine, seq: Sequence, event: TokenEvent) -> None:
    try:
        seq.output.sink(event)
    except Exception:  # the consumer is gone (closed event loop): cancel the request
        logger.warning("dropping request %s: its consumer is gone", seq.seq_id)
        if seq.status is not SequenceStatus.FINISHED:
            engine.scheduler.remove(seq)


def _fail(engine: Engine, seq: Sequence, error: GenerationError) -> None:
    if seq.status is not SequenceStatus.FINISHED:
        engine.scheduler.remove(seq)
    try:
        seq.output.sink(error)
    except Exception:
        logger.warning("request %s failed and its consumer is gone", seq.seq_id)


def _fail_unschedulable(engine: Engine) -> None:
    # Nothing runs and nothing could be admitted: the head of the queue needs an adapter slot
    # that pinned adapters hold for good. Fail it rather than spin.
    if engine.scheduler.running:
        return
    head = engine.scheduler.next_waiting()
    if head is not None:
        _fail(
            engine,
            head,
            GenerationError(
                f"adapter {head.adapter_id!r} cannot be placed: every adapter slot is pinned "
                f"(max_loaded_adapters={engine.config.max_loaded_adapters})"
            ),
        )


def _snapshot(engine: Engine) -> None:
    # One tuple, replaced at once: `Engine.stats()` reads queue, batch and free blocks from the
    # same moment, so a caller that sees the blocks of an aborted request free also sees it gone
    # from the batch.
    scheduler = engine.scheduler
    engine._snapshot = (scheduler.num_waiting, len(scheduler.running), engine.block_manager.num_free_blocks)
