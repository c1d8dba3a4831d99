"""Async twins of the endpoint functions, for services that create endpoints (httpx.AsyncClient).

Same names, parameters and defaults as `lorafleet.create_inference_endpoint` and friends; each
returns an [`AsyncInferenceEndpoint`] whose methods are coroutines.

Example:
    ```python
    >>> from lorafleet import aio
    >>> endpoint = await aio.create_inference_endpoint("my-ep", repository="/models/mistral",
    ...     framework="pytorch", accelerator="cpu", instance_size="x1", instance_type="cpu",
    ...     region="local", vendor="local")
    >>> await endpoint.wait(timeout=300)
    ```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import _payloads as calls
from .async_endpoint import AsyncInferenceEndpoint
from .client import AsyncClient, Token, default_async_client
from .errors import AuthenticationError, LorafleetError
from .inference_endpoint import InferenceEndpointType

__all__ = [
    "create_inference_endpoint",
    "delete_inference_endpoint",
    "get_inference_endpoint",
    "list_inference_endpoints",
    "pause_inference_endpoint",
    "resume_inference_endpoint",
    "scale_to_zero_inference_endpoint",
    "update_inference_endpoint",
]


def _client(client: AsyncClient | None) -> AsyncClient:
    return client if client is not None else default_async_client()


def _wrap(api: AsyncClient, raw: Any, namespace: str, token: Token) -> AsyncInferenceEndpoint:
    token = api.effective_token(token)
    return AsyncInferenceEndpoint.from_raw(raw, namespace=namespace, token=token, client=api)


async def list_inference_endpoints(
    namespace: str | None = None, *, token: Token = None, client: AsyncClient | None = None
) -> list[AsyncInferenceEndpoint]:
    """Lists the endpoints of a namespace (`"*"`: personal and every organization)."""
    api = _client(client)
    if namespace == "*":
        me = await api.whoami(token=token)
        own = await api.namespace(None, token=token)
        endpoints = await list_inference_endpoints(own, token=token, client=api)
        for org in me.get("orgs") or []:
            try:
                endpoints += await list_inference_endpoints(org["name"], token=token, client=api)
            except AuthenticationError:
                continue
        return endpoints
    namespace = await api.namespace(namespace, token=token)
    body = await api.request(calls.list_call(namespace), token=token)
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise LorafleetError(f"Unexpected list response from the control plane: {body!r}")
    return [_wrap(api, raw, namespace, token) for raw in items]


async def create_inference_endpoint(
    name: str,
    *,
    repository: str,
    framework: str,
    accelerator: str,
    instance_size: str,
    instance_type: str,
    region: str,
    vendor: str,
    account_id: str | None = None,
    min_replica: int = 1,
    max_replica: int = 1,
    scale_to_zero_timeout: int | None = None,
    revision: str | None = None,
    task: str | None = None,
    custom_image: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    type: InferenceEndpointType | str = InferenceEndpointType.PROTECTED,
    domain: str | None = None,
    path: str | None = None,
    cache_http_responses: bool | None = None,
    tags: Sequence[str] | None = None,
    namespace: str | None = None,
    token: Token = None,
    client: AsyncClient | None = None,
) -> AsyncInferenceEndpoint:
    """Creates an endpoint (see `lorafleet.create_inference_endpoint` for every argument)."""
    api = _client(client)
    namespace = await api.namespace(namespace, token=token)
    call = calls.create_call(
        namespace, name=name, repository=repository, framework=framework, accelerator=accelerator,
        instance_size=instance_size, instance_type=instance_type, region=region, vendor=vendor,
        account_id=account_id, min_replica=min_replica, max_replica=max_replica,
        scale_to_zero_timeout=scale_to_zero_timeout, revision=revision, task=task, custom_image=custom_image,
        env=env, secrets=secrets, type=type, domain=domain, path=path,
        cache_http_responses=cache_http_responses, tags=tags,
    )  # fmt: skip
    return _wrap(api, await api.request(call, token=token), namespace, token)


async def get_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: AsyncClient | None = None
) -> AsyncInferenceEndpoint:
    """Fetches one endpoint; raises `EndpointNotFound` if there is none of that name."""
    api = _client(client)
    namespace = await api.namespace(namespace, token=token)
    return _wrap(api, await api.request(calls.get_call(namespace, name), token=token), namespace, token)


async def update_inference_endpoint(
    name: str,
    *,
    accelerator: str | None = None,
    instance_size: str | None = None,
    instance_type: str | None = None,
    min_replica: int | None = None,
    max_replica: int | None = None,
    scale_to_zero_timeout: int | None = None,
    repository: str | None = None,
    framework: str | None = None,
    revision: str | None = None,
    task: str | None = None,
    custom_image: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    domain: str | None = None,
    path: str | None = None,
    cache_http_responses: bool | None = None,
    tags: Sequence[str] | None = None,
    namespace: str | None = None,
    token: Token = None,
    client: AsyncClient | None = None,
) -> AsyncInferenceEndpoint:
    """Changes an endpoint; only the arguments that are not `None` are sent."""
    api = _client(client)
    namespace = await api.namespace(namespace, token=token)
    call = calls.update_call(
        namespace, name, accelerator=accelerator, instance_size=instance_size, instance_type=instance_type,
        min_replica=min_replica, max_replica=max_replica, scale_to_zero_timeout=scale_to_zero_timeout,
        repository=repository, framework=framework, revision=revision, task=task, custom_image=custom_image,
        env=env, secrets=secrets, domain=domain, path=path, cache_http_responses=cache_http_responses,
        tags=tags,
    )  # fmt: skip
    return _wrap(api, await api.request(call, token=token), namespace, token)


async def delete_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: AsyncClient | None = None
) -> None:
    """Deletes an endpoint and stops its replicas. Not reversible."""
    api = _client(client)
    namespace = await api.namespace(namespace, token=token)
    await api.request(calls.delete_call(namespace, name), token=token)


async def _action(
    name: str, action: str, namespace: str | None, token: Token, client: AsyncClient | None
) -> AsyncInferenceEndpoint:
    api = _client(client)
    namespace = await api.namespace(namespace, token=token)
    raw = await api.request(calls.action_call(namespace, name, action), token=token)
    return _wrap(api, raw, namespace, token)


async def pause_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: AsyncClient | None = None
) -> AsyncInferenceEndpoint:
    """Stops every replica; the endpoint stays `paused` until resumed."""
    return await _action(name, "pause", namespace, token, client)


async def resume_inference_endpoint(
    name: str,
    *,
    namespace: str | None = None,
    running_ok: bool = True,
    token: Token = None,
    client: AsyncClient | None = None,
) -> AsyncInferenceEndpoint:
    """Restarts a paused or scaled-to-zero endpoint; with `running_ok`, a running one is returned as is."""
    try:
        return await _action(name, "resume", namespace, token, client)
    except LorafleetError as error:
        if running_ok and calls.is_already_running(error):
            return await get_inference_endpoint(name, namespace=namespace, token=token, client=client)
        raise


async def scale_to_zero_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: AsyncClient | None = None
) -> AsyncInferenceEndpoint:
    """Stops every replica; the endpoint keeps its URL and the next request through it starts it again."""
    return await _action(name, "scale-to-zero", namespace, token, client)
