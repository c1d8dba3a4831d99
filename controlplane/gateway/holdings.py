"""What each replica holds: the adapters in its GPU slots and its base model id.

Each replica reports them in `GET /v1/models` (the base model, then one entry per loaded adapter
with `parent` set); the gateway asks every ready replica, with its key, every
`GATEWAY_ADAPTERS_REFRESH_S`, off the request path. Between two reports a replica that served an
adapter is taken to hold it (it loaded it to serve the request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import httpx
from lorafleet.controlplane.gateway.registry import ReplicaRoute

log = logging.getLogger("lorafleet.controlplane.gateway")
BASE_ALIASES = frozenset({"", "tgi", "dummy", "base"})  # `model` values the runtime reads as the base


class Holdings:
    def __init__(self) -> None:
        self._adapters: dict[str, set[str]] = {}  # replica key → adapter ids in its slots
        self._base: dict[str, str] = {}  # replica key → its base model id

    def holders(self, adapter: str) -> set[str]:
        return {key for key, held in self._adapters.items() if adapter in held}

    def held(self, replica_key: str) -> frozenset[str]:
        return frozenset(self._adapters.get(replica_key, ()))

    def learn(self, replica_key: str, adapter: str) -> None:
        """The replica served `adapter`: it holds it now."""
        if adapter:
            self._adapters.setdefault(replica_key, set()).add(adapter)

    def base_ids(self, replica_keys: Iterable[str]) -> set[str]:
        return {self._base[k] for k in replica_keys if k in self._base}

    def adapter_of_model(self, model: Any, replica_keys: Iterable[str]) -> str:
        """The adapter an OpenAI `model` names, as the runtime reads it ('' = the base model)."""
        if not isinstance(model, str) or model in BASE_ALIASES or model in self.base_ids(replica_keys):
            return ""
        return model

    async def refresh(self, client: httpx.AsyncClient, replicas: list[ReplicaRoute]) -> None:
        """Asks every replica; a replica that does not answer keeps its last report."""
        keys = {r.key for r in replicas}
        for gone in set(self._adapters) - keys:
            self._adapters.pop(gone, None)
            self._base.pop(gone, None)
        await asyncio.gather(*(self._ask(client, r) for r in replicas))

    async def _ask(self, client: httpx.AsyncClient, replica: ReplicaRoute) -> None:
        try:
            response = await client.get(f"{replica.url}/v1/models", timeout=5.0,
                                        headers={"Authorization": f"Bearer {replica.api_key}"})
            data = response.json()["data"] if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            log.debug("replica %s did not report its adapters: %s", replica.key, e)
            return
        if not isinstance(data, list):
            return
        entries = [entry for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
        self._adapters[replica.key] = {e["id"] for e in entries if e.get("parent")}
        bases = [e["id"] for e in entries if not e.get("parent")]
        if bases:
            self._base[replica.key] = bases[0]
