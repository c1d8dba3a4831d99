"""Phi-3 / Phi-3.5 / Phi-4-mini (`Phi3ForCausalLM`): Llama's math with q/k/v fused into one
`qkv_proj` and gate/up into one `gate_up_proj` in the checkpoint and in PEFT adapters, LongRoPE
(`rope_scaling` type longrope, formerly "su"/"yarn"), RoPE on part of each head
(`partial_rotary_factor`, Phi-4-mini) and an optional sliding window on every layer."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args, layer_windows

ARCHITECTURES = ("Phi3ForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Phi-3 `config.json`."""
    scaling = config.get("rope_scaling")
    if scaling is not None:
        scaling = dict(scaling)
        if scaling.get("type") in ("su", "yarn"):  # transformers renames both to longrope
            scaling["type"] = "longrope"
        if scaling.get("type", scaling.get("rope_type")) == "longrope":
            max_positions = int(config.get("max_position_embeddings", 4096))
            scaling.setdefault(
                "original_max_position_embeddings", config.get("original_max_position_embeddings")
            )
            scaling["original_max_position_embeddings"] = int(
                scaling["original_max_position_embeddings"] or max_positions
            )
            scaling["max_position_embeddings"] = max_positions
    args = common_args(
        {**config, "rope_scaling": scaling},
        fused_qkv=True,
        fused_gate_up=True,
        partial_rotary_factor=float(config.get("partial_rotary_factor", 1.0)),
        layer_windows=layer_windows(config, config.get("sliding_window"), lambda _: True),
    )
    rotary_dim = int(args.head_dim * args.partial_rotary_factor)
    if not 0 < args.partial_rotary_factor <= 1 or rotary_dim % 2:
        raise ValueError(
            f"partial_rotary_factor {args.partial_rotary_factor} gives an odd or empty rotary part"
        )
    for name in ("short_factor", "long_factor"):
        if (
            scaling is not None
            and scaling.get("type") == "longrope"
            and len(scaling[name]) != rotary_dim // 2
        ):
            raise ValueError(
                f"rope_scaling.{name} has {len(scaling[name])} values, expected {rotary_dim // 2}"
            )
    return args
