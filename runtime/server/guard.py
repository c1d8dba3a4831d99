"""The replica's front door: its API key and its request-body limit, before any route runs.

A pure ASGI middleware (no per-chunk wrapping of responses, so streams cost nothing extra):

- **API key** (`--api-key`/`API_KEY`): every request but `GET /health` and `/ping` (the control
  plane's probes) needs `Authorization: Bearer <key>`, compared in constant time; otherwise 401
  before the body is read. The key is never logged or echoed.
- **Payload limit** (`--payload-limit`/`PAYLOAD_LIMIT`, bytes): a `Content-Length` over it is
  refused at once, before the body is read; a chunked (or lying) body is counted as it arrives
  and refused as soon as it passes the limit, so at most `limit` bytes are ever held. A body within the
  limit is read here and replayed to the app in one message. The 413 keeps the connection open:
  uvicorn then discards the rest of the body as it arrives (never holding it), so a client that
  sends its whole body before reading still gets the 413 rather than a reset connection.

Refusals are TGI-shaped JSON: `{"error": ..., "error_type": "unauthorized" | "payload_too_large"}`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health", "/ping"})  # probes: no key, no body, no engine state beyond "ready"


class ReplicaGuard:
    def __init__(self, app: ASGIApp, *, api_key: str | None, payload_limit: int) -> None:
        self.app = app
        self._expected = api_key.encode() if api_key else None
        self.payload_limit = payload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _refuse(send, 401, "unauthorized", _UNAUTHORIZED, {"www-authenticate": "Bearer"})
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.payload_limit:
            await _refuse(send, 413, "payload_too_large", self._too_large(f"Content-Length {declared}"))
            return
        try:
            body = await self._read_body(receive)
        except _ClientGone:  # nobody is left to answer
            return
        if body is None:
            await _refuse(send, 413, "payload_too_large", self._too_large("the body sent so far"))
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorized(self, scope: Scope) -> bool:
        if self._expected is None or scope.get("path") in OPEN_PATHS:
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._expected)
        return False

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (the rest is never read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.payload_limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, what: str) -> str:
        return (
            f"Request body too large: {what} exceeds the payload limit of {self.payload_limit} bytes "
            "(--payload-limit/PAYLOAD_LIMIT)"
        )


class _ClientGone(Exception):
    """The client disconnected before its body arrived."""


_UNAUTHORIZED = "Unauthorized: this replica needs `Authorization: Bearer <its API key>`"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # uvicorn's parser refuses these first; be safe anyway
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The app's `receive`: the body in one message, then the connection's own messages
    (`http.disconnect`, which the server watches to cancel a request whose client left)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(
    send: Send, status: int, error_type: str, message: str, extra: dict[str, str] | None = None
) -> None:
    """A JSON refusal. Not `Connection: close`: closing a socket with unread input sends a reset,
    which makes most clients (still sending) lose the answer; uvicorn discards the unread body."""
    payload = json.dumps({"error": message, "error_type": error_type}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.encode(), v.encode()) for k, v in (extra or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
