"""`Client` and `AsyncClient`: where the control plane is, who we are, and the HTTP connection.

Configuration comes from explicit arguments first, then the environment:
`LORAFLEET_URL` (default `http://127.0.0.1:8000`) and `LORAFLEET_TOKEN`. The module-level
functions (`lorafleet.create_inference_endpoint`, ...) use a default `Client` built from the
environment when they are called, so changing the variables takes effect at once.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import Any

import httpx

from ._http import ApiCall, RetryPolicy, decode_body, raise_for_status, send_async, send_sync

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "LORAFLEET_URL"
TOKEN_ENV = "LORAFLEET_TOKEN"
DEFAULT_TIMEOUT = 30.0
Token = str | bool | None  # HF convention: None = the configured token, False = send none


def _resolve_url(base_url: str | None) -> str:
    url = base_url or os.environ.get(URL_ENV) or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"The control plane URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def _resolve_token(token: str | None) -> str | None:
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)


class _ClientBase:
    """What both clients share: base URL, token, retry policy, namespace cache."""

    def __init__(self, base_url: str | None, token: str | None, retry: RetryPolicy | None) -> None:
        self.base_url = _resolve_url(base_url)
        self.token = _resolve_token(token)
        self.retry = retry or RetryPolicy()
        self._namespaces: dict[str | None, str] = {}  # token -> namespace from whoami

    def effective_token(self, token: Token = None) -> str | None:
        """The token a call sends: an explicit string wins, `False` sends none, `None` uses the client's."""
        if token is False:
            return None
        if isinstance(token, str):
            return token
        return self.token

    @staticmethod
    def _namespace_from_whoami(me: Any) -> str:
        if not isinstance(me, dict) or me.get("type") != "user" or not me.get("name"):
            raise ValueError(
                "Cannot determine the default namespace from whoami: pass `namespace=` explicitly "
                f"(whoami answered {me!r})."
            )
        return str(me["name"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, token={'***' if self.token else None})"


class Client(_ClientBase):
    """A connection to a lorafleet control plane.

    Args:
        base_url (`str`, *optional*):
            The control plane's URL. Defaults to `$LORAFLEET_URL`, else `http://127.0.0.1:8000`.
        token (`str`, *optional*):
            Bearer token. Defaults to `$LORAFLEET_TOKEN`; no authorization header when neither is set.
        timeout (`float`, *optional*):
            Seconds per HTTP request. Defaults to 30.
        retry ([`RetryPolicy`], *optional*):
            Retries of network failures for idempotent calls.
        http_client (`httpx.Client`, *optional*):
            Bring your own httpx client (proxies, TLS, transports); the `Client` then does not close it.

    Example:
        ```python
        >>> from lorafleet import Client, get_inference_endpoint
        >>> with Client("http://fleet.internal:8000", token="lf_...") as client:
        ...     endpoint = get_inference_endpoint("mistral-7b-multi-lora", client=client)
        ```
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token, retry)
        self._owns_http = http_client is None
        self.http = http_client or httpx.Client(timeout=timeout)

    def request(self, call: ApiCall, *, token: Token = None) -> Any:
        """Sends `call`; returns the decoded body or raises the mapped `LorafleetError`."""
        response = send_sync(self.http, self.base_url, call, self.effective_token(token), self.retry)
        raise_for_status(response)
        return decode_body(response)

    def whoami(self, *, token: Token = None) -> dict[str, Any]:
        """The identity of the token: `{"type": "user", "name": <namespace>, "orgs": [{"name": ...}]}`."""
        return self.request(ApiCall("GET", "/api/whoami-v2"), token=token)

    def namespace(self, namespace: str | None = None, *, token: Token = None) -> str:
        """`namespace` if given, else the token's own namespace (asked once per token, then cached)."""
        if namespace:
            return namespace
        key = self.effective_token(token)
        if key not in self._namespaces:
            self._namespaces[key] = self._namespace_from_whoami(self.whoami(token=token))
        return self._namespaces[key]

    def close(self) -> None:
        """Closes the HTTP connection pool (unless the httpx client was given by the caller)."""
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_ClientBase):
    """The asyncio twin of [`Client`], on `httpx.AsyncClient`.

    Without `http_client`, it keeps one `httpx.AsyncClient` per event loop, so one `AsyncClient`
    can serve several `asyncio.run()` calls.

    Example:
        ```python
        >>> from lorafleet import AsyncClient
        >>> from lorafleet.aio import get_inference_endpoint
        >>> async with AsyncClient() as client:
        ...     endpoint = await get_inference_endpoint("mistral-7b-multi-lora", client=client)
        ```
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token, retry)
        self.timeout = timeout
        self._given_http = http_client
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.AsyncClient:
        """The httpx client for the running event loop."""
        if self._given_http is not None:
            return self._given_http
        loop = asyncio.get_running_loop()
        with self._lock:
            http = self._per_loop.get(loop)
            if http is None or http.is_closed:
                http = self._per_loop[loop] = httpx.AsyncClient(timeout=self.timeout)
            return http

    async def request(self, call: ApiCall, *, token: Token = None) -> Any:
        """Sends `call`; returns the decoded body or raises the mapped `LorafleetError`."""
        response = await send_async(self.http, self.base_url, call, self.effective_token(token), self.retry)
        raise_for_status(response)
        return decode_body(response)

    async def whoami(self, *, token: Token = None) -> dict[str, Any]:
        """The identity of the token (see [`Client.whoami`])."""
        return await self.request(ApiCall("GET", "/api/whoami-v2"), token=token)

    async def namespace(self, namespace: str | None = None, *, token: Token = None) -> str:
        """`namespace` if given, else the token's own namespace (cached per token)."""
        if namespace:
            return namespace
        key = self.effective_token(token)
        if key not in self._namespaces:
            self._namespaces[key] = self._namespace_from_whoami(await self.whoami(token=token))
        return self._namespaces[key]

    async def aclose(self) -> None:
        """Closes the httpx client of the running loop (never one given by the caller)."""
        if self._given_http is not None:
            return
        http = self._per_loop.pop(asyncio.get_running_loop(), None)
        if http is not None:
            await http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_default_lock = threading.Lock()
_default_clients: dict[tuple[type, str | None, str | None], Any] = {}


def default_client() -> Client:
    """The `Client` the module-level functions use, rebuilt when `LORAFLEET_URL`/`LORAFLEET_TOKEN` change."""
    return _default(Client)


def default_async_client() -> AsyncClient:
    """The `AsyncClient` the `lorafleet.aio` functions use by default."""
    return _default(AsyncClient)


def _default(cls: type) -> Any:
    key = (cls, os.environ.get(URL_ENV), os.environ.get(TOKEN_ENV))
    with _default_lock:
        client = _default_clients.get(key)
        if client is None:
            client = _default_clients[key] = cls()
        return client
