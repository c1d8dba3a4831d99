"""Per-endpoint rate limits: requests per second and tokens per minute, overall and per adapter.

A tenant sets them in the endpoint spec (`rateLimits`, validated by `endpoints/schemas.py`):

    "rateLimits": {"requestsPerSecond": 20, "tokensPerMinute": 200000,
                   "perAdapter": {"requestsPerSecond": 5, "tokensPerMinute": 50000}}

* Requests per second: a token bucket per endpoint and per (endpoint, adapter), refilled at the
  rate with one second of burst. Each gateway process keeps its own buckets: with N gateways behind
  a load balancer an endpoint may get up to N times the rate.
* Tokens per minute: tokens are counted by the replicas (every route, exact) and collected into
  per-minute rows by the reconciler; gateways read them at each refresh and refuse new requests
  while the last minute's estimate (`this minute + last minute × the part of it still inside the
  window`) is at the limit. Shared by all gateways, but a few seconds late: a burst may overshoot.

Over a limit: 429 `{"error", "error_type": "rate_limited", "limit": ...}` with `Retry-After`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

MAX_BUCKETS = 10_000  # per gateway: least recently used (endpoint, adapter) buckets are dropped


@dataclass(frozen=True)
class Limit:
    requests_per_second: float | None = None
    tokens_per_minute: int | None = None

    @classmethod
    def from_stored(cls, value: Mapping[str, Any] | None) -> Limit:
        value = value or {}
        rps, tpm = value.get("requestsPerSecond"), value.get("tokensPerMinute")
        return cls(None if rps is None else float(rps), None if tpm is None else int(tpm))


@dataclass(frozen=True)
class RateLimits:
    overall: Limit = Limit()
    per_adapter: Limit = Limit()

    @classmethod
    def from_stored(cls, value: Mapping[str, Any] | None) -> RateLimits:
        value = value or {}
        return cls(Limit.from_stored(value), Limit.from_stored(value.get("perAdapter")))

    @property
    def limits_tokens(self) -> bool:
        return self.overall.tokens_per_minute is not None or self.per_adapter.tokens_per_minute is not None


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused and when to come back."""

    message: str
    limit: str
    retry_after_s: int


class TokenBucket:
    def __init__(self, rate: float, now: float) -> None:
        self.rate, self.capacity = rate, max(1.0, rate)
        self.tokens, self.updated = self.capacity, now

    def wait(self, now: float) -> float:
        """0 when a request may pass now, else the seconds until one may (nothing is taken)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1.0


class TokensPerMinute:
    """Tokens used per (endpoint id, adapter) and minute, as last read from the database."""

    def __init__(self) -> None:
        self._minutes: dict[tuple[int, str], dict[datetime, int]] = {}

    def replace(self, rows: list[tuple[int, str, datetime, int]]) -> None:
        minutes: dict[tuple[int, str], dict[datetime, int]] = {}
        for endpoint_id, adapter, minute, tokens in rows:
            minutes.setdefault((endpoint_id, adapter), {})[minute] = tokens
        self._minutes = minutes

    def used(self, endpoint_id: int, adapter: str | None, now: datetime) -> float:
        """Estimated tokens of the last 60 s (`adapter` None: all adapters of the endpoint)."""
        current = now.replace(second=0, microsecond=0)
        previous, weight = current - timedelta(minutes=1), 1.0 - (now - current).total_seconds() / 60
        total = 0.0
        for (eid, name), minutes in self._minutes.items():
            if eid == endpoint_id and (adapter is None or name == adapter):
                total += minutes.get(current, 0) + minutes.get(previous, 0) * weight
        return total


class RateLimiter:
    """The request buckets of one gateway process and its view of recent token use."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[tuple[int, str | None], TokenBucket] = OrderedDict()
        self.tokens = TokensPerMinute()

    def check(self, endpoint_id: int, adapter: str, limits: RateLimits, *, monotonic: float,
              now: datetime) -> Refusal | None:
        """None if the request may pass (it is then counted), else the refusal."""
        scopes = ((None, limits.overall), (adapter, limits.per_adapter))
        buckets = []
        for scope, limit in scopes:
            what = "the endpoint" if scope is None else f"adapter {scope or 'base'!r}"
            if limit.tokens_per_minute is not None:
                used = self.tokens.used(endpoint_id, scope, now)
                if used >= limit.tokens_per_minute:
                    return Refusal(f"rate limit: {what} used {used:.0f} tokens in the last minute; its "
                                   f"limit is {limit.tokens_per_minute} (rateLimits.tokensPerMinute)",
                                   "tokensPerMinute", max(1, 60 - now.second))
            if limit.requests_per_second is not None:
                bucket = self._bucket(endpoint_id, scope, limit.requests_per_second, monotonic)
                wait = bucket.wait(monotonic)
                if wait > 0:
                    return Refusal(f"rate limit: {what} allows {limit.requests_per_second:g} requests per "
                                   "second (rateLimits.requestsPerSecond)", "requestsPerSecond",
                                   max(1, math.ceil(wait)))
                buckets.append(bucket)
        for bucket in buckets:  # taken only once every limit let the request pass
            bucket.take()
        return None

    def _bucket(self, endpoint_id: int, scope: str | None, rate: float, now: float) -> TokenBucket:
        key = (endpoint_id, scope)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key] = TokenBucket(rate, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return bucket
