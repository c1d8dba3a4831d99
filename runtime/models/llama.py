"""Llama (1, 2, 3.x): RMSNorm, RoPE with optional llama3 `rope_scaling`, GQA, SwiGLU, tied or not."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs

ARCHITECTURES = ("LlamaForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Llama `config.json`."""
    return common_args(config, attention_bias=bool(config.get("attention_bias", False)), sliding_window=None)


def common_args(config: dict[str, Any], *, attention_bias: bool, sliding_window: int | None) -> ModelArgs:
    """The fields the three architectures name the same way."""
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
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
        rope_scaling=config.get("rope_scaling"),
        max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        sliding_window=sliding_window,
    )
