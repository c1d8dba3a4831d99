"""Adapter weights in host memory, by id: loaded on first use, kept LRU, thread-safe.

Requests may name an adapter the engine has never seen: its id is then read as a local folder
or a Hub repo id (dynamic loading). `register` maps an id to a source (the `LORA_ADAPTERS` list).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from lorafleet.runtime.adapters.loader import AdapterWeights, resolve_adapter_dir


class AdapterStore:
    def __init__(self, load: Callable[[str, str], AdapterWeights], capacity: int) -> None:
        self._load = load  # (adapter_id, source) -> validated weights
        self._capacity = max(1, capacity)
        self._sources: dict[str, str] = {}
        self._cache: OrderedDict[str, AdapterWeights] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def register(self, adapter_id: str, source: str) -> None:
        with self._lock:
            self._sources[adapter_id] = source

    def get(self, adapter_id: str) -> AdapterWeights:
        """The adapter's weights, loading (and validating) them if they are not cached."""
        with self._lock:
            if adapter_id in self._cache:
                self._cache.move_to_end(adapter_id)
                return self._cache[adapter_id]
            source = self._sources.get(adapter_id, adapter_id)
            gate = self._loading.setdefault(adapter_id, threading.Lock())
        with gate:  # one load per id at a time; others wait for it and then hit the cache
            with self._lock:
                if adapter_id in self._cache:
                    return self._cache[adapter_id]
            weights = self._load(adapter_id, source)
            with self._lock:
                self._cache[adapter_id] = weights
                while len(self._cache) > self._capacity:
                    self._cache.popitem(last=False)
                self._sources.setdefault(adapter_id, source)
            return weights


__all__ = ["AdapterStore", "resolve_adapter_dir"]
