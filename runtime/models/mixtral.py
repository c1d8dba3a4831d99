"""Mixtral: Mistral's attention with a sparse mixture-of-experts block instead of the MLP
(`num_local_experts` SwiGLU experts, `num_experts_per_tok` chosen per token by a linear router)."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args, layer_windows

ARCHITECTURES = ("MixtralForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Mixtral `config.json`."""
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (silu only)")
    experts, top_k = int(config["num_local_experts"]), int(config["num_experts_per_tok"])
    if not 1 <= top_k <= experts:
        raise ValueError(f"num_experts_per_tok={top_k} must be between 1 and num_local_experts={experts}")
    return common_args(
        config,
        num_experts=experts,
        num_experts_per_tok=top_k,
        layer_windows=layer_windows(config, config.get("sliding_window"), lambda _: True),
    )
