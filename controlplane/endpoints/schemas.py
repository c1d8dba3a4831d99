"""Request bodies of the endpoint routes, as huggingface_hub 0.24 → 2.x send them.

Unknown keys are ignored (newer clients send fields we do not use), `null` means "not given",
and both placements/spellings the contract lists are accepted (env in `model.env` or
`image.custom.env`; `healthRoute` or `health_route`).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENDPOINT_NAME = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENDPOINT_TYPES = ("public", "protected", "authenticated", "private")
Scalar = str | int | float | bool


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _env_dict(value: dict[str, Scalar] | None, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    out = {}
    for key, item in value.items():
        if not ENV_NAME.match(key):
            raise ValueError(f"{what} name {key!r} is not a valid environment variable name")
        out[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return out


class ScalingIn(_Lenient):
    minReplica: int | None = Field(None, ge=0, le=64)
    maxReplica: int | None = Field(None, ge=1, le=64)
    scaleToZeroTimeout: int | None = Field(None, ge=1, le=525600, description="idle minutes")
    measure: dict[str, float | None] | None = Field(None, description='e.g. {"pendingRequests": 4}')


class ComputeCreate(_Lenient):
    accelerator: str = Field(..., min_length=1, max_length=32)
    instanceType: str = Field(..., min_length=1, max_length=64)
    instanceSize: str = Field(..., min_length=1, max_length=32)
    scaling: ScalingIn = Field(default_factory=lambda: ScalingIn.model_validate({}))


class ComputeUpdate(_Lenient):
    accelerator: str | None = Field(None, min_length=1, max_length=32)
    instanceType: str | None = Field(None, min_length=1, max_length=64)
    instanceSize: str | None = Field(None, min_length=1, max_length=32)
    scaling: ScalingIn | None = None


class _ModelFields(_Lenient):
    framework: str | None = Field(None, max_length=64)
    revision: str | None = Field(None, max_length=256)
    task: str | None = Field(None, max_length=64)
    image: dict[str, dict[str, Any]] | None = Field(
        None, description='one variant: {"huggingface": {}}, {"custom": {"url", "health_route", "env"}}, ...'
    )
    env: dict[str, Scalar] | None = None
    secrets: dict[str, Scalar] | None = Field(None, description="encrypted at rest, never returned")
    command: list[str] | None = None
    args: list[str] | None = None

    @field_validator("image")
    @classmethod
    def _one_variant(cls, value: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"image must have exactly one variant key (e.g. 'custom'), got {sorted(value)}")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, Scalar] | None) -> dict[str, str] | None:
        return _env_dict(value, "env")

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: dict[str, Scalar] | None) -> dict[str, str] | None:
        return _env_dict(value, "secret")


class ModelCreate(_ModelFields):
    repository: str = Field(..., min_length=1, max_length=512)


class ModelUpdate(_ModelFields):
    repository: str | None = Field(None, min_length=1, max_length=512)


class ProviderIn(_Lenient):
    vendor: str = Field(..., min_length=1, max_length=64)
    region: str = Field(..., min_length=1, max_length=64)


class RateLimitIn(BaseModel):
    """Limits of one scope. Strict numbers: no strings, no booleans, no NaN or infinity."""

    model_config = ConfigDict(extra="forbid")

    requestsPerSecond: float | None = Field(None, gt=0, le=1_000_000, strict=True, allow_inf_nan=False)
    tokensPerMinute: int | None = Field(None, ge=1, le=10**12, strict=True)


class RateLimitsIn(RateLimitIn):
    """`rateLimits`: the endpoint's limits, and `perAdapter` ones applied to each adapter (and the
    base model) on its own. Replaced as a whole by an update; `{}` removes every limit."""

    perAdapter: RateLimitIn | None = None


class RouteIn(_Lenient):
    domain: str | None = None
    path: str | None = None


class _EndpointFields(_Lenient):
    type: str | None = Field(None, description="public | protected | authenticated | private")
    route: RouteIn | None = None
    cacheHttpResponses: bool | None = None
    tags: list[str] | None = None
    healthRoute: str | None = Field(None, max_length=256)
    rateLimits: RateLimitsIn | None = Field(None, description="requests/s and tokens/min, see the docs")

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        if value is not None and value not in ENDPOINT_TYPES:
            raise ValueError(f"type must be one of {', '.join(ENDPOINT_TYPES)}")
        return value

    @field_validator("healthRoute")
    @classmethod
    def _route(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("healthRoute must start with '/'")
        return value


class EndpointCreate(_EndpointFields):
    """`POST /v2/endpoint/{namespace}`."""

    name: str = Field(..., pattern=ENDPOINT_NAME, description="1-32 lowercase letters, digits or '-'")
    accountId: str | None = None
    compute: ComputeCreate
    model: ModelCreate
    provider: ProviderIn

    @model_validator(mode="after")
    def _replicas(self) -> EndpointCreate:
        scaling = self.compute.scaling
        if (
            scaling.minReplica is not None
            and scaling.maxReplica is not None
            and scaling.minReplica > scaling.maxReplica
        ):
            raise ValueError("compute.scaling.minReplica must not exceed compute.scaling.maxReplica")
        return self


class EndpointUpdate(_EndpointFields):
    """`PUT /v2/endpoint/{namespace}/{name}`: a deep partial merge; `null` means unchanged."""

    compute: ComputeUpdate | None = None
    model: ModelUpdate | None = None
    provider: ProviderIn | None = None
