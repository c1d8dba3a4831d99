"""Rate limits (`gateway/limits.py`): request buckets per endpoint and adapter, tokens per minute."""

from __future__ import annotations

from datetime import datetime, timedelta

from lorafleet.controlplane.gateway.limits import RateLimiter, RateLimits

NOW = datetime(2026, 1, 1, 12, 0, 30)


def limits(**value: object) -> RateLimits:
    return RateLimits.from_stored(value)


def test_requests_per_second_allows_a_burst_of_one_second_then_refuses_with_retry_after() -> None:
    limiter, rule = RateLimiter(), limits(requestsPerSecond=2)
    assert [limiter.check(1, "", rule, monotonic=10.0, now=NOW) for _ in range(2)] == [None, None]
    refusal = limiter.check(1, "", rule, monotonic=10.0, now=NOW)
    assert refusal is not None and refusal.limit == "requestsPerSecond" and refusal.retry_after_s == 1
    assert "2 requests per second" in refusal.message
    assert limiter.check(1, "", rule, monotonic=10.5, now=NOW) is None  # refilled at 2/s


def test_per_adapter_limits_apply_to_each_adapter_on_its_own() -> None:
    limiter, rule = RateLimiter(), limits(perAdapter={"requestsPerSecond": 1})
    assert limiter.check(1, "a", rule, monotonic=0.0, now=NOW) is None
    assert limiter.check(1, "b", rule, monotonic=0.0, now=NOW) is None
    refused = limiter.check(1, "a", rule, monotonic=0.0, now=NOW)
    assert refused is not None and "adapter 'a'" in refused.message
    assert limiter.check(2, "a", rule, monotonic=0.0, now=NOW) is None  # another endpoint


def test_a_refused_request_takes_nothing_from_the_other_limit() -> None:
    limiter = RateLimiter()
    rule = limits(requestsPerSecond=2, perAdapter={"requestsPerSecond": 1})
    assert limiter.check(1, "a", rule, monotonic=0.0, now=NOW) is None
    assert limiter.check(1, "a", rule, monotonic=0.0, now=NOW) is not None  # the adapter's limit
    assert limiter.check(1, "b", rule, monotonic=0.0, now=NOW) is None  # the endpoint still had one


def test_tokens_per_minute_weighs_the_last_minute_by_what_is_still_inside_the_window() -> None:
    limiter = RateLimiter()
    minute = NOW.replace(second=0)
    limiter.tokens.replace([(1, "a", minute - timedelta(minutes=1), 100), (1, "a", minute, 40),
                            (1, "b", minute, 10), (2, "a", minute, 1000)])
    # 30 s into the minute: half of the previous minute still counts.
    assert limiter.tokens.used(1, "a", NOW) == 40 + 50
    assert limiter.tokens.used(1, None, NOW) == 40 + 50 + 10
    assert limiter.check(1, "a", limits(tokensPerMinute=101), monotonic=0.0, now=NOW) is None
    refused = limiter.check(1, "a", limits(tokensPerMinute=100), monotonic=0.0, now=NOW)
    assert refused is not None and refused.limit == "tokensPerMinute" and refused.retry_after_s == 30
    per_adapter = limits(perAdapter={"tokensPerMinute": 60})
    assert limiter.check(1, "b", per_adapter, monotonic=0.0, now=NOW) is None
    assert limiter.check(1, "a", per_adapter, monotonic=0.0, now=NOW) is not None
