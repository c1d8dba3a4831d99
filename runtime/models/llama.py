"""Llama (1, 2, 3.x): RMSNorm, RoPE with optional llama3 `rope_scaling`, GQA, SwiGLU, tied or not.

Also the readers' shared part: the fields every family names the same way, and per-layer
sliding windows from `layer_types`.
"""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.layers.rotary import SUPPORTED_ROPE_TYPES, rope_type_of
from lorafleet.runtime.models.args import ModelArgs

ARCHITECTURES = ("LlamaForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Llama `config.json`."""
    return common_args(config, attention_bias=bool(config.get("attention_bias", False)))


def common_args(config: dict[str, Any], *, tie_default: bool = False, **variations: Any) -> ModelArgs:
    """The fields the families name the same way, plus the family's `variations` (ModelArgs fields)."""
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    rope_scaling = config.get("rope_scaling")
    if rope_type_of(rope_scaling) not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope_scaling {rope_scaling!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})"
        )
    return ModelArgs(
        architecture=config["architectures"][0],
        vocab_size=int(config["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(config["intermediate_size"]),
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", tie_default)),
        **variations,
    )


def layer_windows(config: dict[str, Any], window: int | None, default_sliding: Any) -> tuple[int | None, ...]:
    """Each layer's sliding window: `layer_types` from config.json when present (transformers >= 4.54
    writes it), else `default_sliding(layer)` (the family's rule); () when the model has no window."""
    if not window:
        return ()
    layers = int(config["num_hidden_layers"])
    types = config.get("layer_types") or [
        "sliding_attention" if default_sliding(i) else "full_attention" for i in range(layers)
    ]
    if len(types) != layers or set(types) - {"sliding_attention", "full_attention"}:
        raise ValueError(f"layer_types must list sliding_attention/full_attention for {layers} layers")
    return tuple(int(window) if kind == "sliding_attention" else None for kind in types)
