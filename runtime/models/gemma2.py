"""Gemma 2: embeddings scaled by sqrt(hidden), (1 + w) RMSNorm, norms after attention and around
the MLP, GeGLU (tanh GELU), `query_pre_attn_scalar` attention scale, soft-capped attention scores
and final logits, sliding-window and global layers alternating, tied embeddings."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args, layer_windows

ARCHITECTURES = ("Gemma2ForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Gemma 2 `config.json` (defaults are transformers' Gemma2Config's)."""
    return common_args(
        config,
        **gemma_variations(config),
        attn_logit_softcap=_cap(config.get("attn_logit_softcapping")),
        final_logit_softcap=_cap(config.get("final_logit_softcapping")),
        layer_windows=layer_windows(config, config.get("sliding_window", 4096), lambda i: (i + 1) % 2 != 0),
    )


def gemma_variations(config: dict[str, Any]) -> dict[str, Any]:
    """What Gemma 2 and 3 share."""
    heads, hidden = int(config["num_attention_heads"]), int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    scalar = float(config.get("query_pre_attn_scalar") or head_dim)
    if scalar <= 0:
        raise ValueError(f"query_pre_attn_scalar must be positive, got {scalar}")
    return {
        "hidden_act": config.get("hidden_activation") or "gelu_pytorch_tanh",
        "norm_offset": 1.0,
        "sandwich_norms": True,
        "embedding_scale": hidden**0.5,
        "attention_scale": scalar**-0.5,
        "tie_default": True,
    }


def _cap(value: Any) -> float | None:
    """A soft-cap (None: off); transformers divides by it, so it must be positive."""
    if value is None:
        return None
    if float(value) <= 0:
        raise ValueError(f"soft-capping values must be positive or null, got {value!r}")
    return float(value)
