"""The REST calls of the Inference Endpoints v2 API, built without doing any I/O.

Request bodies follow `huggingface_hub`'s (see the contract notes): create sends the whole
spec, update sends only the fields that are not `None` (the server merges them in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ._http import ApiCall

# Top-level keys that mark a `custom_image` dict as an already-wrapped image variant.
IMAGE_KEYS = frozenset(
    {"custom", "huggingface", "huggingfaceNeuron", "llamacpp", "tei", "tgi", "tgiNeuron", "vLLM", "sGLang"}
)
ACTIONS = ("pause", "resume", "scale-to-zero")


def _segment(value: str, what: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty string without '/', got {value!r}")
    return quote(value, safe="")


def endpoints_path(namespace: str) -> str:
    return f"/v2/endpoint/{_segment(namespace, 'namespace')}"


def endpoint_path(namespace: str, name: str) -> str:
    return f"{endpoints_path(namespace)}/{_segment(name, 'name')}"


def image_payload(custom_image: Mapping[str, Any] | None) -> dict[str, Any]:
    """`{"huggingface": {}}` by default; a dict with a known variant key as is; else `{"custom": ...}`."""
    if custom_image is None:
        return {"huggingface": {}}
    if not isinstance(custom_image, Mapping) or not custom_image:
        raise ValueError(f"custom_image must be a non-empty dict, got {custom_image!r}")
    if next(iter(custom_image)) in IMAGE_KEYS:
        return dict(custom_image)
    return {"custom": dict(custom_image)}


def create_call(
    namespace: str,
    *,
    name: str,
    repository: str,
    framework: str,
    accelerator: str,
    instance_size: str,
    instance_type: str,
    region: str,
    vendor: str,
    account_id: str | None,
    min_replica: int,
    max_replica: int,
    scale_to_zero_timeout: int | None,
    revision: str | None,
    task: str | None,
    custom_image: Mapping[str, Any] | None,
    env: Mapping[str, str] | None,
    secrets: Mapping[str, str] | None,
    type: str,
    domain: str | None,
    path: str | None,
    cache_http_responses: bool | None,
    tags: Sequence[str] | None,
) -> ApiCall:
    """`POST /v2/endpoint/{namespace}` with the full endpoint spec."""
    _segment(name, "name")
    model: dict[str, Any] = {
        "framework": framework,
        "repository": repository,
        "revision": revision,
        "task": task,
        "image": image_payload(custom_image),
    }
    if env:
        model["env"] = dict(env)
    if secrets:
        model["secrets"] = dict(secrets)
    payload: dict[str, Any] = {
        "accountId": account_id,
        "compute": {
            "accelerator": accelerator,
            "instanceSize": instance_size,
            "instanceType": instance_type,
            "scaling": {
                "maxReplica": max_replica,
                "minReplica": min_replica,
                "scaleToZeroTimeout": scale_to_zero_timeout,
            },
        },
        "model": model,
        "name": name,
        "provider": {"region": region, "vendor": vendor},
        "type": str(getattr(type, "value", type)),
    }
    if domain is not None or path is not None:
        payload["route"] = {k: v for k, v in (("domain", domain), ("path", path)) if v is not None}
    if cache_http_responses is not None:
        payload["cacheHttpResponses"] = cache_http_responses
    if tags is not None:
        payload["tags"] = list(tags)
    return ApiCall("POST", endpoints_path(namespace), payload)


def update_call(namespace: str, name: str, **fields: Any) -> ApiCall:
    """`PUT /v2/endpoint/{namespace}/{name}` with only the fields that are not `None`."""
    placement = {
        "accelerator": ("compute", "accelerator"),
        "instance_size": ("compute", "instanceSize"),
        "instance_type": ("compute", "instanceType"),
        "min_replica": ("compute", "scaling", "minReplica"),
        "max_replica": ("compute", "scaling", "maxReplica"),
        "scale_to_zero_timeout": ("compute", "scaling", "scaleToZeroTimeout"),
        "repository": ("model", "repository"),
        "framework": ("model", "framework"),
        "revision": ("model", "revision"),
        "task": ("model", "task"),
        "custom_image": ("model", "image"),
        "env": ("model", "env"),
        "secrets": ("model", "secrets"),
        "domain": ("route", "domain"),
        "path": ("route", "path"),
        "cache_http_responses": ("cacheHttpResponses",),
        "tags": ("tags",),
    }
    unknown = set(fields) - set(placement)
    if unknown:
        raise TypeError(f"update got unexpected fields: {sorted(unknown)}")
    payload: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "custom_image":
            value = image_payload(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        elif key == "tags":
            value = list(value)
        *parents, leaf = placement[key]
        node = payload
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    if not payload:
        raise ValueError("update needs at least one field to change")
    return ApiCall("PUT", endpoint_path(namespace, name), payload)


def get_call(namespace: str, name: str) -> ApiCall:
    return ApiCall("GET", endpoint_path(namespace, name))


def list_call(namespace: str) -> ApiCall:
    return ApiCall("GET", endpoints_path(namespace))


def delete_call(namespace: str, name: str) -> ApiCall:
    return ApiCall("DELETE", endpoint_path(namespace, name))


def action_call(namespace: str, name: str, action: str) -> ApiCall:
    """`POST .../{pause|resume|scale-to-zero}`, with no body."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    return ApiCall("POST", f"{endpoint_path(namespace, name)}/{action}")


