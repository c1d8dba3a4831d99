"""`EngineAdapters`: which adapters requests may name, their versions, and getting them on the device.

Owned by the `Engine`; runs on callers' threads (the server's worker threads, the admin API) and
talks to the loop only through its commands (`pin` before it starts; `prefetch` and `retire`
after). It owns the host-side `AdapterStore` and reads adapters from disk or the Hub for it.

- `resolve(name)` (for `Engine.prepare`): the request policy (`adapters.policy`: a registered name,
  or an allowed Hub repo id, never a path) then the name's current version, read if needed.
- `load(name, source)` (the admin API, vLLM's `/v1/load_lora_adapter`): reads and validates the
  adapter now, makes it the name's current version (a new digest replaces the old version: requests
  already running finish on the old one, which is then freed), and asks the loop to place it on
  the device ahead of its first request when it fits without evicting anything in use.
- `unload(name)`: requests can no longer name it; its memory is freed once its last running
  request ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lorafleet.runtime.adapters import load_adapter, resolve_adapter_dir
from lorafleet.runtime.adapters.digest import adapter_digest
from lorafleet.runtime.adapters.loader import AdapterWeights, download_hub_adapter
from lorafleet.runtime.adapters.policy import check_request_adapter, shown
from lorafleet.runtime.adapters.store import AdapterStore, AdapterVersion
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.loop import EngineLoop
from lorafleet.runtime.errors import AdapterLoadError
from lorafleet.runtime.models.decoder import LoraSite


@dataclass(frozen=True)
class AdapterListing:
    name: str
    digest: str
    key: str
    resident: bool  # in device memory now
    pinned: bool


@dataclass(frozen=True)
class AdapterReader:
    """Reads and validates an adapter for one model: the `AdapterStore`'s loader."""

    config: EngineConfig
    sites: dict[str, LoraSite]  # the model's LoRA-targetable modules, by full name
    paged_groups: frozenset[str]  # projection groups whose adapter storage is paged

    def __call__(self, name: str, source: str | None, revision: str | None) -> AdapterWeights:
        """The adapter `name` (source None: `name` is a Hub repo id), with its digest and footprint."""
        folder: Path = download_hub_adapter(name) if source is None else resolve_adapter_dir(source, revision)
        weights = load_adapter(
            name,
            folder,
            self.config.model,
            max_rank=self.config.max_lora_rank,
            dtype=self.config.dtype,
            base_model_id=self.config.model_id,
        )
        ranks: dict[str, int] = {}
        for module, w in weights.modules.items():
            group = self.sites[module].group
            if group in self.paged_groups:
                ranks[group] = max(ranks.get(group, 0), w.lora_a.shape[0])
        return replace(weights, digest=adapter_digest(folder), group_ranks=ranks)


class EngineAdapters:
    def __init__(self, config: EngineConfig, store: AdapterStore, loop: EngineLoop) -> None:
        self.config = config
        self.store = store
        self._loop = loop

    def register(self, name: str, source: str | None, revision: str | None = None) -> None:
        """Lets requests name `name`; its weights are read from `source` on first use."""
        self.store.register(name, source, revision)

    def pin(self, name: str, source: str, revision: str | None = None) -> AdapterVersion:
        """Loads `name` and keeps it on the device for good (the preloaded adapters; before start)."""
        version = self.store.load(name, source, revision)
        self._loop.pin(version.key, version.ranks)
        return version

    def load(self, name: str, source: str, revision: str | None = None) -> AdapterVersion:
        """Reads `name` from `source` now and serves it from the next request on (module docstring)."""
        previous = self.store.current_versions()
        version = self.store.load(name, source, revision)
        for old in previous:
            if old.name == name and old.key != version.key:
                self._loop.retire(old.key)
        self._loop.prefetch(version.key, version.ranks)
        return version

    def unload(self, name: str) -> AdapterVersion | None:
        """Stops serving `name`; returns its version, None when it was not registered."""
        registered = self.store.is_registered(name)
        version = self.store.unregister(name)
        if version is not None:
            self._loop.retire(version.key)
        return version if registered else None

    def resolve(self, name: str) -> AdapterVersion:
        """The version a request naming `name` runs with; raises `AdapterLoadError` (module docstring)."""
        registered = self.store.is_registered(name)
        check_request_adapter(name, registered=registered, allow_hub=self.config.args.allow_hub_adapters)
        if not registered:  # an allowed Hub repo id: downloaded on first use
            self.store.register(name, None)
        try:
            version = self.store.current(name)
        except AdapterLoadError:
            if not registered:
                self.store.unregister(name)  # a failed Hub id leaves nothing behind
            raise
        pinned = self._loop.snapshot.scheduler.pinned_adapters
        if version.key not in pinned and len(pinned) >= self.config.max_loaded_adapters:
            raise AdapterLoadError(
                f"adapter {shown(name)} cannot be served: all max_loaded_adapters="
                f"{self.config.max_loaded_adapters} slots hold preloaded (pinned) adapters"
            )
        return version

    def listing(self) -> list[AdapterListing]:
        """Every servable adapter whose version is known, with where it lives now."""
        snapshot = self._loop.snapshot.scheduler
        resident, pinned = set(snapshot.loaded_adapters), snapshot.pinned_adapters
        return [
            AdapterListing(v.name, v.digest, v.key, v.key in resident, v.key in pinned)
            for v in self.store.current_versions()
        ]
