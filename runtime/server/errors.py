"""The server's errors and their one HTTP rendering: TGI's `{"error": ..., "error_type": ...}`.

Status codes and `error_type` values are TGI's, because `huggingface_hub` and `text-generation`
map `error_type` to their exception classes (`ValidationError`, `OverloadedError`, ...).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger("lorafleet.runtime.server")


class ServerError(Exception):
    """Root of the server's errors; carries the HTTP status and TGI's `error_type`."""

    status_code = 500
    error_type = "incomplete_generation"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class InputValidationError(ServerError):
    """A request refused before it runs: bad parameter, too long, unknown adapter."""

    status_code = 422
    error_type = "validation"

    def __init__(self, message: str) -> None:
        prefix = "Input validation error: "
        super().__init__(message if message.startswith(prefix) else prefix + message)


class OverloadedError(ServerError):
    """`--max-concurrent-requests` requests are already in flight."""

    status_code = 429
    error_type = "overloaded"


class GenerationFailedError(ServerError):
    """The engine failed this request while running it (other requests are unaffected)."""

    status_code = 424
    error_type = "generation"


class IncompleteGenerationError(ServerError):
    """The request ended without a final token (an internal failure)."""

    status_code = 500
    error_type = "incomplete_generation"


class NotFoundError(ServerError):
    """A name the replica does not serve (e.g. unloading an adapter that is not loaded)."""

    status_code = 404
    error_type = "not_found"


class NotReadyError(ServerError):
    """The model is still loading (or failed to load)."""

    status_code = 503
    error_type = "unhealthy"


def format_pydantic_errors(exc: RequestValidationError) -> str:
    """One line per problem, naming the field as the client spelled it."""
    parts = []
    for error in exc.errors():
        location = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON: {message}")
        elif error.get("type") == "value_error" or not location:
            parts.append(message)  # our validators' messages already name the field
        else:
            parts.append(f"`{'.'.join(location)}`: {message}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Renders every error of the app as TGI does."""

    @app.exception_handler(ServerError)
    async def _server_error(_: Request, exc: ServerError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = InputValidationError(format_pydantic_errors(exc))
        return JSONResponse(error.to_json(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while serving a request")
        # Bounded: an exception's text may quote client input.
        error = IncompleteGenerationError(f"Internal error: {type(exc).__name__}: {str(exc)[:300]}")
        return JSONResponse(error.to_json(), status_code=error.status_code)
