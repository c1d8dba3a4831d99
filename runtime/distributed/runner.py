"""`ShardedRunner`: rank 0's model runner; every step and adapter change also reaches the workers.

The engine loop drives it exactly like a `ModelRunner` (it is one, on shard 0). Adapter changes
(written on the loader thread, activated and cleared on the loop's) are queued in order and sent
with the next step's message; the step is broadcast before shard 0 runs its forward, so all
shards enter the forward's all-reduces together. Sampling stays here: shard 0 holds the whole LM
head. A heartbeat keeps idle workers inside the group's collective timeout.
"""

from __future__ import annotations

import logging
import threading
import time

import torch.distributed as dist
from lorafleet.runtime.adapters.loader import AdapterWeights
from lorafleet.runtime.adapters.residency import Residence
from lorafleet.runtime.distributed.group import HEARTBEAT_SECONDS
from lorafleet.runtime.distributed.messages import (
    Activate,
    AdapterOp,
    ClearSlots,
    StepMessage,
    StepRow,
    WritePages,
    step_rows,
)
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.model_runner import AdapterWrite, ModelRunner, StepOutput
from lorafleet.runtime.engine.scheduler import ScheduledBatch
from lorafleet.runtime.models.decoder import DecoderModel

logger = logging.getLogger(__name__)


class ShardedRunner(ModelRunner):
    def __init__(self, config: EngineConfig, model: DecoderModel) -> None:
        super().__init__(config, model)
        self._ops: list[AdapterOp] = []
        self._ops_lock = threading.Lock()  # the loader thread queues writes while steps run
        self._send_lock = threading.Lock()  # one broadcast (and forward) at a time: steps, heartbeats
        self._last_send = time.monotonic()
        self.broadcast_seconds = 0.0  # time spent sending step messages (benchmarks report it)
        self.heartbeats = 0  # idle messages sent (tests check they keep the shards in step)
        self._closed = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="lorafleet-shard-heartbeat", daemon=True)
        self._heartbeat.start()

    def write_pages(self, residence: Residence, weights: AdapterWeights) -> AdapterWrite:
        written = super().write_pages(residence, weights)
        self._queue(WritePages(residence, weights))
        return written

    def activate(self, residence: Residence, written: AdapterWrite) -> None:
        super().activate(residence, written)
        self._queue(Activate(residence.slot))

    def clear_slots(self, slots: list[int]) -> None:
        super().clear_slots(slots)
        if slots:
            self._queue(ClearSlots(tuple(slots)))

    def execute(self, batch: ScheduledBatch, wants_prompt_logits: set[int]) -> StepOutput:
        with self._send_lock:
            self._send(step_rows(batch))
            return super().execute(batch, wants_prompt_logits)

    def close(self) -> None:
        """Tells the workers to exit (idempotent); the group is torn down by the caller."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._send_lock:
            self._broadcast(StepMessage((), None, stop=True))

    def _queue(self, op: AdapterOp) -> None:
        with self._ops_lock:
            self._ops.append(op)

    def _send(self, rows: tuple[StepRow, ...] | None) -> None:
        with self._ops_lock:
            ops, self._ops = tuple(self._ops), []
        self._broadcast(StepMessage(ops, rows))

    def _broadcast(self, message: StepMessage) -> None:
        start = time.perf_counter()
        dist.broadcast_object_list([message], src=0)
        self.broadcast_seconds += time.perf_counter() - start
        self._last_send = time.monotonic()

    def _beat(self) -> None:
        while not self._closed.wait(HEARTBEAT_SECONDS / 4):
            if time.monotonic() - self._last_send < HEARTBEAT_SECONDS / 2:
                continue
            with self._send_lock:
                if self._closed.is_set():
                    return
                try:
                    self._send(None)
                    self.heartbeats += 1
                except Exception:  # noqa: BLE001 - a shard is gone: the supervisor takes the replica down
                    logger.exception("shard heartbeat failed")
                    return
