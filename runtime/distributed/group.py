"""The process group of one replica's shards, and its timed all-reduce.

gloo on the CPU, NCCL on CUDA. The shards meet through a file store in a folder only the replica's
user can open (`mkdtemp`, mode 0700), never a TCP store: replicas share the host's network, and any
local process could join a TCP rendezvous and claim a rank (it would receive every prompt). The
collectives' own sockets stay on loopback (`GLOO_SOCKET_IFNAME`/`NCCL_SOCKET_IFNAME=lo` unless the
operator chose an interface). The group's timeout bounds every collective: a shard that
hangs (rather than dies, which the supervisor sees at once) fails the step after it, and rank 0
broadcasts a heartbeat when idle (`runner.py`) so idle workers never reach it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = timedelta(seconds=120)
HEARTBEAT_SECONDS = 20.0  # < COLLECTIVE_TIMEOUT: idle workers wait on a broadcast that long at most


def init_group(rank: int, world: int, store: str, device: torch.device) -> None:
    """Joins the replica's group through the file `store` (blocks until all `world` ranks joined)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"file://{store}", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
    )


@dataclass
class AllReduce:
    """Sums a row-parallel layer's partial outputs over the shards, in place; counts the time
    spent in it (the benchmark reports the collectives' share of a step)."""

    seconds: float = 0.0
    calls: int = 0
    sync: bool = field(default=False)  # CUDA: wait for the reduce to time it (benchmarks only)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        dist.all_reduce(tensor)
        if self.sync and tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return tensor
