"""`EngineLoop`: the engine's one background thread and everything only that thread touches.

It owns the inbox of commands from other threads (add a sequence, abort one, place an adapter
ahead of its requests, retire an adapter version), the stop flag, the scheduler (queues, KV
blocks, adapter residency), the model runner, and the snapshot of counters it publishes for
other threads. One `step()`: schedule -> write newly placed adapters into their slots and pages
-> run the model -> sample -> let each request's output decide whether it ended ->
`scheduler.postprocess` -> send the events.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, replace
from typing import Any

import torch
from lorafleet.runtime.adapters import AdapterStore, Residence
from lorafleet.runtime.engine.adapter_loader import AdapterLoader
from lorafleet.runtime.engine.model_runner import AdapterWrite, ModelRunner
from lorafleet.runtime.engine.scheduler import SampledToken, ScheduledBatch, Scheduler, SchedulerSnapshot
from lorafleet.runtime.engine.sequence import Sequence
from lorafleet.runtime.errors import GenerationError
from lorafleet.runtime.layers.sampler import SampleRequest, sample
from lorafleet.runtime.types import TokenEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopSnapshot:
    """Counters published by the loop after every change, read by any thread (`Engine.stats`)."""

    scheduler: SchedulerSnapshot
    generated_tokens: int = 0


class EngineLoop:
    def __init__(self, scheduler: Scheduler, runner: ModelRunner, store: AdapterStore) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.store = store
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._generated_tokens = 0
        self.loader = AdapterLoader(runner, store, self._loaded)
        # Replaced whole (never mutated) so a reader sees queue, batch and free blocks of one moment.
        self.snapshot = LoopSnapshot(scheduler.snapshot())

    # --- called from other threads ----------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_queued(self) -> int:
        """Commands not yet taken from the inbox (requests submitted since the last step)."""
        return self._inbox.qsize()

    def start(self) -> None:
        if self.is_running:
            return
        self._stopping.clear()
        self.loader.start()
        self._thread = threading.Thread(target=self._run, name="lorafleet-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the thread; requests still queued or running fail with `GenerationError`."""
        if self._thread is None:
            return
        self._stopping.set()
        self._inbox.put(("wake", None))
        self._thread.join()
        self._thread = None
        self.loader.stop()
        self._fail_all("the engine shut down before the request finished")  # inbox stragglers too

    def submit(self, seq: Sequence) -> None:
        self._inbox.put(("add", seq))

    def abort(self, seq: Sequence) -> None:
        self._inbox.put(("abort", seq))

    def prefetch(self, key: str, ranks: dict[str, int]) -> None:
        """Places adapter version `key` on the device ahead of its first request, if it fits."""
        self._inbox.put(("prefetch", (key, ranks)))

    def retire(self, key: str) -> None:
        """Adapter version `key` is no longer served: free it once its running requests end."""
        self._inbox.put(("retire", key))

    # --- before start (the thread is not running yet) ---------------------------------------

    def pin(self, key: str, ranks: dict[str, int]) -> None:
        """Places adapter version `key` on the device for good (the preloaded adapters)."""
        assert not self.is_running, "pin adapters before the loop starts"
        residence = self.scheduler.pin(key, ranks)
        self.runner.clear_slots(self.scheduler.adapters.take_freed_slots())
        self.runner.write_adapter(residence, self.store.weights(key))
        self._publish()

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        if self.runner.device.type == "cuda":
            torch.cuda.set_device(self.runner.device)  # this thread's kernels go to the model's device
        idle = True
        while not self._stopping.is_set():
            # Block when there is nothing to run: a new request, an abort or a finished adapter
            # load (they all come through the inbox) is what can change that.
            self._drain_inbox(block=idle or not self.scheduler.has_work())
            self._publish()
            if self._stopping.is_set() or not self.scheduler.has_work():
                idle = True
                continue
            idle = not self.step()
            self._publish()

    def step(self) -> bool:
        """Schedules and runs one batch; a failure fails that batch's requests, not the loop.
        Returns whether anything ran."""
        batch = self.scheduler.schedule()
        self._place_adapters(batch)
        if batch.is_empty:
            stuck = self.scheduler.next_unplaceable()
            if stuck is not None:
                self._fail(stuck, GenerationError(
                    f"adapter {stuck.adapter_id!r} cannot be placed: every adapter slot is pinned "
                    f"(max_loaded_adapters={self.scheduler.adapters.num_slots})"
                ))
            return False
        try:
            self._run_batch(batch)
        except Exception as e:  # a bug or device error: fail this batch, keep serving
            logger.exception("engine step failed")
            for item in batch.items:
                self._fail(item.seq, GenerationError(f"generation failed: {e}"))
        return True

    def _place_adapters(self, batch: ScheduledBatch) -> None:
        """Clears vacated slots and hands newly placed adapters to the loader thread."""
        self.runner.clear_slots(self.scheduler.adapters.take_freed_slots())
        for key, residence in batch.adapter_loads.items():
            self.loader.load(key, residence)

    def _loaded(
        self, key: str, residence: Residence, written: AdapterWrite | None, error: BaseException | None
    ) -> None:
        """The loader's report (on its thread): handled by the loop, through the inbox."""
        self._inbox.put(("loaded", (key, residence, written, error)))

    def _activate(
        self, key: str, residence: Residence, written: AdapterWrite | None, error: BaseException | None
    ) -> None:
        if self.scheduler.adapters.residence(key) is not residence:
            return  # retired and freed while it loaded: nothing points at it
        if written is None:  # e.g. the files vanished since validation: fail only its requests
            failure = GenerationError(f"adapter {key.rpartition('@')[0][:64]!r} failed to load: {error}")
            for seq in self.scheduler.drop_adapter(key):
                self._fail(seq, failure)
        else:
            self.runner.activate(residence, written)
            self.scheduler.adapter_loaded(key)
        self.runner.clear_slots(self.scheduler.adapters.take_freed_slots())

    def _run_batch(self, batch: ScheduledBatch) -> None:
        wants = {  # sequences whose prompt log-probs were asked for and are still being prefilled
            item.seq.seq_id
            for item in batch.items
            if item.seq.output.request.decoder_input_details
            and item.seq.num_computed < item.seq.num_prompt_tokens
        }
        out = self.runner.execute(batch, wants)
        by_id = {item.seq.seq_id: item.seq for item in batch.items}
        for seq_id, (start, logits) in out.prompt_logits.items():
            by_id[seq_id].output.add_prompt_logits(start, logits)
        rows = [SampleRequest(s.params, s.token_ids, s.generator) for s in out.sample_seqs]
        choices = sample(out.sample_logits, rows) if rows else []
        events = [seq.output.add_token(choice) for seq, choice in zip(out.sample_seqs, choices, strict=True)]
        sampled = [
            SampledToken(seq, choice.token_id, event.finish_reason is not None)
            for seq, choice, event in zip(out.sample_seqs, choices, events, strict=True)
        ]
        self.scheduler.postprocess(batch, sampled)
        self._generated_tokens += len(sampled)
        self._publish()  # before the events go out: a caller woken by the last one sees the new state
        for seq, event in zip(out.sample_seqs, events, strict=True):
            self._emit(seq, event)

    def _drain_inbox(self, block: bool) -> None:
        try:
            kind, payload = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                self._command(kind, payload)
                kind, payload = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _command(self, kind: str, payload: Any) -> None:
        if kind == "add":
            self.scheduler.add(payload)
        elif kind == "abort":
            self.scheduler.finish(payload)  # frees its KV blocks and adapter use
        elif kind == "retire":
            self.scheduler.retire(payload)
            self.runner.clear_slots(self.scheduler.adapters.take_freed_slots())
        elif kind == "prefetch":
            key, ranks = payload
            residence = self.scheduler.prefetch(key, ranks)
            self.runner.clear_slots(self.scheduler.adapters.take_freed_slots())
            if residence is not None:
                self.loader.load(key, residence)
        elif kind == "loaded":
            self._activate(*payload)

    def _emit(self, seq: Sequence, event: TokenEvent) -> None:
        try:
            seq.output.sink(event)
        except Exception:  # the consumer is gone (closed event loop): cancel the request
            logger.warning("dropping request %s: its consumer is gone", seq.seq_id)
            self.scheduler.finish(seq)

    def _fail(self, seq: Sequence, error: GenerationError) -> None:
        self.scheduler.finish(seq)
        try:
            seq.output.sink(error)
        except Exception:
            logger.warning("request %s failed and its consumer is gone", seq.seq_id)

    def _fail_all(self, message: str) -> None:
        self._drain_inbox(block=False)  # requests submitted while shutting down fail too
        for seq in self.scheduler.drain():
            self._fail(seq, GenerationError(message))
        self._publish()

    def _publish(self) -> None:
        self.snapshot = replace(
            self.snapshot, scheduler=self.scheduler.snapshot(), generated_tokens=self._generated_tokens
        )
