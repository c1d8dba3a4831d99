"""What one gateway process counts between two flushes, and its live load.

Requests, errors and latency histograms per (endpoint, adapter) accumulate in memory (the event
loop's thread writes them); every `GATEWAY_FLUSH_S` the flusher swaps them out under a lock and
writes them to the database as this gateway's usage rows, with the endpoints that saw traffic
(their idle timer is reset) and the current load (pending and in-flight requests per endpoint, the
autoscaler's signal). A flush that fails gives its counts back, to go with the next one.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from lorafleet.controlplane.usage import histogram
from lorafleet.controlplane.usage.repository import UsageDelta


@dataclass
class Snapshot:
    """What a flush writes."""

    deltas: dict[tuple[int, str], UsageDelta] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)
    loads: dict[int, tuple[int, int]] = field(default_factory=dict)  # endpoint id → (pending, in flight)


class Meter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deltas: dict[tuple[int, str], UsageDelta] = {}
        self._touched: set[int] = set()
        self.pending: defaultdict[int, int] = defaultdict(int)  # endpoint id → waiting for a replica
        self.in_flight: defaultdict[int, int] = defaultdict(int)  # endpoint id → being served
        self.outstanding: defaultdict[str, int] = defaultdict(int)  # replica key → being served

    def record(self, endpoint_id: int, adapter: str, *, error: bool, latency_s: float,
               ttft_s: float | None) -> None:
        """One finished generation request."""
        with self._lock:
            delta = self._deltas.get((endpoint_id, adapter))
            if delta is None:
                delta = self._deltas[(endpoint_id, adapter)] = UsageDelta(latency=histogram.empty())
            delta.requests += 1
            delta.errors += int(error)
            assert delta.latency is not None
            histogram.observe(delta.latency, latency_s)
            if ttft_s is not None:
                if delta.ttft is None:
                    delta.ttft = histogram.empty()
                histogram.observe(delta.ttft, ttft_s)

    def touch(self, endpoint_id: int) -> None:
        """The endpoint got a request: it is not idle."""
        with self._lock:
            self._touched.add(endpoint_id)

    def take(self) -> Snapshot:
        """Swaps out what was counted since the last flush (endpoints still busy count as touched)."""
        with self._lock:
            deltas, touched = self._deltas, self._touched
            self._deltas, self._touched = {}, set()
        loads = {}
        for endpoint_id in set(self.pending) | set(self.in_flight):
            load = (self.pending.get(endpoint_id, 0), self.in_flight.get(endpoint_id, 0))
            if any(load):
                loads[endpoint_id] = load
                touched.add(endpoint_id)
        return Snapshot(deltas, touched, loads)

    def give_back(self, snapshot: Snapshot) -> None:
        """A flush failed: its counts go with the next one."""
        with self._lock:
            for key, delta in snapshot.deltas.items():
                mine = self._deltas.get(key)
                if mine is None:
                    self._deltas[key] = delta
                    continue
                mine.requests += delta.requests
                mine.errors += delta.errors
                for name in ("ttft", "latency"):
                    theirs = getattr(delta, name)
                    if theirs is not None:
                        setattr(mine, name, histogram.merge(getattr(mine, name) or histogram.empty(), theirs))
            self._touched |= snapshot.touched
