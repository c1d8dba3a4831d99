"""Qwen2: Llama's layout with biases on q/k/v, and a sliding window on the layers past
`max_window_layers` when `use_sliding_window` is on (usually off)."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args, layer_windows

ARCHITECTURES = ("Qwen2ForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Qwen2 `config.json`."""
    return common_args(config, attention_bias=True, layer_windows=qwen_windows(config))


def qwen_windows(config: dict[str, Any]) -> tuple[int | None, ...]:
    """Qwen2/Qwen3's rule: `sliding_window` only with `use_sliding_window`, on layers >= max_window_layers."""
    window = config.get("sliding_window") if config.get("use_sliding_window") else None
    first = int(config.get("max_window_layers", 0))
    return layer_windows(config, window, lambda layer: layer >= first)
