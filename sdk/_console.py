"""Terminal output of the CLI: tables, JSON, and the progress line of long waits."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .adapters import EndpointAdapter
from .inference_endpoint import _EndpointState
from .usage import EndpointUsage

SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SPINNER_INTERVAL = 0.1  # seconds between two frames
LIST_COLUMNS = ("NAME", "STATUS", "REPOSITORY", "INSTANCE", "REPLICAS", "URL", "UPDATED")


def _when(endpoint: _EndpointState, attr: str) -> str:
    return getattr(endpoint, attr).strftime("%Y-%m-%d %H:%M:%S UTC")


def _compute(endpoint: _EndpointState) -> tuple[str, str]:
    compute = endpoint.raw.get("compute") or {}
    scaling = compute.get("scaling") or {}
    instance = f"{compute.get('instanceType', '?')} {compute.get('instanceSize', '')}".strip()
    replicas = f"{scaling.get('minReplica', '?')}-{scaling.get('maxReplica', '?')}"
    return instance, replicas


def render_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Left-aligned columns separated by two spaces."""
    all_rows = [list(header)] + [list(r) for r in rows] if header else [list(r) for r in rows]
    if not all_rows:
        return ""
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(all_rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in all_rows)
    return "\n".join(line.rstrip() for line in lines)


def endpoint_table(endpoint: _EndpointState) -> str:
    """Key/value description of one endpoint."""
    instance, replicas = _compute(endpoint)
    env = (endpoint.raw.get("model") or {}).get("env") or {}
    rows = [
        ("name", endpoint.name),
        ("namespace", endpoint.namespace),
        ("status", endpoint.status),
        ("message", endpoint.message or ""),
        ("url", endpoint.url or ""),
        ("repository", endpoint.repository),
        ("revision", endpoint.revision or ""),
        ("task", endpoint.task or ""),
        ("framework", endpoint.framework),
        ("type", endpoint.type),
        ("instance", instance),
        ("replicas", replicas),
        ("adapters", str(env.get("LORA_ADAPTERS", ""))),
        ("created", _when(endpoint, "created_at")),
        ("updated", _when(endpoint, "updated_at")),
    ]
    return render_table([(k, v) for k, v in rows if v != ""])


def endpoints_table(endpoints: Sequence[_EndpointState]) -> str:
    """One row per endpoint."""
    if not endpoints:
        return "No endpoints."
    rows = []
    for e in endpoints:
        instance, replicas = _compute(e)
        updated = _when(e, "updated_at")
        rows.append((e.name, e.status, e.repository, instance, replicas, e.url or "-", updated))
    return render_table(rows, LIST_COLUMNS)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


class Progress:
    """Shows the state of a waited-for endpoint on `stream`.

    On a terminal: one line redrawn every 0.1 s with a spinner, the state and the elapsed time.
    Elsewhere (logs, CI): one plain line each time the state or message changes.
    """

    def __init__(self, stream: TextIO, label: str) -> None:
        self.stream = stream
        self.label = label
        self.is_tty = bool(getattr(stream, "isatty", lambda: False)())
        self._state = "starting"
        self._last_printed: str | None = None
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, endpoint: _EndpointState) -> None:
        """Records the endpoint's latest state (called by `wait(on_update=...)`)."""
        state = endpoint.status + (f" - {endpoint.message}" if endpoint.message else "")
        self._state = state
        if not self.is_tty and state != self._last_printed:
            self._last_printed = state
            elapsed = time.monotonic() - self._started
            print(f"{self.label}: {state} ({elapsed:.0f}s)", file=self.stream, flush=True)

    def _draw_loop(self) -> None:
        for frame in itertools.cycle(SPINNER_FRAMES):
            elapsed = time.monotonic() - self._started
            self.stream.write(f"\r\033[K{frame} {self.label}: {self._state} ({elapsed:.0f}s)")
            self.stream.flush()
            if self._stop.wait(SPINNER_INTERVAL):
                return

    def __enter__(self) -> Progress:
        if self.is_tty:
            self._thread = threading.Thread(target=self._draw_loop, name="lorafleet-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write("\r\033[K")
            self.stream.flush()


USAGE_COLUMNS = ("ADAPTER", "REQUESTS", "ERRORS", "INPUT TOKENS", "OUTPUT TOKENS", "TTFT P50/P99 MS",
                 "LATENCY P50/P99 MS")


def _ms(p50: float | None, p99: float | None) -> str:
    return "-" if p50 is None else f"{p50:.1f} / {p99:.1f}"


def usage_table(usage: EndpointUsage) -> str:
    """One row per adapter (the base model first), then the period."""
    if not usage.adapters:
        return f"No requests since {usage.since:%Y-%m-%d %H:%M:%S UTC}."
    rows = [(a.adapter or "(base model)", str(a.requests), str(a.errors), str(a.input_tokens),
             str(a.output_tokens), _ms(a.ttft_p50_ms, a.ttft_p99_ms), _ms(a.latency_p50_ms, a.latency_p99_ms))
            for a in usage.adapters]
    return render_table(rows, USAGE_COLUMNS) + f"\nsince {usage.since:%Y-%m-%d %H:%M:%S UTC}"


ADAPTER_COLUMNS = ("ADAPTER", "SOURCE", "REVISION", "DIGEST", "READY", "STATE", "MESSAGE")


def adapters_table(adapters: Sequence[EndpointAdapter]) -> str:
    """One row per adapter of an endpoint's live set: readiness as `ready/target` replicas."""
    if not adapters:
        return "No adapters."
    rows = [(a.name, a.source, a.revision or "-", (a.digest or "-")[:12],
             f"{a.ready_replicas}/{a.target_replicas}", a.state,
             a.message.splitlines()[0][:80] if a.message else "")
            for a in adapters]
    return render_table(rows, ADAPTER_COLUMNS)
