"""Qwen3: Llama's layout with an RMSNorm over each head of q and k (before RoPE), an explicit
`head_dim` (not hidden / heads), no q/k/v bias by default, Qwen2's sliding-window rule."""

from __future__ import annotations

from typing import Any

from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.llama import common_args
from lorafleet.runtime.models.qwen2 import qwen_windows

ARCHITECTURES = ("Qwen3ForCausalLM",)


def model_args(config: dict[str, Any]) -> ModelArgs:
    """Reads a Qwen3 `config.json`."""
    return common_args(
        config,
        attention_bias=bool(config.get("attention_bias", False)),
        qk_norm=True,
        layer_windows=qwen_windows(config),
    )
