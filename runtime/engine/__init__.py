"""The inference engine: `Engine` plus the request/response types it shares with the server."""

from lorafleet.runtime.engine.llm_engine import Engine, EngineInfo, EngineStats
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
from lorafleet.runtime.tokenizer import Tokenizer

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
