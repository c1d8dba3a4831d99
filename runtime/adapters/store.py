"""The replica's adapters: registered names, their versions, and versions' weights in host memory.

A *name* is what requests use (`parameters.adapter_id`, OpenAI `model`). Each name points to its
current *version*, identified by the content digest of its files (`digest.py`); its key
`name@<digest prefix>` is what the scheduler, the device residency and the prefix cache use, so
a name loaded again from new files (a replaced adapter) is a new version: requests already
running keep the old one, requests prepared afterwards get the new one, and no request ever
sees a mix. `register` makes a name servable lazily (its version is known once first loaded);
`load` reads and validates it now and makes it current (the admin API and preloading).

Weights live in host memory under a byte budget, least recently used evicted first, and are read
again from the version's source when needed after an eviction. Concurrent requests for the same
cold name trigger one load; a name whose load fails leaves nothing behind (no entry, no lock), so
a flood of bogus ids costs no memory. Thread-safe: requests are prepared on many threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from lorafleet.runtime.adapters.loader import AdapterWeights, resolve_adapter_dir
from lorafleet.runtime.errors import AdapterLoadError

# (name, source or None for an unregistered Hub id, revision) -> validated weights with their digest
Loader = Callable[[str, str | None, str | None], AdapterWeights]
KEY_DIGEST_CHARS = 16


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    key: str  # name@digest prefix: the scheduler's, residency's and prefix cache's identity
    digest: str
    source: str | None
    revision: str | None
    num_bytes: int  # host bytes of its weights
    ranks: dict[str, int]  # its largest rank per paged projection group (its device footprint)


def weights_bytes(weights: AdapterWeights) -> int:
    return sum(m.lora_a.nbytes + m.lora_b.nbytes for m in weights.modules.values())


class AdapterStore:
    def __init__(self, load: Loader, host_bytes: int) -> None:
        self._load = load
        self.host_bytes = host_bytes
        self._lock = threading.Lock()
        self._sources: dict[str, tuple[str | None, str | None]] = {}  # registered name -> source
        self._current: dict[str, AdapterVersion] = {}  # name -> its current version
        self._versions: dict[str, AdapterVersion] = {}  # key -> version (current or still running)
        self._cache: OrderedDict[str, AdapterWeights] = OrderedDict()  # key -> weights, LRU first
        self._cached_bytes = 0
        self._loading: dict[str, threading.Lock] = {}  # name -> gate, only while a load is in flight
        self.num_reads = 0  # adapters read from their source (disk, Hub cache) since start

    # --- names -----------------------------------------------------------------------------

    def register(self, name: str, source: str | None, revision: str | None = None) -> None:
        """Makes `name` servable from `source`, loaded on first use (None: `name` is a Hub id)."""
        with self._lock:
            if self._sources.get(name) != (source, revision):
                self._current.pop(name, None)  # a new source: its version is read on next use
            self._sources[name] = (source, revision)

    def unregister(self, name: str) -> AdapterVersion | None:
        """Stops serving `name`; returns its version (running requests may still use it)."""
        with self._lock:
            self._sources.pop(name, None)
            return self._current.pop(name, None)

    def is_registered(self, name: str) -> bool:
        with self._lock:
            return name in self._sources

    def names(self) -> list[str]:
        with self._lock:
            return list(self._sources)

    def current_versions(self) -> list[AdapterVersion]:
        """The current version of every name loaded at least once, in registration order."""
        with self._lock:
            return [self._current[n] for n in self._sources if n in self._current]

    def cached_ids(self) -> list[str]:
        """Version keys whose weights are in host memory, least recently used first."""
        with self._lock:
            return list(self._cache)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    # --- versions --------------------------------------------------------------------------

    def load(self, name: str, source: str | None, revision: str | None = None) -> AdapterVersion:
        """Registers `name` from `source` and reads it now; it becomes the current version."""
        self.register(name, source, revision)
        return self.current(name)

    def current(self, name: str) -> AdapterVersion:
        """The current version of a registered `name`, reading it first if it never was."""
        with self._lock:
            version = self._current.get(name)
            if version is not None:
                return version
            if name not in self._sources:
                raise AdapterLoadError(f"adapter {name!r} is not loaded on this replica")
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:  # one load per name at a time; others wait for it and then find it current
            try:
                with self._lock:
                    version = self._current.get(name)
                    if version is not None:
                        return version
                    if name not in self._sources:  # unregistered while we waited (its load failed)
                        raise AdapterLoadError(f"adapter {name!r} is not loaded on this replica")
                    source, revision = self._sources[name]
                    self.num_reads += 1
                weights = self._load(name, source, revision)
                return self._install(name, source, revision, weights)
            finally:
                with self._lock:
                    if self._loading.get(name) is gate:
                        del self._loading[name]

    def weights(self, key: str) -> AdapterWeights:
        """A version's weights, read again from its source if the host cache let them go."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            version = self._versions.get(key)
        if version is None:
            raise AdapterLoadError(f"adapter version {key!r} is not known")
        with self._lock:
            self.num_reads += 1
        weights = self._load(version.name, version.source, version.revision)
        if weights.digest != version.digest:
            raise AdapterLoadError(
                f"adapter {version.name!r}: its files changed since version {version.digest[:12]} was "
                "loaded; load it again to serve the new version"
            )
        with self._lock:
            self._cache_put(key, weights)
        return weights

    def _install(
        self, name: str, source: str | None, revision: str | None, weights: AdapterWeights
    ) -> AdapterVersion:
        key = f"{name}@{weights.digest[:KEY_DIGEST_CHARS]}"
        version = AdapterVersion(
            name, key, weights.digest, source, revision, weights_bytes(weights), dict(weights.group_ranks)
        )
        with self._lock:
            if self._sources.get(name) == (source, revision):  # not unregistered/re-sourced meanwhile
                self._current[name] = version
            self._versions[key] = version
            self._cache_put(key, weights)
        return version

    def _cache_put(self, key: str, weights: AdapterWeights) -> None:
        if key in self._cache:
            self._cache.move_to_end(key)
            return
        self._cache[key] = weights
        self._cached_bytes += weights_bytes(weights)
        while self._cached_bytes > self.host_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= weights_bytes(dropped)


__all__ = ["AdapterStore", "AdapterVersion", "resolve_adapter_dir"]
