"""The endpoint page's usage table and its small per-adapter charts (inline SVG, no script).

Built from `GET .../usage` (the table) and the per-minute rows of the last hour (the charts:
requests per minute, one polyline per adapter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

CHART_WIDTH, CHART_HEIGHT = 160, 32
CHART_MINUTES = 60
LABELS = {"": "base model", "?": "unknown adapter"}  # the base; refused requests naming no adapter of it


@dataclass(frozen=True)
class AdapterUsageView:
    adapter: str  # display name ("base model" for the base)
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    ttft_p50: str
    latency_p50: str
    latency_p99: str
    points: str  # SVG polyline points of requests per minute over the last hour
    peak: int  # the highest requests per minute on the chart

    @property
    def chart_label(self) -> str:
        return f"{self.adapter}: requests per minute over the last hour, peak {self.peak}"


def _ms(value: Any) -> str:
    return "–" if value is None else f"{float(value):.0f} ms"


def usage_views(usage: Mapping[str, Any], minutes: Iterable[tuple[str, datetime, Mapping[str, int]]],
                now: datetime) -> list[AdapterUsageView]:
    """One row per adapter of `usage` (the API's JSON), charted from `minutes` (adapter, minute,
    counters) up to `now`."""
    series: dict[str, dict[datetime, int]] = {}
    for adapter, minute, counters in minutes:
        series.setdefault(adapter, {})[minute] = series.get(adapter, {}).get(minute, 0) + counters["requests"]
    end = now.replace(second=0, microsecond=0)
    slots = [end - timedelta(minutes=CHART_MINUTES - 1 - i) for i in range(CHART_MINUTES)]
    rows = []
    for item in usage.get("adapters", []):
        adapter = item.get("adapter") or ""
        counts = [series.get(adapter, {}).get(slot, 0) for slot in slots]
        rows.append(AdapterUsageView(
            adapter=LABELS.get(adapter, adapter), requests=item["requests"], errors=item["errors"],
            input_tokens=item["inputTokens"], output_tokens=item["outputTokens"],
            ttft_p50=_ms(item.get("ttftP50Ms")), latency_p50=_ms(item.get("latencyP50Ms")),
            latency_p99=_ms(item.get("latencyP99Ms")), points=_points(counts), peak=max(counts),
        ))
    return rows


def _points(counts: list[int]) -> str:
    peak = max(counts) or 1
    step = CHART_WIDTH / max(1, len(counts) - 1)
    return " ".join(f"{i * step:.1f},{CHART_HEIGHT - 2 - (c / peak) * (CHART_HEIGHT - 4):.1f}"
                    for i, c in enumerate(counts))
