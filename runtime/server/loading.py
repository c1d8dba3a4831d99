"""Builds the engine from the server's configuration (logging progress)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lorafleet.runtime.server.config import ServerConfig

if TYPE_CHECKING:
    from lorafleet.runtime.engine import Engine


def load_engine(config: ServerConfig, progress: Callable[[str], None]) -> Engine:
    """Loads the model and the `--lora-adapters`, then starts the engine loop."""
    from lorafleet.runtime.engine import Engine

    progress(f"loading {config.engine.model_id} with {len(config.engine.adapters)} adapter(s)")
    engine = Engine.from_args(config.engine, progress)
    engine.start()
    return engine
