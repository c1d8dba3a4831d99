"""How the engine splits memory: adapter pages first (their budget), then the KV cache.

Adapters are stored in pages of `kernels.PAGE_RANK` rank rows per projection group (every group
gets the same number of pages, so "one page index" costs the sum of the groups' page bytes); the
budget `EngineArgs.adapter_memory` is bytes or a fraction of the device memory free after the
weights. The KV cache is sized afterwards (`setup.resolve_config`), from what is left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from lorafleet.kernels import pages_for_rank
from lorafleet.runtime.args import EngineArgs
from lorafleet.runtime.errors import EngineError

MIN_HOST_ADAPTER_BYTES = 256 << 20


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
