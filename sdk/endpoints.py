"""The Inference Endpoints functions, with `huggingface_hub`'s names, parameters and defaults.

Each one is the same three steps: build the call, send it (raising the mapped error), wrap the
answer in an [`InferenceEndpoint`]. They use the default [`Client`] (configured from
`LORAFLEET_URL` / `LORAFLEET_TOKEN`) unless given `client=`; an explicit `token=` wins over both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import _payloads as calls
from .client import Client, Token, default_client
from .errors import AuthenticationError, LorafleetError
from .inference_endpoint import InferenceEndpoint, InferenceEndpointType


def _client(client: Client | None) -> Client:
    return client if client is not None else default_client()


def _wrap(api: Client, raw: Any, namespace: str, token: Token) -> InferenceEndpoint:
    return InferenceEndpoint.from_raw(raw, namespace=namespace, token=api.effective_token(token), client=api)


def list_inference_endpoints(
    namespace: str | None = None, *, token: Token = None, client: Client | None = None
) -> list[InferenceEndpoint]:
    """Lists the endpoints of a namespace.

    Args:
        namespace (`str`, *optional*):
            Defaults to the token's own namespace. `"*"` lists the personal namespace and every
            organization of the token (organizations it may not read are skipped).
        token (`str` or `bool`, *optional*):
            Overrides the client's token; `False` sends none.
        client ([`Client`], *optional*):
            Defaults to a client configured from `LORAFLEET_URL` and `LORAFLEET_TOKEN`.

    Returns:
        `list[InferenceEndpoint]`

    Example:
        ```python
        >>> from lorafleet import list_inference_endpoints
        >>> [e.name for e in list_inference_endpoints()]
        ['mistral-7b-multi-lora']
        ```
    """
    api = _client(client)
    if namespace == "*":
        me = api.whoami(token=token)
        endpoints = list_inference_endpoints(api.namespace(None, token=token), token=token, client=api)
        for org in me.get("orgs") or []:
            try:
                endpoints += list_inference_endpoints(org["name"], token=token, client=api)
            except AuthenticationError:
                continue
        return endpoints
    namespace = api.namespace(namespace, token=token)
    body = api.request(calls.list_call(namespace), token=token)
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise LorafleetError(f"Unexpected list response from the control plane: {body!r}")
    return [_wrap(api, raw, namespace, token) for raw in items]


def create_inference_endpoint(
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
    client: Client | None = None,
) -> InferenceEndpoint:
    """Creates an endpoint that serves `repository` (and the LoRA adapters named in its env).

    Args:
        name (`str`): unique name in the namespace.
        repository (`str`): the base model: a Hub id or a local directory of the runtime host.
        framework (`str`): e.g. `"pytorch"`.
        accelerator (`str`): `"gpu"` or `"cpu"`.
        instance_size (`str`): e.g. `"x1"`.
        instance_type (`str`): an instance type of the catalog (`GET /v2/provider`), e.g. `"nvidia-l4"`.
        region (`str`): a region of the catalog, e.g. `"us-east-1"`.
        vendor (`str`): a vendor of the catalog, e.g. `"aws"`.
        account_id (`str`, *optional*): accepted for compatibility.
        min_replica (`int`, *optional*): replicas kept running; 0 allows scale to zero. Defaults to 1.
        max_replica (`int`, *optional*): upper bound for autoscaling. Defaults to 1.
        scale_to_zero_timeout (`int`, *optional*): idle minutes before scaling to zero.
        revision (`str`, *optional*): model revision.
        task (`str`, *optional*): e.g. `"text-generation"`.
        custom_image (`dict`, *optional*): TGI-style image, e.g. `{"health_route": "/health", "url": ...,
            "env": {"LORA_ADAPTERS": "a,b", "MODEL_ID": "/repository"}}`; wrapped as `{"custom": ...}`.
        env (`dict`, *optional*): environment of the replicas (`LORA_ADAPTERS`, `MAX_INPUT_LENGTH`, ...).
        secrets (`dict`, *optional*): secret environment, stored encrypted.
        type (`str`, *optional*): `"protected"` (default), `"authenticated"`, `"public"` or `"private"`.
        domain (`str`, *optional*), path (`str`, *optional*): custom route.
        cache_http_responses (`bool`, *optional*), tags (`list[str]`, *optional*): metadata.
        namespace (`str`, *optional*): defaults to the token's namespace.
        token (`str` or `bool`, *optional*): overrides the client's token.
        client ([`Client`], *optional*): defaults to one configured from the environment.

    Returns:
        [`InferenceEndpoint`]: usually `pending`; call `.wait()` to block until it serves.

    Raises:
        [`Conflict`]: an endpoint with this name exists. [`ValidationError`]: the spec was rejected.

    Example:
        ```python
        >>> from lorafleet import create_inference_endpoint
        >>> endpoint = create_inference_endpoint(
        ...     "mistral-7b-multi-lora", repository="mistralai/Mistral-7B-v0.1", framework="pytorch",
        ...     accelerator="gpu", instance_size="x1", instance_type="nvidia-l4", region="us-east-1",
        ...     vendor="aws", task="text-generation",
        ...     env={"LORA_ADAPTERS": "predibase/customer_support,predibase/magicoder"},
        ... )
        >>> endpoint.wait()
        ```
    """
    api = _client(client)
    namespace = api.namespace(namespace, token=token)
    call = calls.create_call(
        namespace, name=name, repository=repository, framework=framework, accelerator=accelerator,
        instance_size=instance_size, instance_type=instance_type, region=region, vendor=vendor,
        account_id=account_id, min_replica=min_replica, max_replica=max_replica,
        scale_to_zero_timeout=scale_to_zero_timeout, revision=revision, task=task, custom_image=custom_image,
        env=env, secrets=secrets, type=type, domain=domain, path=path,
        cache_http_responses=cache_http_responses, tags=tags,
    )  # fmt: skip
    return _wrap(api, api.request(call, token=token), namespace, token)


def get_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: Client | None = None
) -> InferenceEndpoint:
    """Fetches one endpoint.

    Raises:
        [`EndpointNotFound`]: no endpoint of that name in the namespace.

    Example:
        ```python
        >>> endpoint = get_inference_endpoint("mistral-7b-multi-lora")
        >>> endpoint.status, endpoint.url
        ('running', 'http://10.0.0.5:41231')
        ```
    """
    api = _client(client)
    namespace = api.namespace(namespace, token=token)
    return _wrap(api, api.request(calls.get_call(namespace, name), token=token), namespace, token)


def update_inference_endpoint(
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
    client: Client | None = None,
) -> InferenceEndpoint:
    """Changes an endpoint; only the arguments that are not `None` are sent (the server merges them).

    Changing the model or its env rolls the replicas (`updating`, then `running` or `updateFailed`).

    Example:
        ```python
        >>> update_inference_endpoint("mistral-7b-multi-lora", min_replica=0, scale_to_zero_timeout=15)
        ```
    """
    api = _client(client)
    namespace = api.namespace(namespace, token=token)
    call = calls.update_call(
        namespace, name, accelerator=accelerator, instance_size=instance_size, instance_type=instance_type,
        min_replica=min_replica, max_replica=max_replica, scale_to_zero_timeout=scale_to_zero_timeout,
        repository=repository, framework=framework, revision=revision, task=task, custom_image=custom_image,
        env=env, secrets=secrets, domain=domain, path=path, cache_http_responses=cache_http_responses,
        tags=tags,
    )  # fmt: skip
    return _wrap(api, api.request(call, token=token), namespace, token)


def delete_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: Client | None = None
) -> None:
    """Deletes an endpoint and stops its replicas. Not reversible.

    Example:
        ```python
        >>> delete_inference_endpoint("mistral-7b-multi-lora")
        ```
    """
    api = _client(client)
    namespace = api.namespace(namespace, token=token)
    api.request(calls.delete_call(namespace, name), token=token)


def _action(
    name: str, action: str, namespace: str | None, token: Token, client: Client | None
) -> InferenceEndpoint:
    api = _client(client)
    namespace = api.namespace(namespace, token=token)
    return _wrap(api, api.request(calls.action_call(namespace, name, action), token=token), namespace, token)


def pause_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: Client | None = None
) -> InferenceEndpoint:
    """Stops every replica; the endpoint stays `paused` (no URL) until resumed.

    Example:
        ```python
        >>> pause_inference_endpoint("mistral-7b-multi-lora").status
        'paused'
        ```
    """
    return _action(name, "pause", namespace, token, client)


def resume_inference_endpoint(
    name: str,
    *,
    namespace: str | None = None,
    running_ok: bool = True,
    token: Token = None,
    client: Client | None = None,
) -> InferenceEndpoint:
    """Restarts a paused or scaled-to-zero endpoint.

    Args:
        running_ok (`bool`, *optional*): if `True` (default), resuming a running endpoint returns it
            instead of raising.

    Example:
        ```python
        >>> resume_inference_endpoint("mistral-7b-multi-lora").wait()
        ```
    """
    try:
        return _action(name, "resume", namespace, token, client)
    except LorafleetError as error:
        if running_ok and calls.is_already_running(error):
            return get_inference_endpoint(name, namespace=namespace, token=token, client=client)
        raise


def scale_to_zero_inference_endpoint(
    name: str, *, namespace: str | None = None, token: Token = None, client: Client | None = None
) -> InferenceEndpoint:
    """Stops every replica; unlike pause, the endpoint keeps its URL, and the next request through it
    starts it again (503 with `Retry-After` meanwhile, or held up to `X-Scale-Up-Timeout` seconds).

    Example:
        ```python
        >>> scale_to_zero_inference_endpoint("mistral-7b-multi-lora").status
        'scaledToZero'
        ```
    """
    return _action(name, "scale-to-zero", namespace, token, client)
