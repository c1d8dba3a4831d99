"""Reading and checking what a client sends, before anything reaches a replica.

Every limit here is checked before the thing it limits is read whole: header bytes (431), the
declared body size and then the bytes as they arrive (413), the request id (400), the
`X-Scale-Up-Timeout` header (400). Paths are matched against an allowlist of the runtime's public
routes; anything else (the runtime's admin routes, `/metrics`, `..` tricks) is 404, and the
replica's URL is built from the allowlisted path, never from the client's.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lorafleet.controlplane.gateway.errors import GatewayError

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Scope = MutableMapping[str, Any]

# The runtime's public routes, and the methods each answers.
ROUTES: dict[str, frozenset[str]] = {
    "/": frozenset({"GET", "POST"}),
    "/generate": frozenset({"POST"}),
    "/generate_stream": frozenset({"POST"}),
    "/info": frozenset({"GET"}),
    "/tokenize": frozenset({"POST"}),
    "/v1/chat/completions": frozenset({"POST"}),
    "/v1/completions": frozenset({"POST"}),
    "/v1/models": frozenset({"GET"}),
    "/health": frozenset({"GET"}),
    "/ping": frozenset({"GET"}),
}
HEALTH_ROUTES = frozenset({"/health", "/ping"})  # answered by the gateway itself (and GET /)
OPENAI_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
GENERATION_ROUTES = frozenset({"/", "/generate", "/generate_stream"}) | OPENAI_ROUTES
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_HEADERS = 100


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def route_path(scope: Scope) -> str:
    """The path below the gateway's mount point (`/endpoints`)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def split_path(path: str) -> tuple[str, str, str]:
    """`/{namespace}/{name}{route}` → (namespace, name, route); 404 when it is not that."""
    parts = path.split("/", 3)
    if len(parts) < 3 or parts[0] != "" or not parts[1] or not parts[2]:
        raise GatewayError(404, "not_found", "not found: endpoint URLs are /endpoints/{namespace}/{name}/...")
    return parts[1], parts[2], "/" + (parts[3] if len(parts) > 3 else "")


def check_headers(scope: Scope, max_bytes: int) -> None:
    headers = scope.get("headers", ())
    size = sum(len(k) + len(v) for k, v in headers)
    if size > max_bytes or len(headers) > MAX_HEADERS:
        raise GatewayError(431, "headers_too_large",
                           f"request headers too large: {len(headers)} headers, {size} bytes; the gateway "
                           f"accepts {MAX_HEADERS} headers and {max_bytes} bytes "
                           "(LORAFLEET_GATEWAY_MAX_HEADER_BYTES)")


def request_id(scope: Scope) -> str:
    """The client's `X-Request-Id` (checked), or a new one."""
    given = header(scope, b"x-request-id")
    if given is None:
        return uuid.uuid4().hex
    if not REQUEST_ID.match(given):
        message = "X-Request-Id must be 1-128 letters, digits, '.', '_', ':' or '-'"
        raise GatewayError(400, "validation", message, field="X-Request-Id")
    return given


def check_route(route: str, method: str) -> None:
    allowed = ROUTES.get(route)
    if allowed is None:
        raise GatewayError(404, "not_found", f"no route {route!r} on an endpoint; the gateway serves "
                           f"{', '.join(sorted(ROUTES))}")
    if method not in allowed:
        raise GatewayError(405, "method_not_allowed", f"{method} is not allowed on {route}",
                           headers={"Allow": ", ".join(sorted(allowed))})


def scale_up_timeout(scope: Scope, maximum: float) -> float | None:
    """`X-Scale-Up-Timeout` in seconds (None when absent); 400 unless a number in [0, maximum]."""
    raw = header(scope, b"x-scale-up-timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= maximum:  # also NaN
        raise GatewayError(400, "validation", f"X-Scale-Up-Timeout must be a number of seconds between 0 and "
                           f"{maximum:g}, got {raw[:40]!r}", field="X-Scale-Up-Timeout")
    return value


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit`."""
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.isdigit():
            raise GatewayError(400, "validation", "Content-Length must be a number of bytes")
        if int(declared) > limit:
            raise GatewayError(413, "payload_too_large", _too_large(f"Content-Length {declared}", limit))
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "payload_too_large", _too_large("the body", limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(what: str, limit: int) -> str:
    return f"request body too large: {what} exceeds {limit} bytes (LORAFLEET_GATEWAY_MAX_BODY_BYTES)"


def requested_adapter(route: str, body: bytes) -> tuple[str, Any]:
    """(the TGI `parameters.adapter_id`, '' for none; the OpenAI `model`, or None) of a generation body."""
    if route not in GENERATION_ROUTES:
        return "", None
    try:
        payload = json.loads(body)
    except ValueError:
        return "", None
    if not isinstance(payload, dict):
        return "", None
    if route in OPENAI_ROUTES or "messages" in payload:  # `POST /` with messages is a chat request
        return "", payload.get("model")
    parameters = payload.get("parameters")
    adapter = parameters.get("adapter_id") if isinstance(parameters, dict) else None
    return (adapter if isinstance(adapter, str) else ""), None
