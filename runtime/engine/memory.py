"""How the engine splits memory: weights, adapter pages (their budget), a reserve, then the KV cache.

Adapters are stored in pages of `kernels.PAGE_RANK` rank rows per projection group (every group
gets the same number of pages, so "one page index" costs the sum of the groups' page bytes); the
budget `EngineArgs.adapter_memory` is bytes or a fraction of the device memory free after the
weights.

On CUDA the KV cache is sized by measurement (`plan_memory`, fed by `warmup.measure_activations`):
the engine runs its largest steps once with a one-block cache and measures what they allocate,
then keeps a reserve free and gives the KV cache the rest. The reserve is

- **activations**: the larger peak of the largest mixed step (max_batch_prefill_tokens prompt tokens
  plus max_batch_size - 1 decode rows, sampled with every warper, prompt log-probs asked) and of
  the largest decode step: the caching allocator keeps these segments for the steps that follow;
- **graphs**: the CUDA graphs' private memory pool, which eager steps cannot reuse: the largest
  decode step's temporaries (the graphs of smaller buckets reuse that pool) plus a little per graph;
- **fragmentation**: `FRAGMENTATION_FRACTION` of the device (at least `MIN_FRAGMENTATION`): the
  allocator's rounding and split segments, cuBLAS workspaces, Triton's loaded kernels, and
  whatever a long-running server allocates that one profiling pass did not see.

On the CPU the pool has a fixed default size (`setup.py`) and the reserve is 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from lorafleet.kernels import pages_for_rank
from lorafleet.runtime.args import EngineArgs
from lorafleet.runtime.errors import EngineError

MIN_HOST_ADAPTER_BYTES = 256 << 20
FRAGMENTATION_FRACTION = 0.03
MIN_FRAGMENTATION = 256 << 20
GRAPH_OVERHEAD = 2 << 20  # per captured graph: its instantiated launch parameters and static outputs


def free_memory(device: torch.device) -> int:
    """Bytes free on `device` now (the host's available memory for the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def adapter_pages(args: EngineArgs, bytes_per_page: int, device: torch.device) -> int:
    """Pages per projection group for `args.adapter_memory` (see the module docstring).

    `bytes_per_page` is one page index over every paged group and layer. Raises `EngineError`
    when the budget cannot hold one adapter of `max_lora_rank`.
    """
    max_rank_pages = pages_for_rank(args.max_lora_rank)
    if args.max_loaded_adapters == 0 or bytes_per_page == 0:
        return 0
    budget = args.adapter_memory
    if budget is None:
        return args.max_loaded_adapters * max_rank_pages
    num_bytes = int(budget * free_memory(device)) if isinstance(budget, float) else int(budget)
    pages = num_bytes // bytes_per_page
    if pages < max_rank_pages:
        raise EngineError(
            f"adapter_memory ({num_bytes} bytes) cannot hold one adapter of max_lora_rank="
            f"{args.max_lora_rank} on every projection ({max_rank_pages * bytes_per_page} bytes); "
            "raise --adapter-memory or lower --max-lora-rank"
        )
    return pages


def host_adapter_bytes(args: EngineArgs, device_adapter_bytes: int) -> int:
    """The host cache's byte budget for adapter weights."""
    if args.adapter_host_memory is not None:
        return args.adapter_host_memory
    return max(4 * device_adapter_bytes, MIN_HOST_ADAPTER_BYTES)


@dataclass(frozen=True)
class DeviceMemory:
    """The device's memory as measured once the weights and adapter pages are in place."""

    total: int
    free: int


def read_device_memory(device: torch.device) -> DeviceMemory:
    free, total = torch.cuda.mem_get_info(device)
    return DeviceMemory(total=int(total), free=int(free))


@dataclass(frozen=True)
class Activations:
    """Peak temporaries of the profiling steps, in bytes (allocator segments beyond the baseline)."""

    mixed: int  # the largest prefill chunk with the largest decode batch beside it
    decode: int  # the largest decode batch alone


@dataclass(frozen=True)
class MemoryPlan:
    num_kv_blocks: int
    activations: int
    graphs: int
    fragmentation: int

    @property
    def reserve(self) -> int:
        return self.activations + self.graphs + self.fragmentation


def plan_memory(
    device: DeviceMemory, activations: Activations, *, kv_bytes_per_block: int, num_graphs: int
) -> MemoryPlan:
    """The KV blocks that fit next to the reserve (see the module docstring), the runner's null block
    set aside; pure, so tests feed it any device. May return 0: the caller decides what is enough."""
    graphs = activations.decode + GRAPH_OVERHEAD * num_graphs if num_graphs else 0
    fragmentation = max(MIN_FRAGMENTATION, int(FRAGMENTATION_FRACTION * device.total))
    working = max(activations.mixed, activations.decode)
    left = device.free - working - graphs - fragmentation
    return MemoryPlan(max(0, left // kv_bytes_per_block - 1), working, graphs, fragmentation)


@dataclass(frozen=True)
class MemorySplit:
    """Where the engine's device memory went, in bytes (reported by `/info`)."""

    weights: int  # the base model's parameters
    adapters: int  # the adapter page pools (and the MoE experts' per-slot LoRA buffers)
    kv_cache: int  # the paged KV pool
    reserve: int  # left free on purpose for activations and temporaries (CUDA only)


def memory_split(model: torch.nn.Module, lora_holders: list[torch.nn.Module], kv_cache: torch.Tensor,
                 reserve: int) -> MemorySplit:
    lora = {id(p) for holder in lora_holders for p in holder.parameters()}
    weights = sum(p.nbytes for p in model.parameters() if id(p) not in lora)
    adapters = sum(p.nbytes for holder in lora_holders for p in holder.parameters(recurse=False)
                   if p is not getattr(holder, "weight", None) and p is not getattr(holder, "bias", None))
    return MemorySplit(weights, adapters, kv_cache.nbytes, reserve)
