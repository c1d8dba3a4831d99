"""Qwen2: Llama's layout with biases on q/k/v (and an optional, usually disabled, sliding window)."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args

ARCHITECTURES = ("Qwen2ForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Qwen2 `config.json`."""
    if config.get("use_sliding_window") and config.get("max_window_layers", 0) < config["num_hidden_layers"]:
        raise ValueError("Qwen2 with use_sliding_window on some layers is not supported")
    return common_args(config, attention_bias=True, sliding_window=None)
