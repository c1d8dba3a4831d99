"""Talking to replicas: one request out with the replica's key, its answer relayed as it comes.

Nothing is buffered on the way back: each chunk the replica sends (an SSE event, a piece of a JSON
body) goes to the client as soon as it arrives (`aiter_raw`). Hop-by-hop headers stay behind; the
client's own `Authorization` never reaches a replica (the gateway sends the replica's key) and the
replica's key never reaches a client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from lorafleet.controlplane.gateway.errors import Send
from lorafleet.controlplane.gateway.registry import ReplicaRoute

# Failures where the replica cannot have started on the request: safe to send it to another one.
RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
FORWARDED_REQUEST_HEADERS = frozenset({"content-type", "accept", "user-agent"})
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-authenticate", "proxy-authorization", "server", "date", "www-authenticate"})


class Upstream:
    """The gateway's connection pool to replicas (keep-alive, HTTP/1.1)."""

    def __init__(self, connect_timeout_s: float, read_timeout_s: float) -> None:
        timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s,
                                pool=connect_timeout_s)
        limits = httpx.Limits(max_connections=2048, max_keepalive_connections=256, keepalive_expiry=30)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits)

    async def send(self, replica: ReplicaRoute, method: str, path: str, body: bytes,
                   headers: Iterable[tuple[bytes, bytes]], request_id: str) -> httpx.Response:
        """Sends the request and returns once the replica's status and headers arrived (the body is
        read by `relay`). Raises `RETRYABLE` errors when the replica could not take it."""
        out = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
               if name.decode("latin-1").lower() in FORWARDED_REQUEST_HEADERS}
        out.update({"authorization": f"Bearer {replica.api_key}", "x-request-id": request_id,
                    "accept-encoding": "identity"})
        request = self.client.build_request(method, replica.url + path, content=body, headers=out)
        return await self.client.send(request, stream=True)

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class Relayed:
    """How a relayed answer went."""

    status: int
    first_byte_at: float | None = None  # perf_counter of the first body bytes
    streamed: bool = False  # a `text/event-stream` answer
    broken: bool = False  # the replica's answer ended before its end


async def relay(response: httpx.Response, send: Send, request_id: str) -> Relayed:
    """Sends the replica's answer to the client chunk by chunk. A replica that breaks off mid-way
    (or stalls past the read timeout) ends an event stream with a TGI error event."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.multi_items()
               if k.lower() not in HOP_BY_HOP and k.lower() != "x-request-id"]
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    result = Relayed(response.status_code,
                     streamed=response.headers.get("content-type", "").startswith("text/event-stream"))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    try:
        async for chunk in response.aiter_raw():
            if result.first_byte_at is None:
                result.first_byte_at = time.perf_counter()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except httpx.HTTPError as e:
        result.broken = True
        if result.streamed:
            timeout = isinstance(e, httpx.TimeoutException)
            event = {"error": "the replica stopped answering" + (" (timeout)" if timeout else ""),
                     "error_type": "timeout" if timeout else "bad_gateway"}
            line = b"data: " + json.dumps(event).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return result
