"""`ShardGroup`: rank 0's side of a sharded replica's life: spawn, meet, hand over, watch, stop.

`start` spawns ranks 1..N-1 (they load their shards in parallel with rank 0) and joins the group;
`hand_over` sends them the resolved `EngineConfig` once rank 0 has sized the pools; `watch`
starts the supervisor; `close` stops the workers. The process group's state is process-global
(torch.distributed), so one replica process holds at most one group.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch
import torch.distributed as dist
from lorafleet.runtime.distributed.entry import WorkerSetup, main
from lorafleet.runtime.distributed.group import AllReduce, init_group
from lorafleet.runtime.distributed.plan import ShardPlan
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.models.args import LoraCapacity, ModelArgs

logger = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 10.0


def shard_devices(device: torch.device, world: int) -> list[str]:
    """Rank r's device: cuda:r of the visible devices (rank 0 is the engine's), the CPU for all."""
    if device.type != "cuda":
        return ["cpu"] * world
    first = device.index or 0
    return [f"cuda:{first + r}" for r in range(world)]


def start_shards(world: int, model_dir: Path, model: ModelArgs, dtype: torch.dtype, device: torch.device,
                 lora: LoraCapacity) -> ShardGroup | None:
    """The started group of a `world`-shard replica; None for one shard (nothing distributed)."""
    if world == 1:
        return None
    group = ShardGroup(world, model_dir, model, dtype, device, lora)
    try:
        group.start()
    except BaseException:
        group.abort()
        raise
    return group


class ShardGroup:
    def __init__(self, world: int, model_dir: Path, model: ModelArgs, dtype: torch.dtype,
                 device: torch.device, lora: LoraCapacity) -> None:
        self.world = world
        self.plan = ShardPlan(0, world, model)  # raises before anything starts if heads do not divide
        self.reduce = AllReduce()
        self.device = device
        self.devices = shard_devices(device, world)
        self._setups = [
            WorkerSetup(rank, world, "", model_dir, model, dtype, name, lora, os.getpid())
            for rank, name in enumerate(self.devices)
        ]
        self.processes: list[BaseProcess] = []
        self._folder: str | None = None
        self._threads_before = 0  # CPU: this process's torch threads before the cores were split
        self._stopping = threading.Event()

    def start(self) -> None:
        """Spawns the workers and joins the group with them (blocks until all have joined)."""
        self._folder = tempfile.mkdtemp(prefix="lorafleet-shards-")  # 0700: only this user joins
        store = os.path.join(self._folder, "rendezvous")
        threads = 0
        if self.device.type == "cpu":  # N processes on one host: split its cores, never oversubscribe
            self._threads_before = torch.get_num_threads()
            threads = max(1, self._threads_before // self.world)
            torch.set_num_threads(threads)
        context = multiprocessing.get_context("spawn")
        for setup in self._setups[1:]:
            setup = WorkerSetup(**{**setup.__dict__, "store": store, "threads": threads})
            process = context.Process(target=main, args=(setup,), name=f"lorafleet-shard-{setup.rank}",
                                      daemon=True)
            process.start()
            self.processes.append(process)
        init_group(0, self.world, store, self.device)

    def hand_over(self, config: EngineConfig) -> None:
        """Sends the workers the config every shard allocates its pools from."""
        dist.broadcast_object_list([config], src=0)

    def watch(self, on_death: Callable[[str], None]) -> None:
        """Calls `on_death(reason)` once, on a supervisor thread, if a worker exits while serving."""
        def supervise() -> None:
            sentinels = {p.sentinel: p for p in self.processes}
            ready = wait(list(sentinels))
            if self._stopping.is_set():
                return
            dead = sentinels[ready[0]]  # type: ignore[index]
            dead.join(1)
            reason = f"shard {dead.name.rsplit('-', 1)[-1]} exited (code {dead.exitcode})"
            logger.error("%s: the replica cannot serve without it; shutting down", reason)
            on_death(reason)

        threading.Thread(target=supervise, name="lorafleet-shard-supervisor", daemon=True).start()

    def abort(self) -> None:
        """Rank 0 failed to start: kills the workers (they would wait for a config forever)."""
        self._stopping.set()
        for process in self.processes:
            process.kill()
            process.join(STOP_GRACE_SECONDS)
        self._teardown()

    def _teardown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        if self._threads_before:  # an embedding process (tests) gets its cores back
            torch.set_num_threads(self._threads_before)

    def close(self) -> None:
        """After the runner told the workers to stop: waits for them, kills stragglers."""
        self._stopping.set()
        for process in self.processes:
            process.join(STOP_GRACE_SECONDS)
            if process.is_alive():
                process.kill()
        self._teardown()
