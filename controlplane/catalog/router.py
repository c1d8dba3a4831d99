"""`GET /v2/provider[/{namespace}]`: the hardware catalog, HF `list_inference_endpoints_hardware` shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from lorafleet.controlplane.deps import HardwareDep, PrincipalDep

router = APIRouter(tags=["catalog"])


@router.get("/v2/provider", summary="Vendors, regions and instance types")
def get_provider(principal: PrincipalDep, hardware: HardwareDep) -> dict[str, Any]:
    return hardware.render()


@router.get("/v2/provider/{namespace}", summary="Vendors, regions and instance types (HF path)")
def get_provider_for_namespace(
    namespace: str, principal: PrincipalDep, hardware: HardwareDep
) -> dict[str, Any]:
    return hardware.render()
