"""The engine's one configuration object, resolved once in `Engine.from_pretrained`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class EngineConfig:
    model_dir: Path
    model_id: str
    model_sha: str | None
    dtype: torch.dtype
    device: torch.device
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int  # new prompt tokens per step (longer prompts are chunked)
    max_batch_total_tokens: int  # = num_kv_blocks * block_size: tokens the KV pool holds
    block_size: int
    num_kv_blocks: int
    max_loaded_adapters: int  # adapter slots in the stacked LoRA buffers
    max_lora_rank: int
    max_batch_size: int  # running sequences at most
    max_cpu_adapters: int  # adapter weights kept in host memory (LRU)
