"""Each family's config.json is read as transformers reads it, and each family-specific feature
changes the model (so the oracle tests, which compare with transformers, cannot pass vacuously)."""

from __future__ import annotations

from typing import Any

import pytest
from lorafleet.runtime.engine import Engine
from lorafleet.runtime.models.loader import ARCHITECTURES, read_config

from tests.fixtures import tiny_model

FAMILIES = {
    "mistral": "MistralForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@pytest.mark.parametrize(("arch", "architecture"), FAMILIES.items())
def test_engine_info_names_the_checkpoints_architecture(arch: str, architecture: str) -> None:
    engine = Engine.from_pretrained(tiny_model(arch), max_loaded_adapters=0, progress=lambda _: None)
    assert engine.info.architecture == architecture
    assert architecture in ARCHITECTURES


def _windows_as_transformers_reads(config_cls: Any, config: dict[str, Any]) -> tuple[int | None, ...]:
    reference = config_cls(**config)
    window = getattr(reference, "sliding_window", None)
    return tuple(window if kind == "sliding_attention" else None for kind in reference.layer_types)


@pytest.mark.parametrize(
    ("family", "fields"),
    [
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2}),
        ("qwen2", {"use_sliding_window": False, "sliding_window": 16, "max_window_layers": 2}),
        ("qwen3", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}),
    ],
)
def test_per_layer_windows_without_layer_types_follow_transformers_rules(
    tmp_path: Any, family: str, fields: dict[str, Any]
) -> None:
    import json

    import transformers

    config_cls = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[family]
    config = json.loads((tiny_model(family) / "config.json").read_text())
    config.pop("layer_types", None)  # as checkpoints saved before transformers 4.54 are
    config |= {"num_hidden_layers": 4, **fields}
    (tmp_path / "config.json").write_text(json.dumps(config))
    expected = _windows_as_transformers_reads(config_cls, config)
    _, args = read_config(tmp_path)
    assert tuple(args.window(i) for i in range(4)) == expected
