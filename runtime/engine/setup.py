"""Resolves `EngineArgs` into an `EngineConfig` (defaults as TGI's) and finds the model's files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from lorafleet.kernels.backend import backend_for
from lorafleet.runtime.args import EngineArgs
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.memory import MemoryPlan, host_adapter_bytes
from lorafleet.runtime.errors import EngineError
from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.generation_config import GenerationDefaults

if TYPE_CHECKING:
    from lorafleet.runtime.models.decoder import DecoderModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_KV_BYTES = 2 << 30  # default KV pool on the CPU: at most 2 GiB


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
                allow_patterns=[
                    "*.json",
                    "*.safetensors",
                    "tokenizer*",
                    "*.bin",
                    "*.jinja",
                    "additional_chat_templates/*",
                ],
            )
        )
    except Exception as e:  # offline, unknown repo, auth...
        raise EngineError(f"model {str(model_id)!r}: not a local directory and not downloadable: {e}") from e
    return folder, folder.name


def resolve_device(device: str | None) -> torch.device:
    """The device to run on, with an explicit index on CUDA (tensors of every thread land there)."""
    if device is None:
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as e:
            raise EngineError(f"device {device!r} is not a torch device: {e}") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r}: this torch build or host has no CUDA device")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise EngineError(f"dtype {dtype!r} is not supported (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


KV_ESTIMATE_FRACTION = 0.6  # the rest: activations and the all-reduce buffers, unmeasured when sharded


def check_args(args: EngineArgs) -> None:
    """Checks what can be checked before loading anything; raises `EngineError` naming the option."""
    if args.block_size <= 0:
        raise EngineError("block_size must be positive")
    if args.max_loaded_adapters < 0 or args.max_lora_rank <= 0:
        raise EngineError("max_loaded_adapters must be >= 0 and max_lora_rank > 0")
    if len(args.adapters) > args.max_loaded_adapters:
        raise EngineError(
            f"{len(args.adapters)} preloaded adapters exceed max_loaded_adapters={args.max_loaded_adapters}"
        )


def resolve_config(
    args: EngineArgs,
    *,
    model_dir: Path,
    model_sha: str | None,
    model: ModelArgs,
    dtype: torch.dtype,
    device: torch.device,
    eos_token_ids: frozenset[int],
    generation_defaults: GenerationDefaults,
    adapter_pages: int,
    adapter_page_bytes: dict[str, int],
    num_shard: int = 1,
) -> EngineConfig:
    """Fills in defaults (after the weights are loaded, so free device memory is known) and checks
    that the limits are consistent; raises `EngineError` naming the option."""
    total = args.max_total_tokens or min(model.max_position_embeddings, 4096)
    max_input = args.max_input_tokens or total - 1
    if max_input >= total:
        raise EngineError(f"max_input_tokens ({max_input}) must be < max_total_tokens ({total})")
    num_kv_blocks = args.num_kv_blocks or _default_kv_blocks(args, model, dtype, device, total)
    _check_pool(num_kv_blocks, args.block_size, total)
    return EngineConfig(
        args=args,
        model_dir=model_dir,
        model_sha=model_sha,
        model=model,
        dtype=dtype,
        device=device,
        max_input_tokens=max_input,
        max_total_tokens=total,
        max_batch_prefill_tokens=args.max_batch_prefill_tokens or max_input + 50,
        num_kv_blocks=num_kv_blocks,
        adapter_pages=adapter_pages,
        adapter_page_bytes=tuple(adapter_page_bytes.items()),
        adapter_host_bytes=host_adapter_bytes(args, adapter_pages * sum(adapter_page_bytes.values())),
        eos_token_ids=eos_token_ids,
        generation_defaults=generation_defaults,
        cuda_graphs=resolve_cuda_graphs(args, model, device, num_shard),
    )


def resolve_num_shard(args: EngineArgs, device: torch.device) -> int:
    """`args.num_shard`, or by default every visible GPU on CUDA (TGI's default) and 1 elsewhere."""
    if args.num_shard is not None:
        if args.num_shard < 1:
            raise EngineError("num_shard must be >= 1")
        available = torch.cuda.device_count() - (device.index or 0) if device.type == "cuda" else None
        if available is not None and args.num_shard > available:
            raise EngineError(f"num_shard={args.num_shard} needs {args.num_shard} GPUs from {device}; "
                              f"{available} are visible")
        return args.num_shard
    return max(1, torch.cuda.device_count() - (device.index or 0)) if device.type == "cuda" else 1


def resolve_cuda_graphs(args: EngineArgs, model: ModelArgs, device: torch.device, num_shard: int = 1) -> bool:
    """On by default where they can run: CUDA, the Triton kernels, a dense model, one shard."""
    reason = None
    if num_shard > 1:
        reason = "a sharded model runs eagerly (its all-reduces are not captured)"
    elif device.type != "cuda":
        reason = f"they need a CUDA device (device is {device})"
    elif backend_for(device).name != "triton":
        reason = "they need the Triton kernels (LORAFLEET_KERNELS=torch is set)"
    elif model.is_moe:
        reason = "MoE models run eagerly (their expert routing reads the device every step)"
    if reason is not None and args.cuda_graphs:
        raise EngineError(f"cuda_graphs: {reason}")
    return reason is None and args.cuda_graphs is not False


def measures_kv_cache(args: EngineArgs, device: torch.device) -> bool:
    """Whether the KV pool is sized by profiling (CUDA, no size given); until then `resolve_config`
    gives the pool one request's blocks."""
    return device.type == "cuda" and not args.num_kv_blocks and not args.max_batch_total_tokens


def with_memory_plan(config: EngineConfig, plan: MemoryPlan) -> EngineConfig:
    """`config` with the measured KV pool and reserve; raises `EngineError` when the pool left
    cannot hold one request of max_total_tokens."""
    _check_pool(plan.num_kv_blocks, config.block_size, config.max_total_tokens,
                hint=f"after a reserve of {plan.reserve >> 20} MiB (activations {plan.activations >> 20}, "
                     f"CUDA graphs {plan.graphs >> 20}, fragmentation {plan.fragmentation >> 20}); lower "
                     "max_batch_prefill_tokens, max_batch_size or adapter_memory, or turn cuda_graphs off")
    return dataclasses.replace(config, num_kv_blocks=plan.num_kv_blocks, memory_reserve=plan.reserve)


def with_kv_estimate(config: EngineConfig, model: DecoderModel) -> EngineConfig:
    """A sharded replica's KV pool on CUDA, not profiled (profiling runs one process's forward):
    KV_ESTIMATE_FRACTION of the device memory free now, in blocks of this shard's heads."""
    free, _ = torch.cuda.mem_get_info(config.device)
    per_block = kv_bytes_per_block(model.args, config.block_size, config.dtype)
    blocks = int(free * KV_ESTIMATE_FRACTION) // per_block
    _check_pool(blocks, config.block_size, config.max_total_tokens, hint="(sharded: memory estimated)")
    return dataclasses.replace(config, num_kv_blocks=blocks)


def _check_pool(num_kv_blocks: int, block_size: int, total: int, hint: str = "") -> None:
    if num_kv_blocks * block_size < total:
        raise EngineError(
            f"the KV pool ({num_kv_blocks} blocks of {block_size} tokens) cannot hold one request of "
            f"max_total_tokens={total}{' ' + hint if hint else ''}; raise num_kv_blocks/"
            "max_batch_total_tokens or lower max_total_tokens"
        )


def kv_bytes_per_block(model: ModelArgs, block_size: int, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return model.num_layers * 2 * block_size * model.num_kv_heads * model.head_dim * element


def _default_kv_blocks(
    args: EngineArgs, model: ModelArgs, dtype: torch.dtype, device: torch.device, total: int
) -> int:
    if args.max_batch_total_tokens:
        return -(-args.max_batch_total_tokens // args.block_size)
    per_block = kv_bytes_per_block(model, args.block_size, dtype)
    if device.type == "cuda":  # a placeholder: measured and replaced (`with_memory_plan`)
        return -(-total // args.block_size)
    wanted = -(-max(16 * total, 16384) // args.block_size)
    return min(wanted, CPU_KV_BYTES // per_block)
