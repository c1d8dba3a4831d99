"""Resolves `Engine.from_pretrained`'s arguments into an `EngineConfig` (defaults as TGI's)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.types import EngineError
from lorafleet.runtime.models.decoder import ModelArgs

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_KV_BYTES = 2 << 30  # default KV pool on the CPU: at most 2 GiB
GPU_MEMORY_FRACTION = 0.85  # share of free GPU memory (after weights) the KV pool may take


def resolve_model_dir(model_id: str | os.PathLike[str], revision: str | None) -> tuple[Path, str | None]:
    """A local folder as is, or a Hub snapshot (its commit hash is the model sha)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path, None
    if path.is_absolute() or str(model_id).startswith((".", "~")) or str(model_id).count("/") > 1:
        raise EngineError(f"model {str(model_id)!r}: no such directory")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                str(model_id),
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.bin"],
            )
        )
    except Exception as e:  # offline, unknown repo, auth...
        raise EngineError(f"model {str(model_id)!r}: not a local directory and not downloadable: {e}") from e
    return folder, folder.name


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise EngineError(f"dtype {dtype!r} is not supported (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def build_config(
    *,
    model_dir: Path,
    model_id: str,
    model_sha: str | None,
    args: ModelArgs,
    dtype: torch.dtype,
    device: torch.device,
    max_input_tokens: int | None,
    max_total_tokens: int | None,
    max_batch_prefill_tokens: int | None,
    max_batch_total_tokens: int | None,
    max_loaded_adapters: int,
    max_lora_rank: int,
    max_batch_size: int,
    block_size: int,
    num_kv_blocks: int | None,
    kv_bytes_per_block: int,
) -> EngineConfig:
    """Fills in defaults and checks that the limits are consistent; raises `EngineError` naming the flag."""
    total = max_total_tokens or min(args.max_position_embeddings, 4096)
    max_input = max_input_tokens or total - 1
    if max_input >= total:
        raise EngineError(f"max_input_tokens ({max_input}) must be < max_total_tokens ({total})")
    prefill = max_batch_prefill_tokens or max_input + 50
    if block_size <= 0:
        raise EngineError("block_size must be positive")
    if num_kv_blocks is None:
        if max_batch_total_tokens:
            num_kv_blocks = -(-max_batch_total_tokens // block_size)
        elif device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            num_kv_blocks = int(free * GPU_MEMORY_FRACTION) // kv_bytes_per_block
        else:
            wanted = -(-max(16 * total, 16384) // block_size)
            num_kv_blocks = min(wanted, CPU_KV_BYTES // kv_bytes_per_block)
    if num_kv_blocks * block_size < total:
        raise EngineError(
            f"the KV pool ({num_kv_blocks} blocks of {block_size} tokens) cannot hold one request of "
            f"max_total_tokens={total}; raise num_kv_blocks/max_batch_total_tokens or lower max_total_tokens"
        )
    if max_loaded_adapters < 0 or max_lora_rank <= 0:
        raise EngineError("max_loaded_adapters must be >= 0 and max_lora_rank > 0")
    return EngineConfig(
        model_dir=model_dir,
        model_id=model_id,
        model_sha=model_sha,
        dtype=dtype,
        device=device,
        max_input_tokens=max_input,
        max_total_tokens=total,
        max_batch_prefill_tokens=prefill,
        max_batch_total_tokens=num_kv_blocks * block_size,
        block_size=block_size,
        num_kv_blocks=num_kv_blocks,
        max_loaded_adapters=max_loaded_adapters,
        max_lora_rank=max_lora_rank,
        max_batch_size=max_batch_size,
        max_cpu_adapters=max(4 * max_loaded_adapters, 16),
    )
