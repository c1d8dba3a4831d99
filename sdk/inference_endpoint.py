"""`InferenceEndpoint`: one deployed endpoint, as the control plane last described it.

Mirrors `huggingface_hub.InferenceEndpoint`: the object keeps the server's `raw` dict and
derives its attributes from it; `fetch/update/pause/resume/scale_to_zero/wait` call the API,
update the object in place and return it. `AsyncInferenceEndpoint` (in `async_endpoint.py`) is the
same with coroutines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

import httpx

from . import _payloads as calls
from ._http import auth_headers
from .adapters import EndpointAdapter
from .errors import EndpointFailed, LorafleetError, Timeout
from .usage import EndpointUsage

if TYPE_CHECKING:
    from huggingface_hub import AsyncInferenceClient, InferenceClient

    from .client import Client

HEALTH_PROBE_TIMEOUT = 10.0
_TIMESTAMP = re.compile(r"^(?P<base>[^.Z+]+)(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d\d:?\d\d)?$")


class InferenceEndpointStatus(str, Enum):
    """The states an endpoint goes through (`endpoint.status` is the raw string, so unknown states pass)."""

    PENDING = "pending"
    INITIALIZING = "initializing"
    UPDATING = "updating"
    UPDATE_FAILED = "updateFailed"
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    SCALED_TO_ZERO = "scaledToZero"


class InferenceEndpointType(str, Enum):
    """Who may call the endpoint's URL (`protected` and `authenticated` are synonyms)."""

    PUBLIC = "public"
    PROTECTED = "protected"
    AUTHENTICATED = "authenticated"
    PRIVATE = "private"


def parse_timestamp(value: str) -> datetime:
    """Parses the server's `...Z` timestamps (any fraction length, also `+00:00`) into an aware datetime."""
    match = _TIMESTAMP.match(value)
    if match is None:
        raise ValueError(f"not a timestamp: {value!r}")
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    tz = match["tz"] or "Z"
    parsed = datetime.fromisoformat(f"{match['base']}.{frac}{'+00:00' if tz == 'Z' else tz}")
    return parsed.astimezone(timezone.utc)


def _check_wait_args(timeout: float | None, refresh_every: float) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("`timeout` cannot be negative.")
    if refresh_every <= 0:
        raise ValueError("`refresh_every` must be positive.")


