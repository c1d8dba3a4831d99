"""`EngineArgs`: every option of the engine, in one frozen dataclass.

The CLI parses flags and env vars into it (`server/cli.py`), the server hands it to
`Engine.from_args`, tests and benchmarks build it directly (or through
`Engine.from_pretrained(model_id, **options)`). `None` means "the engine chooses": the resolved
values live in `engine.config.EngineConfig`, never written back here.

This module imports nothing heavy (no torch), so the CLI can parse options before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass


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
