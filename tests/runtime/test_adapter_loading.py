"""PEFT adapters are read, validated against the base, and refused clearly when unsupported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from lorafleet.runtime.adapters.loader import load_adapter, resolve_adapter_dir
from lorafleet.runtime.engine import AdapterLoadError
from lorafleet.runtime.models.loader import read_config
from safetensors.torch import load_file, save_file

from tests.fixtures import standard_adapters, tiny_model


@pytest.fixture(scope="module")
def base():  # type: ignore[no-untyped-def]
    model_dir = tiny_model("mistral")
    return model_dir, read_config(model_dir)[1], standard_adapters(model_dir)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "adapter"
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def _load(folder: Path, args, **kw):  # type: ignore[no-untyped-def]
    return load_adapter("t", folder, args, max_rank=kw.pop("max_rank", 64), dtype=torch.float32, **kw)


def test_rank_and_alpha_patterns_and_rslora_give_peft_scales(base) -> None:  # type: ignore[no-untyped-def]
    _, args, adapters = base
    patterns = _load(adapters["r8-mlp-patterns"], args)
    assert patterns.modules["model.layers.0.mlp.down_proj"].lora_a.shape[0] == 4  # rank_pattern
    assert patterns.modules["model.layers.0.mlp.up_proj"].scale == pytest.approx(32 / 8)  # alpha_pattern
    assert patterns.modules["model.layers.0.mlp.gate_proj"].scale == pytest.approx(16 / 8)
    assert patterns.modules["model.layers.0.mlp.down_proj"].scale == pytest.approx(16 / 4)
    rslora = _load(adapters["r64-rslora"], args)
    assert rslora.modules["model.layers.1.self_attn.q_proj"].scale == pytest.approx(8 / 64**0.5)
    assert {m.rsplit(".", 1)[1] for m in _load(adapters["r8-qv"], args).modules} == {"q_proj", "v_proj"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "embed_tokens"),
        ({"r": 4}, "rank 8"),
    ],
)
def test_unsupported_configs_are_refused_naming_the_field(base, tmp_path, change, message) -> None:  # type: ignore[no-untyped-def]
    _, args, adapters = base
    folder = _copy(adapters["r8-qv"], tmp_path)
    _edit_config(folder, **change)
    with pytest.raises(AdapterLoadError, match=message):
        _load(folder, args)


def test_shape_mismatch_is_an_error_naming_the_module(base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, args, adapters = base
    folder = _copy(adapters["r8-qv"], tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in tensors if "layers.1.self_attn.v_proj.lora_B" in k)
    tensors[key] = torch.zeros(7, 8)
    save_file(tensors, folder / "adapter_model.safetensors")
    with pytest.raises(AdapterLoadError, match=r"layers\.1\.self_attn\.v_proj"):
        _load(folder, args)


def test_rank_above_the_engine_maximum_is_refused(base) -> None:  # type: ignore[no-untyped-def]
    _, args, adapters = base
    with pytest.raises(AdapterLoadError, match="max_lora_rank"):
        _load(adapters["r64-rslora"], args, max_rank=32)


def test_pickled_bin_weights_are_refused_with_a_clear_message(base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, args, adapters = base
    folder = _copy(adapters["r8-qv"], tmp_path)
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterLoadError, match=r"\.bin adapters are refused"):
        _load(folder, args)


def test_corrupt_weights_are_an_error_naming_the_file(base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, args, adapters = base
    folder = _copy(adapters["r8-qv"], tmp_path)
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors"):
        _load(folder, args)


def test_other_base_model_name_only_warns(base, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    model_dir, args, adapters = base
    folder = _copy(adapters["r8-qv"], tmp_path)
    _edit_config(folder, base_model_name_or_path="someone/else")
    weights = _load(folder, args, base_model_id=str(model_dir))
    assert weights.modules and "someone/else" in caplog.text


def test_hub_id_offline_and_not_cached_is_an_adapter_load_error(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AdapterLoadError, match="not downloadable"):
        resolve_adapter_dir("nobody/no-such-adapter")
    with pytest.raises(AdapterLoadError, match="no such directory"):
        resolve_adapter_dir(str(tmp_path / "missing"))


def test_hub_snapshot_in_the_local_cache_is_used_offline(base, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Lay out the cache as huggingface_hub does: snapshots/<commit> + refs/main.
    _, args, adapters = base
    repo = tmp_path / "models--acme--sql-lora"
    commit = "0" * 40
    shutil.copytree(adapters["r8-qv"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    folder = resolve_adapter_dir("acme/sql-lora")
    assert folder == repo / "snapshots" / commit
    assert _load(folder, args).modules
