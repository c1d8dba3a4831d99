"""The stored endpoint spec (camelCase, as HF returns it) and the replica env derived from it.

The spec is a plain JSON dict in `endpoints.spec`, without secrets (those are sealed apart).
Normalisation folds the contract's alternatives into one place: env from `image.custom.env`
moves to `model.env`, `health_route`/`healthRoute` in the image becomes the top-level
`healthRoute`, `protected` stays as the client sent it.
"""

from __future__ import annotations

import copy
from typing import Any

from lorafleet.controlplane.endpoints.env_policy import check_args, check_env
from lorafleet.controlplane.endpoints.local_paths import REPOSITORY_PLACEHOLDER, LocalRoots
from lorafleet.controlplane.endpoints.schemas import EndpointCreate, EndpointUpdate
from lorafleet.controlplane.endpoints.spec_view import DEFAULT_HEALTH_ROUTE
from lorafleet.controlplane.errors import BadRequestError
from lorafleet.controlplane.launchers.base import LocalFolder


def _split_image(
    image: dict[str, dict[str, Any]],
) -> tuple[dict[str, dict[str, Any]], dict[str, str], str | None]:
    """Returns (image without env/health route, its env, its health route)."""
    ((variant, body),) = image.items()
    body = dict(body or {})
    env = body.pop("env", None) or {}
    if not isinstance(env, dict):
        raise BadRequestError(
            f"model.image.{variant}.env must be an object", field=f"model.image.{variant}.env"
        )
    route = body.pop("health_route", None) or body.pop("healthRoute", None)
    if route is not None and (not isinstance(route, str) or not route.startswith("/")):
        raise BadRequestError(
            "the image's health route must be a path starting with '/'",
            field=f"model.image.{variant}.healthRoute",
        )
    env = {str(k): str(v) for k, v in env.items()}
    check_env(env, f"model.image.{variant}.env")
    return {variant: body}, env, route


def check_spec(spec: dict[str, Any], roots: LocalRoots) -> list[LocalFolder]:
    """Applies the tenant rules to a normalised spec (env names, runtime flags, local paths under
    `roots`); returns the local folders it names. Raises a 400 naming the refused field."""
    model = spec["model"]
    check_env(model.get("env") or {}, "model.env")
    flag_env = check_args(model.get("args") or [])
    return roots.spec_sources(spec, flag_env)


def build_spec(body: EndpointCreate) -> dict[str, Any]:
    """The normalised spec for a create request (secrets excluded)."""
    image, image_env, image_route = _split_image(body.model.image or {"huggingface": {}})
    env = {**image_env, **(body.model.env or {})}
    scaling = body.compute.scaling
    spec: dict[str, Any] = {
        "type": body.type or "protected",
        "accountId": body.accountId,
        "provider": {"vendor": body.provider.vendor, "region": body.provider.region},
        "healthRoute": body.healthRoute or image_route or DEFAULT_HEALTH_ROUTE,
        "compute": {
            "accelerator": body.compute.accelerator,
            "instanceType": body.compute.instanceType,
            "instanceSize": body.compute.instanceSize,
            "scaling": {
                "minReplica": 1 if scaling.minReplica is None else scaling.minReplica,
                "maxReplica": scaling.maxReplica or max(1, scaling.minReplica or 1),
                "scaleToZeroTimeout": scaling.scaleToZeroTimeout,
            },
        },
        "model": {
            "repository": body.model.repository,
            "framework": body.model.framework or "pytorch",
            "revision": body.model.revision,
            "task": body.model.task,
            "image": image,
            "env": env,
        },
        "tags": body.tags or [],
    }
    if scaling.measure:
        spec["compute"]["scaling"]["measure"] = scaling.measure
    for key in ("command", "args"):
        if getattr(body.model, key) is not None:
            spec["model"][key] = getattr(body.model, key)
    if body.route is not None:
        spec["route"] = body.route.model_dump(exclude_none=True)
    if body.cacheHttpResponses is not None:
        spec["cacheHttpResponses"] = body.cacheHttpResponses
    if body.rateLimits is not None:
        spec["rateLimits"] = body.rateLimits.model_dump(exclude_none=True)
    _check_replicas(spec)
    return spec


WHOLE_VALUES = ("env", "measure", "rateLimits")  # an update replaces these as a whole


def _deep_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key not in WHOLE_VALUES:
            _deep_merge(target[key], value)
        else:
            target[key] = value


def merge_update(spec: dict[str, Any], body: EndpointUpdate) -> dict[str, Any]:
    """A new spec: `spec` deep-merged with the non-null fields of `body`.

    0.24 clients send `image: {"huggingface": {}}` with every model update; that is read as
    "unchanged", so it never silently drops a custom image. `model.env` replaces the env as a
    whole (that is what "set env to X" means).
    """
    new = copy.deepcopy(spec)
    patch = body.model_dump(exclude_none=True, exclude={"model": {"secrets"}})
    model = patch.get("model", {})
    image = model.pop("image", None)
    if image is not None and image != {"huggingface": {}}:
        split, image_env, route = _split_image(image)
        model["image"] = split
        if image_env:
            model["env"] = {**new["model"].get("env", {}), **image_env, **model.get("env", {})}
        if route:
            patch["healthRoute"] = route
    if "image" in model:
        new["model"]["image"] = model.pop("image")
    _deep_merge(new, patch)
    _check_replicas(new)
    return new


def _check_replicas(spec: dict[str, Any]) -> None:
    scaling = spec["compute"]["scaling"]
    if scaling["minReplica"] > scaling["maxReplica"]:
        raise BadRequestError(
            f"compute.scaling.minReplica ({scaling['minReplica']}) must not exceed "
            f"compute.scaling.maxReplica ({scaling['maxReplica']})",
            field="compute.scaling.minReplica",
        )


def runtime_env(
    spec: dict[str, Any], secrets: dict[str, str], roots: LocalRoots
) -> tuple[dict[str, str], list[LocalFolder]]:
    """The replica's settings (TGI names, `MODEL_ID=/repository` resolved to the repository) and
    the local folders it may read, checked again against `roots` (the operator may have narrowed
    them since the spec was accepted: then this raises a 400 the endpoint shows as its reason)."""
    sources = check_spec(spec, roots)
    model = spec["model"]
    env = dict(model.get("env") or {})
    if env.get("MODEL_ID") in (None, "", REPOSITORY_PLACEHOLDER):
        repository = roots.check(model["repository"], "model.repository", allow_home=True)
        env["MODEL_ID"] = repository.path if repository is not None else model["repository"]
    if model.get("revision") and "REVISION" not in env:
        env["REVISION"] = model["revision"]
    return {**env, **secrets}, sources
