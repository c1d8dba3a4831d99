"""`GET /api/whoami-v2`: the namespace of the bearer token, as huggingface_hub reads it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from lorafleet.controlplane.deps import PrincipalDep

router = APIRouter(tags=["auth"])


@router.get("/api/whoami-v2", summary="Who the bearer token belongs to")
def whoami(principal: PrincipalDep) -> dict[str, Any]:
    return {
        "type": "user",
        "name": principal.namespace,
        "id": str(principal.namespace_id),
        "orgs": [],
        "auth": {"type": "access_token"},
    }
