"""Reads a PEFT LoRA adapter and validates it against the base model.

Accepted: `adapter_config.json` + `adapter_model.safetensors`, LoRA with `r`, `lora_alpha`,
`use_rslora`, `target_modules` (any subset of q/k/v/o/gate/up/down, list or regex) and
`rank_pattern`/`alpha_pattern`. Refused with a clear `AdapterLoadError`: pickled `.bin`
weights, `use_dora`, `modules_to_save`, other PEFT types, biases, shapes or modules that do not
fit the base. A different `base_model_name_or_path` only warns (paths differ between machines).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lorafleet.runtime.errors import AdapterLoadError
from lorafleet.runtime.models.decoder import LORA_MODULES, ModelArgs

logger = logging.getLogger(__name__)
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraModuleWeights:
    lora_a: torch.Tensor  # [r, K]
    lora_b: torch.Tensor  # [N, r]
    scale: float  # alpha / r, or alpha / sqrt(r) with rsLoRA


@dataclass(frozen=True)
class AdapterWeights:
    adapter_id: str
    source: str
    max_rank: int
    modules: dict[tuple[int, str], LoraModuleWeights]  # (layer, module) -> weights


def resolve_adapter_dir(source: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local folder as is, otherwise a Hub repo id (for sources the operator registered)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or str(source).startswith((".", "~")) or str(source).count("/") > 1:
        raise AdapterLoadError(f"adapter {str(source)!r}: no such directory")
    return download_hub_adapter(str(source), revision)


def download_hub_adapter(repo_id: str, revision: str | None = None) -> Path:
    """The adapter files of Hub repo `repo_id` via `snapshot_download` (honours HF_HUB_OFFLINE and
    the cache); never looks at the local filesystem for `repo_id` itself."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["adapter_config.json", "adapter_model.safetensors", "*.bin"],
            )
        )
    except Exception as e:  # network, offline mode, unknown repo, auth: all mean "cannot load"
        reason = f"{type(e).__name__}: {e}"[:300]  # Hub errors can be long; never echo them whole
        raise AdapterLoadError(f"adapter {repo_id!r}: not downloadable from the Hub: {reason}") from e


def read_adapter_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise AdapterLoadError(f"{path}: not found; a PEFT adapter needs adapter_config.json") from e
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterLoadError(f"{path}: unreadable: {e}") from e
    problems = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "bias": config.get("bias", "none") != "none",
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
    }
    for key, bad in problems.items():
        if bad:
            raise AdapterLoadError(f"{path}: {key}={config.get(key)!r} is not supported (plain LoRA only)")
    return config


def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    # PEFT: a pattern applies when the module name ends with it (as a regex), e.g. "down_proj".
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def _targets(config: dict[str, Any], path: Path) -> set[str]:
    targets = config.get("target_modules") or []
    if isinstance(targets, str):  # a regex over full module names
        return {
            m
            for m in LORA_MODULES
            if re.fullmatch(targets, f"model.layers.0.self_attn.{m}")
            or re.fullmatch(targets, f"model.layers.0.mlp.{m}")
        }
    unknown = [t for t in targets if t.split(".")[-1] not in LORA_MODULES]
    if unknown:
        raise AdapterLoadError(
            f"{path}: target module(s) {unknown} not supported (supported: {LORA_MODULES})"
        )
    return {t.split(".")[-1] for t in targets}


def load_adapter(
    adapter_id: str,
    folder: Path,
    base: ModelArgs,
    *,
    max_rank: int,
    dtype: torch.dtype,
    base_model_id: str | None = None,
) -> AdapterWeights:
    """Reads and validates the adapter in `folder`; weights end up on the CPU in `dtype`."""
    config = read_adapter_config(folder)
    config_path = folder / "adapter_config.json"
    declared_base = config.get("base_model_name_or_path")
    if base_model_id and declared_base and declared_base.rstrip("/") != str(base_model_id).rstrip("/"):
        logger.warning(
            "adapter %s was trained on %s, serving it on %s", adapter_id, declared_base, base_model_id
        )
    targets = _targets(config, config_path)
    tensors = _read_tensors(folder)
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _KEY.search(name)
        if not match:
            raise AdapterLoadError(f"{folder}: tensor {name!r} is not a LoRA weight of a supported module")
        layer, module, which = int(match[1]), match[2], match[3]
        if module not in LORA_MODULES or (targets and module not in targets):
            raise AdapterLoadError(f"{folder}: module {module!r} ({name}) is not a targetable projection")
        if layer >= base.num_layers:
            raise AdapterLoadError(f"{folder}: {name} is for layer {layer}; the base has {base.num_layers}")
        pairs.setdefault((layer, module), {})[which] = tensor
    modules = {}
    for (layer, module), pair in sorted(pairs.items()):
        modules[(layer, module)] = _module_weights(config, folder, base, layer, module, pair, max_rank, dtype)
    if not modules:
        raise AdapterLoadError(f"{folder}: adapter_model.safetensors holds no LoRA weights")
    return AdapterWeights(adapter_id, str(folder), max(w.lora_a.shape[0] for w in modules.values()), modules)


def _module_weights(
    config: dict[str, Any],
    folder: Path,
    base: ModelArgs,
    layer: int,
    module: str,
    pair: dict[str, torch.Tensor],
    max_rank: int,
    dtype: torch.dtype,
) -> LoraModuleWeights:
    where = f"{folder}: layers.{layer}.{module}"
    if set(pair) != {"A", "B"}:
        raise AdapterLoadError(f"{where}: needs both lora_A and lora_B weights")
    out_features, in_features = base.module_shape(module)
    a, b = pair["A"], pair["B"]
    rank = a.shape[0]
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_features or tuple(b.shape) != (out_features, rank):
        raise AdapterLoadError(
            f"{where}: shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit the base projection "
            f"({out_features}x{in_features}): expected A[r, {in_features}] and B[{out_features}, r]"
        )
    key = f"model.layers.{layer}.{module}"
    declared_rank = int(_pattern_value(config.get("rank_pattern") or {}, key, config.get("r", rank)))
    if declared_rank != rank:
        raise AdapterLoadError(f"{where}: weights have rank {rank}, adapter_config.json says {declared_rank}")
    if rank > max_rank:
        raise AdapterLoadError(f"{where}: rank {rank} exceeds the engine's max_lora_rank {max_rank}")
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, key, config.get("lora_alpha", rank)))
    scale = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
    return LoraModuleWeights(a.to(dtype).contiguous(), b.to(dtype).contiguous(), scale)


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise AdapterLoadError(
                f"{folder / 'adapter_model.bin'}: pickled .bin adapters are refused (they can run code); "
                "save the adapter with safe_serialization=True"
            )
        raise AdapterLoadError(f"{path}: not found")
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # corrupt header or data
        raise AdapterLoadError(f"{path}: corrupt or unreadable safetensors file: {e}") from e
