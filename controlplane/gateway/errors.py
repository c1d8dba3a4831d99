"""The gateway's own answers: JSON with TGI's shape, `{"error": ..., "error_type": ...}`.

Errors from replicas pass through unchanged (they already have that shape); these are the ones
the gateway makes itself: 400, 401, 404, 405, 413, 429, 431, 502, 503 and 504.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class GatewayError(Exception):
    """Answered as `status` with `{"error": message, "error_type": error_type, **extra}`."""

    def __init__(self, status: int, error_type: str, message: str, *,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type, **self.extra}


async def send_json(send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


async def send_error(send: Send, error: GatewayError, request_id: str | None = None) -> None:
    headers = dict(error.headers)
    if request_id:
        headers["x-request-id"] = request_id
    await send_json(send, error.status, error.body(), headers)
