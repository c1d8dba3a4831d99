"""Checkpoints load from single or sharded safetensors; bad folders fail naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lorafleet.runtime.errors import EngineError
from lorafleet.runtime.layers.rotary import rope_inv_freq
from lorafleet.runtime.models.decoder import DecoderModel, LoraCapacity
from lorafleet.runtime.models.loader import ModelLoadError, load_model, read_config

from tests.fixtures import tiny_model

CPU = torch.device("cpu")
NO_LORA = LoraCapacity(0, 8)


def _load(folder: Path, **kwargs) -> DecoderModel:  # type: ignore[no-untyped-def]
    return load_model(folder, read_config(folder)[1], **kwargs)


def _copy(tmp_path: Path, arch: str = "mistral") -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model(arch), dst)
    return dst


def test_sharded_checkpoint_loads_the_same_weights(tmp_path: Path) -> None:
    import transformers

    source = tiny_model("qwen2")
    sharded = tmp_path / "sharded"
    model = transformers.AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (
        sharded / "model.safetensors"
    ).exists()
    ours = _load(sharded, dtype=torch.float32, device=CPU, lora=NO_LORA)
    single = _load(source, dtype=torch.float32, device=CPU, lora=NO_LORA)
    for (name, a), (_, b) in zip(ours.state_dict().items(), single.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_half_precision_dtypes_load(tmp_path: Path) -> None:
    model = _load(tiny_model("llama"), dtype=torch.bfloat16, device=CPU, lora=NO_LORA)
    assert model.embed_tokens.weight.dtype is torch.bfloat16
    assert model.lm_head_weight is model.embed_tokens.weight  # llama fixture ties embeddings


def test_missing_weights_name_the_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        _load(folder, dtype=torch.float32, device=CPU, lora=NO_LORA)


def test_corrupt_weights_name_the_file(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        _load(folder, dtype=torch.float32, device=CPU, lora=NO_LORA)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel"):
        _load(folder, dtype=torch.float32, device=CPU, lora=NO_LORA)


def test_missing_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="config.json"):
        _load(tmp_path, dtype=torch.float32, device=CPU, lora=NO_LORA)


def test_llama3_rope_scaling_matches_transformers() -> None:
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.AutoConfig.from_pretrained(tiny_model("llama"))
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = config.hidden_size // config.num_attention_heads
    ours = rope_inv_freq(head_dim, config.rope_theta, config.rope_scaling)
    torch.testing.assert_close(ours, expected.float())
    assert not torch.allclose(ours, rope_inv_freq(head_dim, config.rope_theta, None))


def test_hub_model_id_resolves_from_the_offline_cache_and_reports_its_sha(
    monkeypatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as constants
    from lorafleet.runtime.engine import Engine

    commit = "a" * 40
    repo = tmp_path / "models--acme--tiny-mistral"
    shutil.copytree(tiny_model("mistral"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    engine = Engine.from_pretrained("acme/tiny-mistral", progress=lambda _: None)
    assert engine.info.model_sha == commit and engine.info.model_id == "acme/tiny-mistral"
    with pytest.raises(EngineError, match="not downloadable"):
        Engine.from_pretrained("acme/not-cached", progress=lambda _: None)


def test_inconsistent_limits_are_refused_naming_the_flag() -> None:
    from lorafleet.runtime.engine import Engine

    with pytest.raises(EngineError, match="max_input_tokens"):
        Engine.from_pretrained(tiny_model("mistral"), max_input_tokens=100, max_total_tokens=100)
    with pytest.raises(EngineError, match="num_kv_blocks"):
        Engine.from_pretrained(tiny_model("mistral"), max_total_tokens=100, num_kv_blocks=2, block_size=16)
    with pytest.raises(EngineError, match="dtype"):
        Engine.from_pretrained(tiny_model("mistral"), dtype="int8")
