"""Gemma 3 (text, `Gemma3ForCausalLM`): Gemma 2's layout with RMSNorm over each head of q and k,
no soft-capping by default, and two RoPEs: global layers use `rope_theta` with `rope_scaling`,
sliding-window layers `rope_local_base_freq` unscaled (five local layers per global one)."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.gemma2 import _cap, gemma_variations
from lorafleet.runtime.models.llama import common_args, layer_windows

ARCHITECTURES = ("Gemma3ForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Gemma 3 text `config.json` (defaults are transformers' Gemma3TextConfig's)."""
    if config.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention (an embedding model) is not a causal LM")
    pattern = int(config.get("sliding_window_pattern", 6))
    if pattern < 1:
        raise ValueError(f"sliding_window_pattern must be >= 1, got {pattern}")
    return common_args(
        {"rope_theta": 1_000_000.0, **config},
        **gemma_variations(config),
        qk_norm=True,
        attn_logit_softcap=_cap(config.get("attn_logit_softcapping")),
        final_logit_softcap=_cap(config.get("final_logit_softcapping")),
        local_rope_theta=float(config.get("rope_local_base_freq", 10_000.0)),
        layer_windows=layer_windows(
            config, config.get("sliding_window", 4096), lambda i: (i + 1) % pattern != 0
        ),
    )
