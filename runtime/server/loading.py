"""Builds the engine from the server's configuration (on the loader thread, logging progress)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lorafleet.runtime.server.config import AdapterSource, ServerConfig

if TYPE_CHECKING:
    from lorafleet.runtime.engine import Engine


def resolve_adapter(source: AdapterSource, progress: Callable[[str], None]) -> str:
    """A local directory for `source`: pinned Hub revisions are downloaded here, since the
    engine takes an adapter as a directory or a repo id only."""
    if source.revision is None:
        return source.source
    from huggingface_hub import snapshot_download

    progress(f"downloading adapter {source.adapter_id} ({source.source}@{source.revision})")
    return snapshot_download(source.source, revision=source.revision)


def engine_kwargs(config: ServerConfig) -> dict[str, Any]:
    """The `Engine.from_pretrained` keywords the configuration sets (unset ones keep the
    engine's defaults)."""
    kwargs: dict[str, Any] = {
        "revision": config.revision,
        "dtype": config.dtype,
        "device": config.device,
        "max_input_tokens": config.max_input_tokens,
        "max_total_tokens": config.max_total_tokens,
        "max_batch_prefill_tokens": config.max_batch_prefill_tokens,
        "max_batch_total_tokens": config.max_batch_total_tokens,
        "max_loaded_adapters": config.max_loaded_adapters,
        "block_size": config.block_size,
        "num_kv_blocks": config.num_kv_blocks,
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def load_engine(config: ServerConfig, progress: Callable[[str], None]) -> Engine:
    """Loads the model and the `--lora-adapters`, then starts the engine loop."""
    from lorafleet.runtime.engine import Engine

    adapters = {s.adapter_id: resolve_adapter(s, progress) for s in config.lora_adapters}
    progress(f"loading {config.model_id} with {len(adapters)} adapter(s)")
    engine = Engine.from_pretrained(
        config.model_id, adapters=adapters, progress=progress, **engine_kwargs(config)
    )
    engine.start()
    return engine
