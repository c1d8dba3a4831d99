"""A worker process: shard `rank` of the model, running every step rank 0 broadcasts.

Spawned (never forked: rank 0 already runs threads and torch) by `launch.ShardGroup`. It builds
its shard from the checkpoint while rank 0 builds its own, takes rank 0's resolved `EngineConfig`
(the KV pool and adapter pages every shard allocates), then loops: receive a message, apply its
adapter changes, run the forward (taking part in its all-reduces). It exits when rank 0 says
stop, when rank 0's process is gone, or when a collective fails (a peer died).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading

import torch
import torch.distributed as dist
from lorafleet.runtime.adapters.residency import Residence
from lorafleet.runtime.distributed.entry import WorkerSetup
from lorafleet.runtime.distributed.group import AllReduce, init_group
from lorafleet.runtime.distributed.messages import (
    Activate,
    AdapterOp,
    ClearSlots,
    StepMessage,
    WritePages,
    rebuild_batch,
)
from lorafleet.runtime.distributed.plan import ShardPlan
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.model_runner import AdapterWrite, ModelRunner
from lorafleet.runtime.layers import dense
from lorafleet.runtime.models.loader import load_model

logger = logging.getLogger(__name__)
PARENT_POLL_SECONDS = 1.0


def worker_main(setup: WorkerSetup) -> None:
    """Runs shard `setup.rank` until told to stop; exits the process."""
    logging.basicConfig(level=logging.INFO, format=f"shard {setup.rank}: %(levelname)s %(message)s")
    threading.Thread(target=_watch_parent, args=(setup.parent_pid,), daemon=True).start()
    code = 0
    try:
        runner = _build(setup)
        _serve(runner)
    except Exception:  # noqa: BLE001 - logged; the exit code tells rank 0's supervisor
        logger.exception("shard %d failed", setup.rank)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: the group may be half gone


def _build(setup: WorkerSetup) -> ModelRunner:
    device = torch.device(setup.device)
    if setup.threads:
        torch.set_num_threads(setup.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_group(setup.rank, setup.world, setup.store, device)
    plan = ShardPlan(setup.rank, setup.world, setup.model)
    model = load_model(setup.model_dir, setup.model, dtype=setup.dtype, device=device, lora=setup.lora,
                       shard=(plan, AllReduce()))
    if device.type == "cpu":  # this shard's weight shapes, timed on this process's threads
        dense.tune(model.dense_weights(), logger.info)
    received: list[EngineConfig | None] = [None]
    dist.broadcast_object_list(received, src=0)
    config = received[0]
    assert config is not None
    model.allocate_adapter_pages(config.adapter_pages)
    return ModelRunner(dataclasses.replace(config, device=device), model)


def _serve(runner: ModelRunner) -> None:
    written: dict[int, tuple[Residence, AdapterWrite]] = {}
    while True:
        received: list[StepMessage | None] = [None]
        dist.broadcast_object_list(received, src=0)
        message = received[0]
        assert message is not None
        if message.stop:
            return
        for op in message.ops:
            _apply(runner, op, written)
        if message.rows is not None:
            runner.execute(rebuild_batch(message.rows), set())


def _apply(runner: ModelRunner, op: AdapterOp, written: dict[int, tuple[Residence, AdapterWrite]]) -> None:
    if isinstance(op, WritePages):
        written[op.residence.slot] = (op.residence, runner.write_pages(op.residence, op.weights))
    elif isinstance(op, Activate):
        residence, write = written.pop(op.slot)
        runner.activate(residence, write)
    elif isinstance(op, ClearSlots):
        runner.clear_slots(list(op.slots))


def _watch_parent(pid: int) -> None:
    """Rank 0 gone (killed, crashed): nothing will ever send a step again, so exit."""
    while True:
        threading.Event().wait(PARENT_POLL_SECONDS)
        if os.getppid() != pid:
            os._exit(1)
