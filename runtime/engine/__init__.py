"""The inference engine: `Engine` plus the request/response types it shares with the server.

`Engine`, `EngineInfo`, `EngineStats` and `Tokenizer` are imported on first access, so the
lower layers (models, adapters) can import the error types from here without a cycle.
"""

from typing import TYPE_CHECKING, Any

from lorafleet.runtime.engine.types import (
    AdapterLoadError,
    EngineError,
    EngineValidationError,
    FinishReason,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TokenEvent,
    TokenInfo,
)

if TYPE_CHECKING:
    from lorafleet.runtime.engine.llm_engine import Engine, EngineInfo, EngineStats
    from lorafleet.runtime.tokenizer import Tokenizer

_LAZY = {
    "Engine": "lorafleet.runtime.engine.llm_engine",
    "EngineInfo": "lorafleet.runtime.engine.llm_engine",
    "EngineStats": "lorafleet.runtime.engine.llm_engine",
    "Tokenizer": "lorafleet.runtime.tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterLoadError",
    "Engine",
    "EngineError",
    "EngineInfo",
    "EngineStats",
    "EngineValidationError",
    "FinishReason",
    "GenerationError",
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    "TokenEvent",
    "TokenInfo",
    "Tokenizer",
]
