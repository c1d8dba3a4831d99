"""Mistral: Llama's layout plus an optional sliding attention window on every layer."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args, layer_windows

ARCHITECTURES = ("MistralForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Mistral `config.json`."""
    return common_args(
        config, layer_windows=layer_windows(config, config.get("sliding_window"), lambda _: True)
    )
