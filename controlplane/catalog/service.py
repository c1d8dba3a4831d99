"""Resolving a requested compute against the catalog, and rendering `GET /v2/provider`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lorafleet.controlplane.catalog.types import Catalog, InstanceType
from lorafleet.controlplane.errors import BadRequestError
from lorafleet.controlplane.launchers.base import Launcher

if TYPE_CHECKING:
    from lorafleet.controlplane.endpoints.spec_view import EndpointSpec


class Hardware:
    """The catalog in effect: the launcher's own (Ray) or the catalog file's (process)."""

    def __init__(self, file_catalog: Catalog, launcher: Launcher) -> None:
        self._file_catalog = file_catalog
        self.launcher = launcher

    @property
    def catalog(self) -> Catalog:
        return self.launcher.catalog() or self._file_catalog

    def resolve(
        self,
        *,
        vendor: str,
        region: str,
        instance_type: str,
        instance_size: str,
        accelerator: str | None = None,
    ) -> InstanceType:
        """The catalog entry for this request, checked with the launcher.

        Raises:
            BadRequestError: unknown vendor/region/type/size (listing what exists), an
                accelerator that does not match, or hardware the launcher can never provide.
        """
        catalog = self.catalog
        found_vendor = catalog.vendor(vendor)
        if found_vendor is None:
            names = [v.name for v in catalog.vendors]
            raise BadRequestError(
                f"unknown vendor {vendor!r}; available vendors: {', '.join(names)}",
                field="provider.vendor",
                available=names,
            )
        found_region = next((r for r in found_vendor.regions if r.name == region), None)
        if found_region is None:
            names = [r.name for r in found_vendor.regions]
            raise BadRequestError(
                f"unknown region {region!r} for vendor {vendor!r}; available regions: {', '.join(names)}",
                field="provider.region",
                available=names,
            )
        types = sorted({c.instance_type for c in found_region.computes})
        if instance_type not in types:
            raise BadRequestError(
                f"unknown instance type {instance_type!r} in {vendor}/{region}; "
                f"available instance types: {', '.join(types)}",
                field="compute.instanceType",
                available=types,
            )
        sizes = [c.instance_size for c in found_region.computes if c.instance_type == instance_type]
        match = next(
            (
                c
                for c in found_region.computes
                if c.instance_type == instance_type and c.instance_size == instance_size
            ),
            None,
        )
        if match is None:
            raise BadRequestError(
                f"unknown instance size {instance_size!r} for {instance_type!r}; "
                f"available sizes: {', '.join(sizes)}",
                field="compute.instanceSize",
                available=sizes,
            )
        if accelerator is not None and accelerator != match.accelerator:
            raise BadRequestError(
                f"{instance_type} {instance_size} is a {match.accelerator} instance, not {accelerator!r}",
                field="compute.accelerator",
                available=[match.accelerator],
            )
        self.launcher.validate(match)
        return match

    def resolve_spec(self, spec: EndpointSpec, *, check_accelerator: bool = False) -> InstanceType:
        """`resolve` for a stored spec's provider and compute (may ask the launcher, e.g. Ray's
        nodes: never call it with a database transaction open)."""
        compute = spec.compute
        accelerator = compute.accelerator if check_accelerator else None
        return self.resolve(vendor=spec.provider.vendor, region=spec.provider.region,
                            instance_type=compute.instance_type, instance_size=compute.instance_size,
                            accelerator=accelerator)

    def render(self) -> dict[str, Any]:
        """The HF `/v2/provider` shape, with live quota from the launcher."""
        vendors = []
        for vendor in self.catalog.vendors:
            regions = []
            for region in vendor.regions:
                computes = [self._render_compute(c) for c in region.computes]
                regions.append(
                    {"name": region.name, "label": region.label, "status": "available", "computes": computes}
                )
            vendors.append({"name": vendor.name, "status": "available", "regions": regions})
        return {"vendors": vendors}

    def _render_compute(self, compute: InstanceType) -> dict[str, Any]:
        return {
            "id": compute.id,
            "accelerator": compute.accelerator,
            "numAccelerators": compute.num_accelerators,
            "numCpus": compute.num_cpus,
            "memoryGb": compute.memory_gb,
            "gpuMemoryGb": compute.gpu_memory_gb,
            "instanceType": compute.instance_type,
            "instanceSize": compute.instance_size,
            "architecture": compute.architecture,
            "status": "available",
            "pricePerHour": compute.price_per_hour,
            "quota": {
                "maxAccelerators": self._max_accelerators(compute),
                "usedAccelerators": self.launcher.used_accelerators(compute),
            },
        }

    def _max_accelerators(self, compute: InstanceType) -> int:
        if compute.gpu_model is None:
            return compute.num_accelerators
        same = [c.num_accelerators for c in self.catalog.instances() if c.gpu_model == compute.gpu_model]
        return max(same, default=compute.num_accelerators)
