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
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
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
        ("gemma2", {"sliding_window": 16}),
        ("gemma3", {"sliding_window": 16}),
        ("gemma3", {"sliding_window": 16, "sliding_window_pattern": 3}),
    ],
)
def test_per_layer_windows_without_layer_types_follow_transformers_rules(
    tmp_path: Any, family: str, fields: dict[str, Any]
) -> None:
    import json

    import transformers

    config_cls = {
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma2": transformers.Gemma2Config,
        "gemma3": transformers.Gemma3TextConfig,
    }[family]
    config = json.loads((tiny_model(family) / "config.json").read_text())
    config.pop("layer_types", None)  # as checkpoints saved before transformers 4.54 are
    config |= {"num_hidden_layers": 7, **fields}
    (tmp_path / "config.json").write_text(json.dumps(config))
    expected = _windows_as_transformers_reads(config_cls, config)
    _, args = read_config(tmp_path)
    assert tuple(args.window(i) for i in range(7)) == expected


def test_phi3_longrope_with_partial_rotary_matches_transformers_frequencies() -> None:
    import torch
    import transformers
    from lorafleet.runtime.layers.rotary import RotaryEmbedding
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model_dir = tiny_model("phi3")
    config = transformers.AutoConfig.from_pretrained(model_dir)
    _, args = read_config(model_dir)
    ours = RotaryEmbedding(args.head_dim, args.rope_theta, args.rope_scaling, args.partial_rotary_factor)
    short, short_factor = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu")
    long, long_factor = ROPE_INIT_FUNCTIONS["longrope"](
        config, "cpu", seq_len=config.original_max_position_embeddings + 1
    )
    assert ours.rotary_dim == int(args.head_dim * config.partial_rotary_factor) < args.head_dim
    torch.testing.assert_close(ours.inv_freq, short.float(), rtol=0, atol=0)
    torch.testing.assert_close(ours.long_inv_freq, long.float(), rtol=0, atol=0)
    assert ours.attention_factor == pytest.approx(short_factor) == pytest.approx(long_factor)
    assert ours.attention_factor > 1.0 and not torch.allclose(short, long)


@pytest.mark.parametrize(
    ("arch", "field"),
    [
        ("phi3", "rope_scaling"),
        ("gemma2", "attn_logit_softcapping"),
        ("gemma2", "final_logit_softcapping"),
        ("gemma2", "layer_types"),
        ("gemma3", "layer_types"),
        ("gemma3", "rope_scaling"),
    ],
)
def test_family_feature_changes_transformers_logits(tmp_path: Any, arch: str, field: str) -> None:
    """Guards the oracle tests: removing `field` changes transformers' own logits on the fixture."""
    import json
    import shutil

    import torch

    from tests.runtime.oracle import reference_model

    source = tiny_model(arch)
    shutil.copytree(source, tmp_path / "model")
    config = json.loads((source / "config.json").read_text())
    # layer_types -> every layer global; the other fields -> off
    config[field] = ["full_attention"] * config["num_hidden_layers"] if field == "layer_types" else None
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        with_feature = reference_model(source, arch)(ids).logits
        without = reference_model(tmp_path / "model", arch)(ids).logits
    assert (with_feature - without).abs().max() > 1e-3


def test_phi3_fused_lora_is_one_slice_over_the_fused_output() -> None:
    """PEFT's LoRA on Phi-3's qkv_proj is one A [r, hidden] and one B [q+k+v, r]: the runtime keeps
    it as a single slice of the fused layer (one shrink, one expand), never as three."""
    from lorafleet.runtime.models.decoder import DecoderLayer

    from tests.fixtures import standard_adapters

    model_dir = tiny_model("phi3")
    adapter = standard_adapters(model_dir)["r8-qv"]
    engine = Engine.from_pretrained(model_dir, adapters={"qkv": str(adapter)}, progress=lambda _: None)
    args = engine.config.model
    fused = args.num_heads * args.head_dim + 2 * args.num_kv_heads * args.head_dim
    layer = engine.loop.runner.model.layers[0]
    assert isinstance(layer, DecoderLayer)
    assert layer.self_attn.qkv_proj.slice_widths == (fused,)
    assert layer.mlp.gate_up_proj.slice_widths == (2 * args.intermediate_size,)
    store = engine.adapters.store
    weights = store.weights(store.current("qkv").key).modules["model.layers.0.self_attn.qkv_proj"]
    assert tuple(weights.lora_a.shape) == (8, args.hidden_size) and tuple(weights.lora_b.shape) == (fused, 8)


@pytest.mark.parametrize(
    ("arch", "change", "message"),
    [
        ("gemma3", {"sliding_window_pattern": 0}, "sliding_window_pattern"),
        ("gemma2", {"layer_types": ["sliding_attention"]}, "layer_types"),
        ("gemma2", {"query_pre_attn_scalar": -4}, "query_pre_attn_scalar"),
        ("gemma2", {"attn_logit_softcapping": 0.0}, "soft-capping"),
        ("mixtral", {"num_experts_per_tok": 9}, "num_experts_per_tok"),
        ("phi3", {"partial_rotary_factor": 0.0}, "partial_rotary_factor"),
        (
            "phi3",
            {"rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
            "short_factor",
        ),
        ("qwen3", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "not supported"),
    ],
)
def test_hostile_or_broken_config_fields_are_refused_naming_config_json(
    tmp_path: Any, arch: str, change: dict[str, Any], message: str
) -> None:
    import json

    from lorafleet.runtime.models.loader import ModelLoadError

    config = json.loads((tiny_model(arch) / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=rf"config\.json.*{message}"):
        read_config(tmp_path)
