"""Mistral: Llama's layout plus an optional sliding attention window."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args

ARCHITECTURES = ("MistralForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Mistral `config.json`."""
    window = config.get("sliding_window")
    return common_args(config, attention_bias=False, sliding_window=int(window) if window else None)