@dataclass
class _EndpointState:
    """The attributes `huggingface_hub` users expect, derived from `raw`."""

    name: str = field(init=False)
    namespace: str
    repository: str = field(init=False)
    status: str = field(init=False)
    health_route: str = field(init=False)
    url: str | None = field(init=False)
    framework: str = field(repr=False, init=False)
    revision: str | None = field(repr=False, init=False)
    task: str | None = field(repr=False, init=False)
    created_at: datetime = field(repr=False, init=False)
    updated_at: datetime = field(repr=False, init=False)
    type: str = field(repr=False, init=False)
    message: str | None = field(repr=False, init=False)
    raw: dict[str, Any] = field(repr=False)
    _token: str | None = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        self._populate_from_raw()

    def _populate_from_raw(self) -> None:
        raw = self.raw
        try:
            self.name = raw["name"]
            self.repository = raw["model"]["repository"]
            self.framework = raw["model"]["framework"]
            self.revision = raw["model"].get("revision")
            self.task = raw["model"].get("task")
            self.status = raw["status"]["state"]
            self.url = raw["status"].get("url")
            self.message = raw["status"].get("message")
            self.created_at = parse_timestamp(raw["status"]["createdAt"])
            self.updated_at = parse_timestamp(raw["status"]["updatedAt"])
            self.health_route = raw.get("healthRoute") or "/health"
            self.type = raw["type"]
        except (KeyError, TypeError, ValueError) as error:
            raise LorafleetError(f"Unexpected endpoint description from the server: {error!r}") from error

    def _replace_raw(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self._populate_from_raw()

    @property
    def health_url(self) -> str | None:
        """`{url}{healthRoute}`, the readiness probe `wait()` polls; None until the endpoint has a URL."""
        if self.url is None:
            return None
        return f"{self.url.rstrip('/')}/{self.health_route.lstrip('/')}"

    def _raise_if_failed(self) -> None:
        if self.status == InferenceEndpointStatus.FAILED:
            verb = "deploy"
        elif self.status == InferenceEndpointStatus.UPDATE_FAILED:
            verb = "update"
        else:
            return
        detail = f": {self.message}" if self.message else ". Check `endpoint.logs()` for details."
        raise EndpointFailed(f"Inference Endpoint {self.namespace}/{self.name} failed to {verb}{detail}")

    def _timeout_error(self, timeout: float | None) -> Timeout:
        detail = f" ({self.message})" if self.message else ""
        return Timeout(
            f"Timeout: Inference Endpoint {self.namespace}/{self.name} was not ready after {timeout}s; "
            f"it is '{self.status}'{detail}."
        )

    def _ready_to_probe(self) -> bool:
        self._raise_if_failed()
        return self.status == InferenceEndpointStatus.RUNNING and self.url is not None

    def _require_url(self) -> str:
        if self.url is None:
            raise EndpointFailed(
                f"Inference Endpoint {self.namespace}/{self.name} has no URL yet (status '{self.status}'). "
                "Wait for it with `endpoint.wait()` and try again."
            )
        return self.url

    @property
    def client(self) -> InferenceClient:
        """A `huggingface_hub.InferenceClient` on this endpoint's URL, with the token.

        Raises:
            [`EndpointFailed`]: if the endpoint has no URL yet.
        """
        from huggingface_hub import InferenceClient

        return InferenceClient(model=self._require_url(), token=self._token)

    @property
    def async_client(self) -> AsyncInferenceClient:
        """A `huggingface_hub.AsyncInferenceClient` on this endpoint's URL, with the token."""
        from huggingface_hub import AsyncInferenceClient

        return AsyncInferenceClient(model=self._require_url(), token=self._token)


@dataclass
class InferenceEndpoint(_EndpointState):
    """A deployed endpoint: name, state, URL, and the calls that manage it.

    Attributes are those of `huggingface_hub.InferenceEndpoint` (`name`, `namespace`, `repository`,
    `status`, `url`, `framework`, `revision`, `task`, `created_at`, `updated_at`, `type`, `raw`)
    plus `health_route` and `message` (the server's status message).

    Example:
        ```python
        >>> from lorafleet import get_inference_endpoint
        >>> endpoint = get_inference_endpoint("mistral-7b-multi-lora")
        >>> endpoint.status
        'running'
        >>> endpoint.client.text_generation("Hello", max_new_tokens=8, adapter_id="customer_support")
        >>> endpoint.pause()
        >>> endpoint.resume().wait(timeout=600)
        ```
    """

    _client: Client | None = field(repr=False, compare=False, default=None)

    @classmethod
    def from_raw(
        cls, raw: dict[str, Any], namespace: str, token: str | None = None, client: Client | None = None
    ) -> InferenceEndpoint:
        """Builds the object from the server's JSON description of the endpoint."""
        return cls(namespace=namespace, raw=raw, _token=token, _client=client)

    @property
    def _api(self) -> Client:
        if self._client is None:
            from .client import default_client

            self._client = default_client()
        return self._client

    def _token_arg(self) -> str | bool:
        return self._token if self._token is not None else False

    def fetch(self) -> InferenceEndpoint:
        """Reloads the endpoint from the server; returns `self`, updated in place."""
        call = calls.get_call(self.namespace, self.name)
        self._replace_raw(self._api.request(call, token=self._token_arg()))
        return self

    def wait(
        self,
        timeout: float | None = None,
        refresh_every: float = 5,
        *,
        on_update: Callable[[InferenceEndpoint], None] | None = None,
    ) -> InferenceEndpoint:
        """Blocks until the endpoint is `running` and its health route answers 200.

        Args:
            timeout (`float`, *optional*):
                Seconds to wait at most; `None` waits forever.
            refresh_every (`float`, *optional*):
                Seconds between two fetches of the endpoint's state. Defaults to 5.
            on_update (`Callable`, *optional*):
                Called with the endpoint after every fetch (the CLI draws its spinner with it).

        Returns:
            [`InferenceEndpoint`]: `self`, updated in place.

        Raises:
            [`EndpointFailed`]: the endpoint ended in `failed`/`updateFailed` (with the server's message).
            [`Timeout`]: `timeout` seconds passed first (also a `TimeoutError`).

        Example:
            ```python
            >>> endpoint = create_inference_endpoint("my-ep", repository="/models/mistral", ...)
            >>> endpoint.wait(timeout=300)
            ```
        """
        _check_wait_args(timeout, refresh_every)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_update is not None:
                on_update(self)
            if self._ready_to_probe() and self._probe_health():
                return self
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise self._timeout_error(timeout)
            time.sleep(refresh_every if remaining is None else min(refresh_every, remaining))
            self.fetch()

    def _probe_health(self) -> bool:
        try:
            response = self._api.http.get(
                self.health_url or "", headers=auth_headers(self._token), timeout=HEALTH_PROBE_TIMEOUT
            )
        except httpx.TransportError:
            return False  # the replica is listed but not answering yet: keep waiting
        return response.status_code == 200

    def update(self, **fields: Any) -> InferenceEndpoint:
        """Changes the endpoint (same keyword arguments as [`update_inference_endpoint`]); returns `self`."""
        call = calls.update_call(self.namespace, self.name, **fields)
        self._replace_raw(self._api.request(call, token=self._token_arg()))
        return self

    def pause(self) -> InferenceEndpoint:
        """Stops every replica; the endpoint stays `paused` until [`resume`]. Returns `self`."""
        return self._action("pause")

    def resume(self, running_ok: bool = True) -> InferenceEndpoint:
        """Restarts a paused or scaled-to-zero endpoint; with `running_ok`, a running one is fine."""
        try:
            return self._action("resume")
        except LorafleetError as error:
            if running_ok and calls.is_already_running(error):
                return self.fetch()
            raise

    def scale_to_zero(self) -> InferenceEndpoint:
        """Stops every replica; the endpoint keeps its URL, and the next request through it starts it
        again (answered 503 with `Retry-After` meanwhile, or held with `X-Scale-Up-Timeout`).
        Returns `self`."""
        return self._action("scale-to-zero")

    def delete(self) -> None:
        """Deletes the endpoint and stops its replicas. Not reversible."""
        self._api.request(calls.delete_call(self.namespace, self.name), token=self._token_arg())

    def logs(self, tail: int | None = None) -> str:
        """The replicas' recent log lines (the last `tail` lines if given)."""
        body = self._api.request(calls.logs_call(self.namespace, self.name, tail), token=self._token_arg())
        return calls.logs_text(body)

    def usage(self) -> EndpointUsage:
        """Requests, errors, tokens and latency percentiles per adapter since the endpoint's creation.

        Example:
            ```python
            >>> for a in endpoint.usage().adapters:
            ...     print(a.adapter or "base", a.requests, a.output_tokens, a.ttft_p50_ms)
            ```
        """
        raw = self._api.request(calls.usage_call(self.namespace, self.name), token=self._token_arg())
        return EndpointUsage.from_raw(raw)

    @property
    def adapters(self) -> list[EndpointAdapter]:
        """The endpoint's live adapter set, with each adapter's readiness (asks the server each time).

        Example:
            ```python
            >>> {a.name: (a.state, a.ready_replicas) for a in endpoint.adapters}
            {'customer_support': ('ready', 2)}
            ```
        """
        return self.list_adapters()

    def list_adapters(self) -> list[EndpointAdapter]:
        """The endpoint's live adapter set (the same as [`adapters`])."""
        raw = self._api.request(calls.adapters_call(self.namespace, self.name), token=self._token_arg())
        return EndpointAdapter.list_from_raw(raw)

    def add_adapter(self, name: str, source: str, revision: str | None = None) -> EndpointAdapter:
        """Adds an adapter, or replaces the one called `name`, without restarting any replica.

        Running requests finish on the version they started with; new ones use the new version once
        a replica has loaded it (`state` `ready` when every replica has).

        Args:
            name (`str`):
                The `adapter_id` requests will use (letters, digits, `.`, `_`, `/`, `-`).
            source (`str`):
                A Hub repo id (`org/name`) or a folder under the control plane's `LOCAL_ROOTS`.
            revision (`str`, *optional*):
                A Hub branch, tag or commit; None for the default branch.

        Returns:
            [`EndpointAdapter`]: the adapter as the server recorded it (`state` `pending` at first).

        Example:
            ```python
            >>> endpoint.add_adapter("customer_support", "predibase/customer_support")
            >>> endpoint.add_adapter("sql", "/models/adapters/sql-v2")  # replaces "sql" if it exists
            ```
        """
        call = calls.put_adapter_call(self.namespace, self.name, name, source, revision)
        return EndpointAdapter.from_raw(self._api.request(call, token=self._token_arg()))

    def remove_adapter(self, name: str) -> None:
        """Removes an adapter: replicas unload it, and requests naming it are refused (4xx).

        Raises:
            [`LorafleetError`]: 404 if the endpoint has no adapter called `name`.
        """
        call = calls.delete_adapter_call(self.namespace, self.name, name)
        self._api.request(call, token=self._token_arg())

    def _action(self, action: str) -> InferenceEndpoint:
        call = calls.action_call(self.namespace, self.name, action)
        self._replace_raw(self._api.request(call, token=self._token_arg()))
        return self
