"""The adapter loader matches, ranks and scales modules exactly as PEFT does.

Checked against PEFT itself: its own `check_target_module_exists` / `get_pattern_key` over real
module names of every architecture, and the `r` / `scaling` its `LoraLayer` objects hold after
loading each fixture adapter, module by module; then the served logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from lorafleet.runtime.adapters.loader import load_adapter
from lorafleet.runtime.adapters.peft_rules import PeftRules
from lorafleet.runtime.engine import AdapterLoadError, Engine
from lorafleet.runtime.models.loader import read_config
from lorafleet.runtime.models.lora_targets import lora_targets

from tests.fixtures import PATTERN_ADAPTERS, pattern_adapters, standard_adapters, tiny_model
from tests.runtime.oracle import corpus_prompts, engine_prefill_logits, reference_model

ARCHS = ["mistral", "qwen3", "gemma2", "phi3", "mixtral"]
CONFIGS: list[dict[str, Any]] = [
    {"target_modules": ["q_proj", "v_proj"], "rank_pattern": {"layers.1.self_attn.q_proj": 4}},
    {"target_modules": ["down_proj", "w2"], "layers_to_transform": [1], "layers_pattern": "layers"},
    {"target_modules": ["w1", "gate_up_proj", "o_proj"], "layers_to_transform": 0},
    {"target_modules": ["w1", "w3"], "layers_to_transform": [1], "alpha_pattern": {r"experts\.[13]\.w1": 64}},
    {"target_modules": r".*\.(q_proj|qkv_proj|experts\.0\.w2)", "rank_pattern": {"mlp.down_proj": 2}},
    {
        "target_modules": ["model.layers.0.self_attn.o_proj", "mlp.down_proj"],
        "exclude_modules": ["layers.1.mlp.down_proj"],
    },
    {
        "target_modules": ["k_proj", "gate", "up_proj"],
        "exclude_modules": r".*\.1\..*",
        "rank_pattern": {"gate": 6},
    },
    {
        "target_modules": ["q_proj", "gate_proj", "w3"],
        "rank_pattern": {"model.layers.0.self_attn.q_proj": 3, "proj": 5, r".*\.0\..*": 7},
        "alpha_pattern": {"_proj": 9, "w3": 11},
    },
]


def _module_names(arch: str) -> list[str]:
    return [*lora_targets(read_config(tiny_model(arch))[1]), "model.embed_tokens", "lm_head"]


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_target_rank_and_alpha_rules_agree_with_peft_on_every_real_module_name(index: int) -> None:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists
    from peft.utils.other import get_pattern_key

    config = LoraConfig(r=8, lora_alpha=16, **CONFIGS[index])
    saved = json.loads(json.dumps(config.to_dict(), default=list))  # as adapter_config.json holds it
    rules = PeftRules.from_config(saved, Path("adapter_config.json"), [])
    for arch in ARCHS:
        for name in _module_names(arch):
            found = check_target_module_exists(config, name)
            assert rules.targets(name) == (bool(found) and not isinstance(found, _ExcludedModule)), (
                arch,
                name,
            )
            rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), name), config.r)
            alpha = config.alpha_pattern.get(
                get_pattern_key(config.alpha_pattern.keys(), name), config.lora_alpha
            )
            assert (rules.rank(name), rules.alpha(name)) == (rank, alpha), (arch, name)


def _fixture_adapters(arch: str) -> dict[str, Path]:
    model_dir = tiny_model(arch)
    adapters = standard_adapters(model_dir)
    if arch not in ("phi3", "mixtral"):  # the pattern set uses Llama's module names
        adapters |= pattern_adapters(model_dir)
    return adapters


@pytest.mark.parametrize("arch", ARCHS)
def test_loader_rank_scale_and_weights_equal_peft_lora_layers_module_by_module(arch: str) -> None:
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    model_dir = tiny_model(arch)
    args = read_config(model_dir)[1]
    adapters = _fixture_adapters(arch)
    names = list(adapters)
    peft = PeftModel.from_pretrained(
        reference_model(model_dir, arch), adapters[names[0]], adapter_name=names[0]
    )
    for name in names[1:]:
        peft.load_adapter(adapters[name], adapter_name=name)
    layers = {n: m for n, m in peft.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    for name in names:
        ours = load_adapter(name, adapters[name], args, max_rank=64, dtype=torch.float32).modules
        theirs = {module: layer for module, layer in layers.items() if name in layer.r}
        assert set(ours) == set(theirs), name
        for module, layer in theirs.items():
            assert ours[module].lora_a.shape[0] == layer.r[name], (name, module)
            assert ours[module].scale == pytest.approx(layer.scaling[name], rel=1e-12), (name, module)
            assert torch.equal(ours[module].lora_a, layer.lora_A[name].weight), (name, module)
            assert torch.equal(ours[module].lora_b, layer.lora_B[name].weight), (name, module)


def test_pattern_fixtures_cover_full_partial_and_regex_keys() -> None:
    keys = [k for spec in PATTERN_ADAPTERS.values() for k, _ in spec.rank_pattern + spec.alpha_pattern]
    assert any(k.startswith("model.layers.") for k in keys)
    assert any(k.startswith("layers.") for k in keys)
    assert any("\\" in k for k in keys)
    assert any(isinstance(spec.target_modules, str) for spec in PATTERN_ADAPTERS.values())


@torch.no_grad()
def test_pattern_adapters_serve_the_logits_peft_computes() -> None:
    from peft import PeftModel

    model_dir = tiny_model("mistral")
    adapters = pattern_adapters(model_dir)
    engine = Engine.from_pretrained(
        model_dir, adapters={k: str(v) for k, v in adapters.items()}, progress=lambda _: None
    )
    ids = corpus_prompts(engine, 1)[0]
    names = list(adapters)
    peft = PeftModel.from_pretrained(
        reference_model(model_dir, "mistral"), adapters[names[0]], adapter_name=names[0]
    )
    for name in names[1:]:
        peft.load_adapter(adapters[name], adapter_name=name)
    for name in names:
        peft.set_adapter(name)
        expected = peft(torch.tensor([ids])).logits[0]
        torch.testing.assert_close(
            engine_prefill_logits(engine, ids, name), expected, atol=1e-4, rtol=0, msg=name
        )


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "adapter"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bias": "lora_only"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"target_parameters": ["experts.gate_up_proj"]}, "target_parameters"),
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": r"model\.embed_tokens|.*q_proj"}, "embed_tokens"),
        ({"target_modules": ["v_proj"]}, "does not target"),  # the weights have q_proj too
        ({"layers_to_transform": [0], "layers_pattern": "layers"}, "does not target"),
        ({"rank_pattern": {"layers.1.self_attn.q_proj": 4}}, r"model\.layers\.1\.self_attn\.q_proj.*rank 8"),
        ({"target_modules": "q_proj(("}, "target_modules pattern .* is not a valid regex"),
        ({"rank_pattern": {"[unclosed": 4}}, "rank_pattern pattern .* is not a valid regex"),
        ({"alpha_pattern": {"x" * 5000: 4}}, "alpha_pattern pattern is longer"),
        ({"layers_to_transform": "all"}, "invalid LoRA config"),
    ],
)
def test_configs_beyond_plain_lora_or_disagreeing_with_their_weights_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    model_dir = tiny_model("mistral")
    folder = _copy(standard_adapters(model_dir)["r8-qv"], tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text()) | change
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterLoadError, match=message):
        load_adapter("t", folder, read_config(model_dir)[1], max_rank=64, dtype=torch.float32)
