"""`EngineArgs`: every option of the engine, in one frozen dataclass.

The CLI parses flags and env vars into it (`server/cli.py`), the server hands it to
`Engine.from_args`, tests and benchmarks build it directly (or through
`Engine.from_pretrained(model_id, **options)`). `None` means "the engine chooses": the resolved
values live in `engine.config.EngineConfig`, never written back here.

This module imports nothing heavy (no torch), so the CLI can parse options before anything loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*", re.IGNORECASE)
_SCALE = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_memory(text: str) -> int | float:
    """A memory amount: bytes (`2000000`, `512MiB`, `1.5GB`, `2G`), or a fraction in (0, 1] (`0.25`).

    `KB/MB/GB/TB` are powers of 1000, `KiB/MiB/GiB/TiB` and bare `K/M/G/T` powers of 1024. A
    number with a decimal point and no unit is a fraction (of the device's free memory).

    Example:
        >>> parse_memory("512MiB"), parse_memory("1.5GB"), parse_memory("0.25")
        (536870912, 1500000000, 0.25)
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError("must be a number of bytes (e.g. 512MiB, 2GB, 1000000) or a fraction like 0.2")
    number, prefix, binary, byte = match.groups()
    value = float(number)
    if not prefix and not byte and "." in number:
        if not 0 < value <= 1:
            raise ValueError("a fraction must be > 0 and <= 1")
        return value
    base = 1000 if prefix and byte and not binary else 1024
    amount = int(value * base ** _SCALE[prefix.lower()])
    if amount <= 0:
        raise ValueError("must be positive")
    return amount


@dataclass(frozen=True)
class AdapterSource:
    """One adapter to preload: `id`, `id@revision`, `name=path` or `name=repo@revision` in TGI's list."""

    adapter_id: str
    source: str  # a local directory or a Hub repo id
    revision: str | None = None


@dataclass(frozen=True)
class EngineArgs:
    """What the engine serves and within which limits.

    Args:
        model_id: a local model folder or a Hub repo id.
        revision: Hub revision of the base model.
        adapters: adapters loaded and pinned at start (never evicted).
        dtype: "float32" | "float16" | "bfloat16"; default bfloat16 on CUDA, float32 on the CPU.
        device: torch device; default the current CUDA device when there is one, else the CPU.
        max_input_tokens: longest prompt; default max_total_tokens - 1.
        max_total_tokens: longest prompt + output; default min(the model's context, 4096).
        max_batch_prefill_tokens: new prompt tokens per step (longer prompts are chunked);
            default max_input_tokens + 50.
        max_batch_total_tokens: tokens the KV pool holds; default sized from memory.
        max_loaded_adapters: adapter slots in the stacked LoRA buffers.
        max_lora_rank: largest adapter rank the slots hold.
        max_batch_size: running sequences at most.
        block_size: tokens per KV-cache block.
        num_kv_blocks: KV-cache blocks (overrides max_batch_total_tokens).
        prefix_caching: reuse the KV blocks of a prompt prefix already computed with the same
            adapter version (or the base); see `engine/block_manager.py`.
        allow_hub_adapters: let requests name Hub repo ids (`org/name`) besides the registered
            adapters; they are downloaded on first use. Paths in requests are always refused.
        adapter_memory: device memory for adapters, in bytes or as a fraction of the memory free
            after the weights (`parse_memory`); each adapter costs its real size (its rank's pages
            in the groups it targets). Default: what `max_loaded_adapters` adapters of
            `max_lora_rank` on every projection take. The KV cache is sized after it.
        adapter_host_memory: host memory for adapter weights (bytes), least recently used evicted;
            default four times the device budget, at least 256 MiB.
        cuda_graphs: replay decode steps from CUDA graphs captured at start, one per batch-size
            bucket; default on for CUDA (off for MoE models, whose routing reads the device).
        num_shard: processes (devices) the model is split over, Megatron-style (TGI's
            `--num-shard`); None: every visible GPU on CUDA, 1 elsewhere (the server's default).
            Above 1, workers are spawned (gloo on the CPU, NCCL on CUDA): `runtime/distributed`.

    Example:
        >>> EngineArgs("/models/mistral", adapters=(AdapterSource("sql", "/adapters/sql"),))
    """

    model_id: str
    revision: str | None = None
    adapters: tuple[AdapterSource, ...] = ()
    dtype: str | None = None
    device: str | None = None
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_batch_prefill_tokens: int | None = None
    max_batch_total_tokens: int | None = None
    max_loaded_adapters: int = 8
    max_lora_rank: int = 64
    max_batch_size: int = 256
    block_size: int = 16
    num_kv_blocks: int | None = None
    prefix_caching: bool = True
    allow_hub_adapters: bool = False
    adapter_memory: int | float | None = None
    adapter_host_memory: int | None = None
    cuda_graphs: bool | None = None
    num_shard: int | None = 1