def logs_call(namespace: str, name: str, tail: int | None = None) -> ApiCall:
    params = {"tail": str(tail)} if tail is not None else {}
    return ApiCall("GET", f"{endpoint_path(namespace, name)}/logs", params=params)


def usage_call(namespace: str, name: str) -> ApiCall:
    return ApiCall("GET", f"{endpoint_path(namespace, name)}/usage")


def adapters_call(namespace: str, name: str) -> ApiCall:
    return ApiCall("GET", f"{endpoint_path(namespace, name)}/adapters")


def _adapter_path(namespace: str, name: str, adapter: str) -> str:
    # Adapter names may be Hub-like (`org/name`): the '/' stays, the server's route takes it.
    if not adapter or adapter.startswith("/") or ".." in adapter:
        raise ValueError(f"adapter must be a non-empty name without '..', got {adapter!r}")
    return f"{endpoint_path(namespace, name)}/adapters/{quote(adapter, safe='/')}"


def put_adapter_call(namespace: str, name: str, adapter: str, source: str, revision: str | None) -> ApiCall:
    """`PUT .../adapters/{adapter}` `{"source", "revision"}`: adds or replaces one adapter."""
    return ApiCall("PUT", _adapter_path(namespace, name, adapter), {"source": source, "revision": revision})


def delete_adapter_call(namespace: str, name: str, adapter: str) -> ApiCall:
    return ApiCall("DELETE", _adapter_path(namespace, name, adapter))


def logs_text(body: Any) -> str:
    """The log text of a logs response: plain text, `{"logs": ...}`, `{"lines": [...]}` or a list.

    With several replicas (`{"replicas": [{"id", "lines"}, ...]}`) each line is prefixed `[id]`.
    """
    if body is None:
        return ""
    replicas = body.get("replicas") if isinstance(body, dict) else None
    if isinstance(replicas, list) and len(replicas) > 1:
        return "\n".join(f"[{r.get('id')}] {line}" for r in replicas for line in r.get("lines") or [])
    if isinstance(body, dict):
        body = body.get("logs", body.get("lines", body))
    if isinstance(body, list):
        return "\n".join(line if isinstance(line, str) else str(line.get("message", line)) for line in body)
    return body if isinstance(body, str) else str(body)


def is_already_running(error: Exception) -> bool:
    """Whether a resume error is the server's 400 "already running" (tolerated with `running_ok`)."""
    status = getattr(error, "status_code", None)
    body = getattr(error, "body", None)
    text = f"{getattr(error, 'message', '')} {body}"
    return status in (400, 409) and "already running" in text.lower()
