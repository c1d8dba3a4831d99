"""HTTP plumbing shared by the sync and async clients: calls, retries and error mapping.

Nothing here does I/O by itself except `send_sync` / `send_async`, which run one `ApiCall`
through an httpx client with the retry policy. Network failures are retried with exponential
backoff only for idempotent methods (GET, HEAD, PUT, DELETE): a POST that may have reached the
server is never sent twice.
"""

from __future__ import annotations

import asyncio
import json
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import LorafleetError, NetworkError, error_class_for_status

__version__ = "0.1.0"
USER_AGENT = f"lorafleet/{__version__}; httpx/{httpx.__version__}; python/{platform.python_version()}"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# Failures where the request may not have been processed; anything else is a real response.
RETRYABLE_EXCEPTIONS = (httpx.TransportError,)


@dataclass(frozen=True)
class RetryPolicy:
    """How network failures of idempotent calls are retried.

    Args:
        max_attempts (`int`): total tries, the first included (1 disables retries).
        backoff (`float`): seconds before the second try; doubles after each failure.
        max_backoff (`float`): upper bound of one pause, in seconds.
    """

    max_attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 4.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")

    def pauses(self) -> Iterator[float]:
        """Seconds to wait before each retry (`max_attempts - 1` values)."""
        for attempt in range(self.max_attempts - 1):
            yield min(self.backoff * (2**attempt), self.max_backoff)


@dataclass(frozen=True)
class ApiCall:
    """One REST call: method, path below the base URL, optional JSON body."""

    method: str
    path: str
    json_body: Any = None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def is_idempotent(self) -> bool:
        return self.method.upper() in IDEMPOTENT_METHODS


def auth_headers(token: str | None) -> dict[str, str]:
    """Headers for every request: the user agent and, if there is a token, a bearer authorization."""
    headers = {"user-agent": USER_AGENT}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


def build_request(
    http: httpx.Client | httpx.AsyncClient, base_url: str, call: ApiCall, token: str | None
) -> httpx.Request:
    """The httpx request for `call` (no body and no content type when there is no JSON body)."""
    return http.build_request(
        call.method,
        f"{base_url}{call.path}",
        json=call.json_body,
        params=call.params or None,
        headers=auth_headers(token),
    )


def decode_body(response: httpx.Response) -> Any:
    """The response body as JSON when it is JSON, else as text."""
    if not response.content:
        return None
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text


def _message_from_body(body: Any) -> str | None:
    """The human message in an error body: `error`, `error_description`, `errors[]` or FastAPI's `detail`."""
    if isinstance(body, str):
        stripped = body.strip()
        return None if not stripped or stripped.lower().startswith(("<!doctype", "<html")) else stripped
    if not isinstance(body, dict):
        return None
    parts: list[str] = []
    error = body.get("error")
    if isinstance(error, str):
        parts.append(error)
    elif isinstance(error, list):
        parts.extend(str(item) for item in error)
    if isinstance(body.get("error_description"), str):
        parts.append(body["error_description"])
    for item in body.get("errors") or []:
        if isinstance(item, dict) and item.get("message"):
            parts.append(str(item["message"]))
    detail = body.get("detail")
    if isinstance(detail, str):
        parts.append(detail)
    elif isinstance(detail, list):  # FastAPI request validation: [{"loc": [...], "msg": "..."}]
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts) or None


def error_from_response(response: httpx.Response) -> LorafleetError:
    """The `LorafleetError` subclass for an error response, carrying the server's message."""
    body = decode_body(response)
    message = response.headers.get("x-error-message") or _message_from_body(body)
    if not message:
        reason = response.reason_phrase or "HTTP error"
        message = f"{reason} for {response.request.method} {response.request.url}"
    request_id = response.headers.get("x-request-id") or response.headers.get("x-amzn-trace-id")
    cls = error_class_for_status(response.status_code)
    return cls(message, status_code=response.status_code, request_id=request_id, body=body)


def raise_for_status(response: httpx.Response) -> None:
    """Raises the mapped `LorafleetError` when `response` is not a 2xx."""
    if not response.is_success:
        raise error_from_response(response)


def _network_error(call: ApiCall, url: str, error: Exception, attempts: int) -> NetworkError:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return NetworkError(
        f"{call.method} {url} failed{tries}: {type(error).__name__}: {error}. "
        "Is the control plane running there? (set LORAFLEET_URL or pass the URL)"
    )


def send_sync(
    http: httpx.Client, base_url: str, call: ApiCall, token: str | None, retry: RetryPolicy
) -> httpx.Response:
    """Sends `call`, retrying network failures of idempotent calls; returns the raw response."""
    pauses = iter(retry.pauses() if call.is_idempotent else ())
    attempts = 0
    while True:
        attempts += 1
        try:
            return http.send(build_request(http, base_url, call, token))
        except RETRYABLE_EXCEPTIONS as error:
            pause = next(pauses, None)
            if pause is None:
                raise _network_error(call, f"{base_url}{call.path}", error, attempts) from error
            time.sleep(pause)


async def send_async(
    http: httpx.AsyncClient, base_url: str, call: ApiCall, token: str | None, retry: RetryPolicy
) -> httpx.Response:
    """The async twin of `send_sync`."""
    pauses = iter(retry.pauses() if call.is_idempotent else ())
    attempts = 0
    while True:
        attempts += 1
        try:
            return await http.send(build_request(http, base_url, call, token))
        except RETRYABLE_EXCEPTIONS as error:
            pause = next(pauses, None)
            if pause is None:
                raise _network_error(call, f"{base_url}{call.path}", error, attempts) from error
            await asyncio.sleep(pause)
