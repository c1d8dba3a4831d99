"""`EndpointUsage`: what an endpoint's adapters were used for, as `GET .../usage` reports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import LorafleetError


@dataclass(frozen=True)
class AdapterUsage:
    """One adapter's usage since the endpoint was created (`adapter` None: the base model).

    Token counts are the replicas' own; latencies are measured at the gateway (time to first
    token for streamed answers only), in milliseconds, None without a request yet.
    """

    adapter: str | None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None


@dataclass(frozen=True)
class EndpointUsage:
    """Per-adapter usage of an endpoint since `since`; `raw` is the server's JSON.

    Example:
        ```python
        >>> usage = get_inference_endpoint("mistral-7b-multi-lora").usage()
        >>> {a.adapter: a.output_tokens for a in usage.adapters}
        {None: 120, 'customer_support': 5120}
        ```
    """

    adapters: list[AdapterUsage]
    since: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, raw: Any) -> EndpointUsage:
        from .inference_endpoint import parse_timestamp

        try:
            adapters = [
                AdapterUsage(a["adapter"], int(a["requests"]), int(a["errors"]), int(a["inputTokens"]),
                             int(a["outputTokens"]), a.get("ttftP50Ms"), a.get("ttftP99Ms"),
                             a.get("latencyP50Ms"), a.get("latencyP99Ms"))
                for a in raw["adapters"]
            ]
            return cls(adapters, parse_timestamp(raw["since"]), raw)
        except (KeyError, TypeError, ValueError) as error:
            raise LorafleetError(f"Unexpected usage description from the server: {error!r}") from error
