"""Who calls an endpoint: the namespace of the bearer token, checked with a short cache.

The check is the REST API's own (`auth.service.authenticate`), run in a worker thread; a result
is trusted for `GATEWAY_AUTH_CACHE_S` (5 s), so a revoked token stops working within that time
and a client sending many requests costs one database query per 5 s. Unknown tokens are cached
too (for a second), so a flood of wrong tokens cannot hammer the database. The cache is keyed by
the token's SHA-256; the token itself is never logged or kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict

from lorafleet.controlplane.auth.service import Principal, authenticate
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.errors import UnauthorizedError

MAX_ENTRIES = 10_000
NEGATIVE_TTL_S = 1.0


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` value (None when absent or malformed)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Authenticator:
    def __init__(self, database: Database, ttl_s: float) -> None:
        self._database = database
        self._ttl_s = ttl_s
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    async def principal(self, token: str) -> Principal | None:
        """The token's principal, or None for an unknown or revoked token."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await asyncio.to_thread(self._check, token)
        ttl = self._ttl_s if found is not None else min(self._ttl_s, NEGATIVE_TTL_S)
        self._cache[key] = (time.monotonic() + ttl, found)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_ENTRIES:
            self._cache.popitem(last=False)
        return found

    def _check(self, token: str) -> Principal | None:
        with self._database.session() as session:
            try:
                return authenticate(session, f"Bearer {token}")
            except UnauthorizedError:
                return None
