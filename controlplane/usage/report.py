"""Usage as the API returns it (`GET /v2/endpoint/{ns}/{name}/usage`) and as Prometheus reads it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from lorafleet.controlplane.clock import to_wire
from lorafleet.controlplane.usage import histogram
from lorafleet.controlplane.usage.repository import AdapterTotals

BASE_LABEL = "base"  # the base model's `adapter` label in Prometheus (`null` in JSON)


def adapter_json(totals: AdapterTotals) -> dict[str, object]:
    return {
        "adapter": totals.adapter or None,
        "requests": totals.requests,
        "errors": totals.errors,
        "inputTokens": totals.input_tokens,
        "outputTokens": totals.output_tokens,
        "ttftP50Ms": histogram.quantile_ms(totals.ttft, 0.5),
        "ttftP99Ms": histogram.quantile_ms(totals.ttft, 0.99),
        "latencyP50Ms": histogram.quantile_ms(totals.latency, 0.5),
        "latencyP99Ms": histogram.quantile_ms(totals.latency, 0.99),
    }


def usage_json(totals: Mapping[str, AdapterTotals], since: datetime) -> dict[str, object]:
    """`{"adapters": [...], "since": ...}`, the base model first, then adapters by name."""
    ordered = sorted(totals.values(), key=lambda t: (t.adapter != "", t.adapter))
    return {"adapters": [adapter_json(t) for t in ordered], "since": to_wire(since)}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


COUNTERS = (
    ("lorafleet_gateway_requests_total", "requests", "Generation requests through the gateway"),
    ("lorafleet_gateway_errors_total", "errors", "Requests answered with an error (4xx/5xx, broken streams)"),
    ("lorafleet_gateway_input_tokens_total", "input_tokens", "Prompt tokens, as the replicas counted them"),
    ("lorafleet_gateway_output_tokens_total", "output_tokens", "Generated tokens, as replicas counted them"),
)
HISTOGRAMS = (
    ("lorafleet_gateway_time_to_first_token_seconds", "ttft", "Arrival to the first streamed byte (streams)"),
    ("lorafleet_gateway_request_duration_seconds", "latency", "Arrival at the gateway to the last byte"),
)


def prometheus(rows: Iterable[tuple[str, str, Mapping[str, AdapterTotals]]],
               gauges: Iterable[tuple[str, str, int, int]] = ()) -> str:
    """The text format: counters and histograms per (namespace, endpoint, adapter), from `rows`
    (namespace, endpoint, adapter totals), and this process's (pending, in flight) `gauges`."""
    series = [(ns, ep, t) for ns, ep, adapters in rows for t in adapters.values()]
    lines: list[str] = []
    for name, attribute, doc in COUNTERS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
        for ns, ep, t in series:
            lines.append(f"{name}{{{_labels(namespace=ns, endpoint=ep, adapter=t.adapter or BASE_LABEL)}}} "
                         f"{getattr(t, attribute)}")
    for name, attribute, doc in HISTOGRAMS:
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
        for ns, ep, t in series:
            labels = _labels(namespace=ns, endpoint=ep, adapter=t.adapter or BASE_LABEL)
            lines += _histogram_lines(name, labels, getattr(t, attribute))
    for name, index, doc in (("lorafleet_gateway_pending_requests", 2, "Requests waiting for a replica"),
                             ("lorafleet_gateway_in_flight_requests", 3, "Requests being served")):
        lines += [f"# HELP {name} {doc} (this gateway process)", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{_labels(namespace=g[0], endpoint=g[1])}}} {g[index]}" for g in gauges]
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, labels: str, counts: list[int]) -> list[str]:
    lines, cumulative = [], 0
    bounds = (*histogram.BOUNDS_S, float("inf"))
    for bound, count in zip(bounds, counts[: histogram.NUM_BUCKETS], strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else f"{bound:.6g}"
        lines.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
    lines.append(f"{name}_sum{{{labels}}} {histogram.sum_seconds(counts):.6f}")
    lines.append(f"{name}_count{{{labels}}} {cumulative}")
    return lines
