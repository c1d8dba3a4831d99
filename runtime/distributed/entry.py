"""What a spawned worker process starts from: its `WorkerSetup` and `main`.

Kept apart from `worker.py` so that unpickling the setup in the new process imports nothing of
the engine: `main` imports the engine package first, then the worker (the engine package imports
the launcher, which refers to the worker module).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lorafleet.runtime.models.args import LoraCapacity, ModelArgs


@dataclass(frozen=True)
class WorkerSetup:
    rank: int
    world: int
    store: str  # the rendezvous file, in a folder private to the replica's user
    model_dir: Path
    model: ModelArgs  # the whole architecture
    dtype: torch.dtype
    device: str  # this shard's device ("cpu", "cuda:1")
    lora: LoraCapacity
    parent_pid: int
    threads: int = 0  # CPU: torch threads of this process (the host's cores split between shards)


def main(setup: WorkerSetup) -> None:
    """The spawned process's entry point; exits the process when done."""
    import lorafleet.runtime.engine  # noqa: F401 - before the worker module: see the module's doc
    from lorafleet.runtime.distributed.worker import worker_main

    worker_main(setup)
