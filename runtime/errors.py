"""The runtime's errors: one root, raised where bad input enters; the server maps them to HTTP.

They live at the top of the package so that every layer (models, adapters, tokenizer, engine)
can raise them without importing the engine.
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of the runtime's errors."""


class EngineValidationError(EngineError):
    """A request the engine refuses before running it (bad parameter, too long, ...)."""


class AdapterLoadError(EngineValidationError):
    """An adapter id that cannot be found, downloaded or validated against the base model."""


class GenerationError(EngineError):
    """A request that failed while running; other requests of the batch are unaffected."""


class ModelLoadError(EngineError):
    """A checkpoint that cannot be read: missing or corrupt file, unsupported architecture."""
