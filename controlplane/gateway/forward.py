"""Relaying a replica's answer to the client as it comes, and the headers that may cross.

Nothing is buffered on the way back: what the replica sent since the last write (an SSE event,
a piece of a JSON body) goes to the client at once. Only `Content-Type`, `Accept`, `User-Agent`
and the request id go to the replica, with the replica's own key as `Authorization`: the
client's token and cookies never reach a replica, and the replica's key never reaches a client.
Hop-by-hop response headers stay behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from lorafleet.controlplane.gateway.errors import Send
from lorafleet.controlplane.gateway.upstream import Connection, ReplicaTimeout, UpstreamError

FORWARDED_REQUEST_HEADERS = frozenset({b"content-type", b"accept", b"user-agent"})
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                        b"proxy-authenticate", b"proxy-authorization", b"server", b"date",
                        b"www-authenticate", b"x-request-id"})


def request_headers(client_headers: Iterable[tuple[bytes, bytes]], api_key: str,
                    request_id: str) -> list[tuple[bytes, bytes]]:
    """What the replica receives: the forwarded headers, its key and the request id."""
    headers = [(name, value) for name, value in client_headers if name in FORWARDED_REQUEST_HEADERS]
    headers += [(b"authorization", b"Bearer " + api_key.encode("latin-1")),
                (b"x-request-id", request_id.encode("latin-1"))]
    return headers


@dataclass
class Relayed:
    """How a relayed answer went."""

    status: int
    first_byte_at: float | None = None  # perf_counter of the first body bytes
    streamed: bool = False  # a `text/event-stream` answer
    broken: bool = False  # the replica's answer ended before its end


async def relay(connection: Connection, send: Send, request_id: str) -> Relayed:
    """Sends the replica's answer to the client chunk by chunk. A replica that breaks off mid-way
    (or stalls past the read timeout) ends an event stream with a TGI error event."""
    headers = [(name, value) for name, value in connection.headers if name not in HOP_BY_HOP]
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    content_type = next((v for n, v in connection.headers if n == b"content-type"), b"")
    result = Relayed(connection.status, streamed=content_type.startswith(b"text/event-stream"))
    await send({"type": "http.response.start", "status": connection.status, "headers": headers})
    try:
        async for chunk in connection.chunks():
            if result.first_byte_at is None:
                result.first_byte_at = time.perf_counter()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except UpstreamError as e:
        result.broken = True
        if result.streamed:
            timeout = isinstance(e, ReplicaTimeout)
            event = {"error": f"the replica stopped answering: {e}",
                     "error_type": "timeout" if timeout else "bad_gateway"}
            line = b"data: " + json.dumps(event).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return result
