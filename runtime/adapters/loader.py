"""Reads a PEFT LoRA adapter and validates it against the base model.

Accepted: `adapter_config.json` + `adapter_model.safetensors` of a LoRA whose modules are
LoRA-targetable in the base architecture (`models/lora_targets.py`), matched, ranked and scaled
exactly as PEFT does it (`peft_rules.py`: `target_modules` list / regex / `all-linear`,
`layers_to_transform`, `layers_pattern`, `exclude_modules`, `rank_pattern`, `alpha_pattern`,
`use_rslora`). Refused with a clear `AdapterLoadError` naming the file and the field or module:
pickled `.bin` weights, DoRA, `modules_to_save`, biases, other PEFT types, a config that targets
modules the runtime cannot adapt (embeddings, LM head), weights for modules the config does not
target, shapes or ranks that do not fit. A different `base_model_name_or_path` only warns
(paths differ between machines).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lorafleet.runtime.adapters.peft_rules import PeftRules, refuse_unsupported
from lorafleet.runtime.errors import AdapterLoadError
from lorafleet.runtime.models.args import ModelArgs
from lorafleet.runtime.models.lora_targets import UNSUPPORTED, LoraTarget, lora_targets

logger = logging.getLogger(__name__)
# base_model.model.<module>.lora_A.weight (or .lora_A.<adapter name>.weight in old files)
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


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
    modules: dict[str, LoraModuleWeights]  # full module name (model.layers.1.mlp.down_proj) -> weights
    digest: str = ""  # adapters.digest.adapter_digest of its files (set by whoever read the folder)
    # Its largest rank in each paged projection group of the model it was read for (what it costs
    # on the device: adapters/residency.py); set by whoever knows the model's groups.
    group_ranks: dict[str, int] = field(default_factory=dict)


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
    if not isinstance(config, dict):
        raise AdapterLoadError(f"{path}: expected a JSON object")
    refuse_unsupported(config, path)
    return config


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
    targets = lora_targets(base)
    rules = PeftRules.from_config(config, config_path, targets)
    refused = [name for name in _unsupported_modules(base) if rules.targets(name)]
    if refused:
        raise AdapterLoadError(
            f"{config_path}: target_modules selects {refused[0]!r}, which {base.architecture} cannot serve "
            f"LoRA on (LoRA-targetable: {_short_names(targets)})"
        )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(folder).items():
        match = _KEY.match(key)
        if not match or match["module"] not in targets:
            raise AdapterLoadError(
                f"{folder}: tensor {key!r} is not a LoRA weight of a module {base.architecture} can adapt "
                f"(LoRA-targetable: {_short_names(targets)})"
            )
        if not rules.targets(match["module"]):
            raise AdapterLoadError(
                f"{folder}: tensor {key!r} is for {match['module']}, "
                "which adapter_config.json does not target"
            )
        pairs.setdefault(match["module"], {})[match["which"]] = tensor
    modules = {
        name: _module_weights(rules, folder, targets[name], pairs[name], max_rank, dtype)
        for name in targets
        if name in pairs
    }
    if not modules:
        raise AdapterLoadError(f"{folder}: adapter_model.safetensors holds no LoRA weights")
    return AdapterWeights(adapter_id, str(folder), max(w.lora_a.shape[0] for w in modules.values()), modules)


def _unsupported_modules(base: ModelArgs) -> list[str]:
    return [*UNSUPPORTED, *(f"model.layers.{i}" for i in range(base.num_layers))]


def _short_names(targets: dict[str, LoraTarget]) -> str:
    return ", ".join(dict.fromkeys(re.sub(r"^model\.layers\.\d+\.|experts\.\d+\.", "", n) for n in targets))


def _module_weights(
    rules: PeftRules,
    folder: Path,
    target: LoraTarget,
    pair: dict[str, torch.Tensor],
    max_rank: int,
    dtype: torch.dtype,
) -> LoraModuleWeights:
    where = f"{folder}: {target.name}"
    if set(pair) != {"A", "B"}:
        raise AdapterLoadError(f"{where}: needs both lora_A and lora_B weights")
    out_features, in_features = target.out_features, target.in_features
    a, b = pair["A"], pair["B"]
    rank = a.shape[0]
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_features or tuple(b.shape) != (out_features, rank):
        raise AdapterLoadError(
            f"{where}: shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit the base projection "
            f"({out_features}x{in_features}): expected A[r, {in_features}] and B[{out_features}, r]"
        )
    declared_rank = rules.rank(target.name)
    if declared_rank != rank:
        raise AdapterLoadError(
            f"{where}: weights have rank {rank}, adapter_config.json says {declared_rank} "
            "(r / rank_pattern, matched as PEFT matches them)"
        )
    if rank > max_rank:
        raise AdapterLoadError(f"{where}: rank {rank} exceeds the engine's max_lora_rank {max_rank}")
    return LoraModuleWeights(
        a.to(dtype).contiguous(), b.to(dtype).contiguous(), rules.scale(target.name, rank)
    )


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise AdapterLoadError(
                f"{folder / 'adapter_model.bin'}: pickled .bin adapters are refused (they can run code); "
                "save the adapter with safe_serialization=True"
            )
        raise AdapterLoadError(f"{path}: not found")
    from safetensors.torch import load

    try:
        # Read into memory, never memory-mapped: a file truncated or replaced later (by whoever owns
        # the folder) must not turn a read of cached weights into a SIGBUS of the whole replica.
        return load(path.read_bytes())
    except Exception as e:  # corrupt header or data
        raise AdapterLoadError(f"{path}: corrupt or unreadable safetensors file: {e}") from e
