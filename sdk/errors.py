"""Errors raised by the lorafleet SDK.

Every error derives from [`LorafleetError`] and carries the server's message, the HTTP status
code and the request id when there was a response. The two errors that `InferenceEndpoint.wait()`
raises also derive from `huggingface_hub`'s own, so code written against `huggingface_hub`
(`except InferenceEndpointTimeoutError:`) keeps working unchanged.

```
LorafleetError
├── EndpointNotFound      404
├── Conflict              409 (duplicate name, action not allowed in the current state)
├── ValidationError       400, 422 (bad input)
├── AuthenticationError   401, 403
├── EndpointFailed        ended `failed` / `updateFailed` (huggingface_hub.InferenceEndpointError)
├── Timeout               wait() ran out of time (InferenceEndpointTimeoutError, TimeoutError)
└── NetworkError          the server could not be reached (after retries, for idempotent calls)
```
Other statuses (429, 5xx, ...) raise `LorafleetError` itself with `status_code` set.
"""

from __future__ import annotations

from huggingface_hub.errors import InferenceEndpointError, InferenceEndpointTimeoutError

__all__ = [
    "AuthenticationError",
    "Conflict",
    "EndpointFailed",
    "EndpointNotFound",
    "LorafleetError",
    "NetworkError",
    "Timeout",
    "ValidationError",
]


class LorafleetError(Exception):
    """Root of every error the SDK raises.

    Args:
        message (`str`):
            What went wrong, in the server's words when there was a response.
        status_code (`int`, *optional*):
            HTTP status of the response that caused the error, if any.
        request_id (`str`, *optional*):
            The server's request id (`X-Request-Id`), to quote when reporting a problem.
        body (`object`, *optional*):
            The decoded response body (a dict for JSON, else the text).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        text = self.message
        if self.status_code is not None:
            text = f"{text} (HTTP {self.status_code})"
        if self.request_id:
            text = f"{text} [request id: {self.request_id}]"
        return text


class EndpointNotFound(LorafleetError):
    """The endpoint does not exist in this namespace (HTTP 404)."""


class Conflict(LorafleetError):
    """The request conflicts with the endpoint's current state, e.g. a duplicate name (HTTP 409)."""


class ValidationError(LorafleetError):
    """The server rejected the request's content (HTTP 400 or 422)."""


class AuthenticationError(LorafleetError):
    """The token is missing, invalid or not allowed to do this (HTTP 401 or 403; a 403 is also a
    namespace quota the request would exceed, named in the message)."""


class NetworkError(LorafleetError):
    """The server could not be reached, or the connection broke before a response arrived."""


class EndpointFailed(LorafleetError, InferenceEndpointError):
    """The endpoint ended in `failed` or `updateFailed`; `message` holds the server's status message."""


class Timeout(LorafleetError, InferenceEndpointTimeoutError):
    """`wait()` gave up before the endpoint was ready; `message` says in which state it was."""


_BY_STATUS: dict[int, type[LorafleetError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: EndpointNotFound,
    409: Conflict,
    422: ValidationError,
}


def error_class_for_status(status_code: int) -> type[LorafleetError]:
    """The error class that an HTTP error status maps to (`LorafleetError` when none is specific)."""
    return _BY_STATUS.get(status_code, LorafleetError)
