"""The parts of an `Engine`, loaded from a checkpoint: the (shard's) model with its adapter pages,
the tokenizer, and the `EngineConfig` sized around them (`Engine.from_args` wires them up)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lorafleet.runtime.args import EngineArgs
from lorafleet.runtime.engine import memory, setup, warmup
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.errors import EngineError
from lorafleet.runtime.layers import dense
from lorafleet.runtime.models.args import LoraCapacity, ModelArgs
from lorafleet.runtime.models.decoder import DecoderModel
from lorafleet.runtime.models.generation_config import read_generation_config, token_ids
from lorafleet.runtime.models.loader import load_model
from lorafleet.runtime.tokenizer import Tokenizer

if TYPE_CHECKING:
    from lorafleet.runtime.distributed.launch import ShardGroup


def load_parts(
    args: EngineArgs,
    say: Callable[[str], None],
    checkpoint: tuple[Path, str | None, dict[str, Any], ModelArgs],
    dtype: torch.dtype,
    device: torch.device,
    shards: ShardGroup | None,
) -> tuple[EngineConfig, DecoderModel, Tokenizer]:
    """Loads the model (this process's shard of it when `shards`), sizes adapter pages and the KV
    pool, and hands the config over to the other shards."""
    model_dir, sha, raw_config, model_args = checkpoint
    tokenizer = Tokenizer(model_dir)
    generation = read_generation_config(model_dir)
    lora = LoraCapacity(args.max_loaded_adapters, args.max_lora_rank)
    model = load_model(model_dir, model_args, dtype=dtype, device=device, lora=lora, progress=say,
                       shard=(shards.plan, shards.reduce) if shards is not None else None)
    if device.type == "cpu":  # which matmul form is faster depends on the machine: measured
        dense.tune(model.dense_weights(), say)
    page_bytes = model.page_bytes()  # a shard's: the adapter budget is per shard
    num_pages = memory.adapter_pages(args, sum(page_bytes.values()), device)
    model.allocate_adapter_pages(num_pages)  # before the KV cache is sized: it gets the rest
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos |= generation.eos_token_ids | _config_eos(raw_config, model_dir)
    config = setup.resolve_config(
        args, model_dir=model_dir, model_sha=sha, model=model_args, dtype=dtype, device=device,
        eos_token_ids=frozenset(eos), generation_defaults=generation, adapter_pages=num_pages,
        adapter_page_bytes=page_bytes, num_shard=shards.world if shards is not None else 1,
    )
    if setup.measures_kv_cache(args, device) and shards is None:
        plan = warmup.plan_memory(config, model)
        say(f"memory reserve: {plan.reserve >> 20} MiB (activations {plan.activations >> 20}, "
            f"CUDA graphs {plan.graphs >> 20}, fragmentation {plan.fragmentation >> 20})")
        config = setup.with_memory_plan(config, plan)
    elif setup.measures_kv_cache(args, device):  # profiling runs one process's forward: estimate
        config = setup.with_kv_estimate(config, model)
    if shards is not None:
        shards.hand_over(config)
    return config, model, tokenizer


def _config_eos(raw_config: dict[str, Any], model_dir: os.PathLike[str]) -> set[int]:
    """`eos_token_id` of config.json: absent, one id or a list."""
    try:
        return token_ids(raw_config.get("eos_token_id"))
    except ValueError as e:
        raise EngineError(f"{model_dir}/config.json: {e}") from e
