"""The inference engine: `Engine` plus the request/response types it shares with the server."""

from lorafleet.runtime.args import AdapterSource, EngineArgs
from lorafleet.runtime.engine.llm_engine import Engine, EngineInfo, EngineStats
from lorafleet.runtime.errors import (
    AdapterLoadError,
    EngineError,
    EngineValidationError,
    GenerationError,
    ModelLoadError,
)
from lorafleet.runtime.tokenizer import Tokenizer
from lorafleet.runtime.types import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    SamplingParams,
    TokenEvent,
    TokenInfo,
)

__all__ = [
    "AdapterLoadError",
    "AdapterSource",
    "Engine",
    "EngineArgs",
    "EngineError",
    "EngineInfo",
    "EngineStats",
    "EngineValidationError",
    "FinishReason",
    "GenerationError",
    "GenerationRequest",
    "GenerationResult",
    "ModelLoadError",
    "PreparedRequest",
    "SamplingParams",
    "TokenEvent",
    "TokenInfo",
    "Tokenizer",
]
