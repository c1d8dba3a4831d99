"""Frozen catalog types, shared by the catalog file loader, launchers and the endpoint service."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceType:
    """One orderable compute: `instanceType` in `instanceSize` at a vendor's region.

    Args:
        vendor: e.g. `local`, or `aws` when a catalog file maps the seed's names.
        region: e.g. `local`, `us-east-1`.
        instance_type: e.g. `nvidia-l4`, `cpu`.
        instance_size: e.g. `x1`, `x4`.
        accelerator: `gpu` or `cpu`.
        num_accelerators: GPUs per replica (0 for CPU).
        gpu_model: which GPUs the launcher reserves (`nvidia-h200`), None for CPU. A catalog
            file maps a seed name such as `aws/us-east-1/nvidia-l4` to a local GPU model or CPU.
        memory_gb: host memory per replica.
        gpu_memory_gb: memory of one GPU.
        num_cpus: CPU cores per replica.
        architecture: human label (`NVIDIA H200`).
        price_per_hour: for display only.
    """

    vendor: str
    region: str
    instance_type: str
    instance_size: str
    accelerator: str
    num_accelerators: int = 0
    gpu_model: str | None = None
    memory_gb: float = 0.0
    gpu_memory_gb: float | None = None
    num_cpus: int | None = None
    architecture: str = ""
    price_per_hour: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.vendor}-{self.region}-{self.instance_type}-{self.instance_size}"


@dataclass(frozen=True)
class Region:
    name: str
    label: str
    computes: tuple[InstanceType, ...]


@dataclass(frozen=True)
class Vendor:
    name: str
    regions: tuple[Region, ...]


@dataclass(frozen=True)
class Catalog:
    """All vendors; lookups raise nothing, the endpoint service turns misses into 400s."""

    vendors: tuple[Vendor, ...]

    def vendor(self, name: str) -> Vendor | None:
        return next((v for v in self.vendors if v.name == name), None)

    def instances(self) -> list[InstanceType]:
        return [c for v in self.vendors for r in v.regions for c in r.computes]
