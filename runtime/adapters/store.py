"""Adapter weights in host memory, by id: loaded on first use, kept LRU, thread-safe.

`register` maps an id to a source (the `LORA_ADAPTERS` list: a local folder or a Hub repo); an
id that was never registered reaches the loader with source None, meaning "the id is a Hub repo
id" (the engine lets only ids that pass `policy.check_request_adapter` get here). Concurrent
requests for the same cold id trigger one load; an id whose load fails leaves nothing behind
(no cache entry, no lock), so a flood of bogus ids costs no memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from lorafleet.runtime.adapters.loader import AdapterWeights, resolve_adapter_dir

# (adapter_id, source or None for an unregistered Hub id, revision) -> weights
Loader = Callable[[str, str | None, str | None], AdapterWeights]


class AdapterStore:
    def __init__(self, load: Loader, capacity: int) -> None:
        self._load = load  # validates too: raises AdapterLoadError
        self._capacity = max(1, capacity)
        self._sources: dict[str, tuple[str | None, str | None]] = {}
        self._cache: OrderedDict[str, AdapterWeights] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}  # id -> gate, only while a load is in flight

    def register(self, adapter_id: str, source: str, revision: str | None = None) -> None:
        with self._lock:
            self._sources[adapter_id] = (source, revision)

    def cached_ids(self) -> list[str]:
        """Ids whose weights are in host memory, least recently used first."""
        with self._lock:
            return list(self._cache)

    def is_registered(self, adapter_id: str) -> bool:
        with self._lock:
            return adapter_id in self._sources

    def get(self, adapter_id: str) -> AdapterWeights:
        """The adapter's weights, loading (and validating) them if they are not cached."""
        with self._lock:
            if adapter_id in self._cache:
                self._cache.move_to_end(adapter_id)
                return self._cache[adapter_id]
            source, revision = self._sources.get(adapter_id, (None, None))
            gate = self._loading.setdefault(adapter_id, threading.Lock())
        with gate:  # one load per id at a time; others wait for it and then hit the cache
            try:
                with self._lock:
                    if adapter_id in self._cache:
                        return self._cache[adapter_id]
                weights = self._load(adapter_id, source, revision)
                with self._lock:
                    self._cache[adapter_id] = weights
                    while len(self._cache) > self._capacity:
                        self._cache.popitem(last=False)
                return weights
            finally:
                with self._lock:
                    if self._loading.get(adapter_id) is gate:
                        del self._loading[adapter_id]


__all__ = ["AdapterStore", "resolve_adapter_dir"]
