"""`EngineConfig`: the engine's options resolved once, when the model is loaded.

`EngineArgs` says what the user asked for (None = "choose for me"); this holds what the engine
runs with: every default filled in from the model and the device, and checked for consistency
(`setup.resolve_config`). Nothing writes to it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lorafleet.runtime.args import EngineArgs
from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.generation_config import GenerationDefaults


@dataclass(frozen=True)
class EngineConfig:
    args: EngineArgs
    model_dir: Path
    model_sha: str | None
    model: ModelArgs  # the architecture, read once from config.json
    dtype: torch.dtype
    device: torch.device
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int  # new prompt tokens per step (longer prompts are chunked)
    num_kv_blocks: int
    adapter_pages: int  # pages in each paged projection group's pool (engine/memory.py)
    adapter_page_bytes: tuple[tuple[str, int], ...]  # (group, bytes of one page over its layers)
    adapter_host_bytes: int  # host memory budget for adapter weights
    eos_token_ids: frozenset[int]  # the tokenizer's, config.json's and generation_config.json's
    generation_defaults: GenerationDefaults  # generation_config.json's sampling values

    @property
    def adapter_bytes(self) -> int:
        """The device adapter budget: every paged group's pool."""
        return self.adapter_pages * sum(size for _, size in self.adapter_page_bytes)

    @property
    def model_id(self) -> str:
        return self.args.model_id

    @property
    def block_size(self) -> int:
        return self.args.block_size

    @property
    def max_batch_total_tokens(self) -> int:
        """Tokens the KV pool holds."""
        return self.num_kv_blocks * self.args.block_size

    @property
    def max_loaded_adapters(self) -> int:
        return self.args.max_loaded_adapters

    @property
    def max_lora_rank(self) -> int:
        return self.args.max_lora_rank

    @property
    def max_batch_size(self) -> int:
        return self.args.max_batch_size
