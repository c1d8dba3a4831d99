"""`AsyncInferenceEndpoint`: [`InferenceEndpoint`] for asyncio code, with coroutine methods."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from . import _payloads as calls
from ._http import auth_headers
from .adapters import EndpointAdapter
from .errors import LorafleetError
from .inference_endpoint import HEALTH_PROBE_TIMEOUT, _check_wait_args, _EndpointState
from .usage import EndpointUsage

if TYPE_CHECKING:
    from .client import AsyncClient


@dataclass
class AsyncInferenceEndpoint(_EndpointState):
    """[`InferenceEndpoint`] for asyncio code: the same attributes, and coroutine methods.

    Example:
        ```python
        >>> from lorafleet.aio import create_inference_endpoint
        >>> endpoint = await create_inference_endpoint("my-ep", repository="/models/mistral", ...)
        >>> await endpoint.wait(timeout=300)
        >>> await endpoint.async_client.text_generation("Hello", max_new_tokens=8)
        ```
    """

    _client: AsyncClient | None = field(repr=False, compare=False, default=None)

    @classmethod
    def from_raw(
        cls, raw: dict[str, Any], namespace: str, token: str | None = None, client: AsyncClient | None = None
    ) -> AsyncInferenceEndpoint:
        """Builds the object from the server's JSON description of the endpoint."""
        return cls(namespace=namespace, raw=raw, _token=token, _client=client)

    @property
    def _api(self) -> AsyncClient:
        if self._client is None:
            from .client import default_async_client

            self._client = default_async_client()
        return self._client

    def _token_arg(self) -> str | bool:
        return self._token if self._token is not None else False

    async def fetch(self) -> AsyncInferenceEndpoint:
        """Reloads the endpoint from the server; returns `self`, updated in place."""
        call = calls.get_call(self.namespace, self.name)
        self._replace_raw(await self._api.request(call, token=self._token_arg()))
        return self

    async def wait(
        self,
        timeout: float | None = None,
        refresh_every: float = 5,
        *,
        on_update: Callable[[AsyncInferenceEndpoint], None] | None = None,
    ) -> AsyncInferenceEndpoint:
        """Waits until the endpoint is `running` and healthy (see [`InferenceEndpoint.wait`])."""
        _check_wait_args(timeout, refresh_every)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if on_update is not None:
                on_update(self)
            if self._ready_to_probe() and await self._probe_health():
                return self
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise self._timeout_error(timeout)
            await asyncio.sleep(refresh_every if remaining is None else min(refresh_every, remaining))
            await self.fetch()

    async def _probe_health(self) -> bool:
        try:
            response = await self._api.http.get(
                self.health_url or "", headers=auth_headers(self._token), timeout=HEALTH_PROBE_TIMEOUT
            )
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def update(self, **fields: Any) -> AsyncInferenceEndpoint:
        """Changes the endpoint (keyword arguments of `update_inference_endpoint`); returns `self`."""
        call = calls.update_call(self.namespace, self.name, **fields)
        self._replace_raw(await self._api.request(call, token=self._token_arg()))
        return self

    async def pause(self) -> AsyncInferenceEndpoint:
        """Stops every replica until [`resume`]."""
        return await self._action("pause")

    async def resume(self, running_ok: bool = True) -> AsyncInferenceEndpoint:
        """Restarts a paused or scaled-to-zero endpoint; with `running_ok`, a running one is fine."""
        try:
            return await self._action("resume")
        except LorafleetError as error:
            if running_ok and calls.is_already_running(error):
                return await self.fetch()
            raise

    async def scale_to_zero(self) -> AsyncInferenceEndpoint:
        """Stops every replica; the next request through the endpoint's URL starts it again."""
        return await self._action("scale-to-zero")

    async def delete(self) -> None:
        """Deletes the endpoint and stops its replicas. Not reversible."""
        await self._api.request(calls.delete_call(self.namespace, self.name), token=self._token_arg())

    async def logs(self, tail: int | None = None) -> str:
        """The replicas' recent log lines (the last `tail` lines if given)."""
        call = calls.logs_call(self.namespace, self.name, tail)
        return calls.logs_text(await self._api.request(call, token=self._token_arg()))

    async def usage(self) -> EndpointUsage:
        """Requests, errors, tokens and latency percentiles per adapter (see [`InferenceEndpoint.usage`])."""
        raw = await self._api.request(calls.usage_call(self.namespace, self.name), token=self._token_arg())
        return EndpointUsage.from_raw(raw)

    @property
    def adapters(self) -> Coroutine[Any, Any, list[EndpointAdapter]]:
        """The live adapter set (see [`InferenceEndpoint.adapters`]): `await endpoint.adapters`."""
        return self.list_adapters()

    async def list_adapters(self) -> list[EndpointAdapter]:
        """The endpoint's live adapter set (see [`InferenceEndpoint.list_adapters`])."""
        raw = await self._api.request(calls.adapters_call(self.namespace, self.name), token=self._token_arg())
        return EndpointAdapter.list_from_raw(raw)

    async def add_adapter(self, name: str, source: str, revision: str | None = None) -> EndpointAdapter:
        """Adds or replaces an adapter without restarting replicas (see [`InferenceEndpoint.add_adapter`])."""
        call = calls.put_adapter_call(self.namespace, self.name, name, source, revision)
        return EndpointAdapter.from_raw(await self._api.request(call, token=self._token_arg()))

    async def remove_adapter(self, name: str) -> None:
        """Removes an adapter (see [`InferenceEndpoint.remove_adapter`])."""
        call = calls.delete_adapter_call(self.namespace, self.name, name)
        await self._api.request(call, token=self._token_arg())

    async def _action(self, action: str) -> AsyncInferenceEndpoint:
        call = calls.action_call(self.namespace, self.name, action)
        self._replace_raw(await self._api.request(call, token=self._token_arg()))
        return self
