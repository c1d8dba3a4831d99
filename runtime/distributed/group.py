"""The process group of one replica's shards, and its timed all-reduce.

gloo on the CPU, NCCL on CUDA. Rank 0 (the server) picks a free local port and passes it to the
workers it spawns; they all meet there. The group's timeout bounds every collective: a shard that
hangs (rather than dies, which the supervisor sees at once) fails the step after it, and rank 0
broadcasts a heartbeat when idle (`runner.py`) so idle workers never reach it.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = timedelta(seconds=120)
HEARTBEAT_SECONDS = 20.0  # < COLLECTIVE_TIMEOUT: idle workers wait on a broadcast that long at most


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_group(rank: int, world: int, port: int, device: torch.device) -> None:
    """Joins the replica's group (blocks until all `world` ranks have joined)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=COLLECTIVE_TIMEOUT,
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
