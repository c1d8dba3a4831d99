"""Reads a catalog file and detects this host's hardware for its `"computes": "detect"` regions.

File format (JSON): `{"vendors": [{"name", "regions": [{"name", "label", "computes": [...] |
"detect"}]}]}`; a compute has the HF keys `instanceType`, `instanceSize`, `accelerator`,
`numAccelerators`, `memoryGb`, `gpuMemoryGb`, `numCpus`, `architecture`, `pricePerHour`, plus
`gpuModel`: which local GPUs the process launcher reserves (null = run on the CPU). That is how
the seed's `aws`/`nvidia-l4` names map onto real hardware: in the file, not in code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lorafleet.controlplane.catalog.types import Catalog, InstanceType, Region, Vendor
from lorafleet.controlplane.errors import ControlPlaneError


class CatalogFileError(ControlPlaneError):
    status_code = 500


@dataclass(frozen=True)
class HostGpu:
    model: str  # slug, e.g. `nvidia-h200`
    label: str  # e.g. `NVIDIA H200`
    memory_gb: float


def detect_gpus() -> list[HostGpu]:
    """GPUs on this host, from `nvidia-smi` (none when it is missing or fails)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, memory = line.rpartition(",")
        label = name.strip()
        gpus.append(HostGpu(gpu_model_slug(label), label, round(float(memory or 0) / 1024, 1)))
    return gpus


def gpu_model_slug(label: str) -> str:
    """`NVIDIA H200` → `nvidia-h200`; `NVIDIA A100-SXM4-80GB` → `nvidia-a100-sxm4-80gb`."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def host_memory_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return 0.0


def detected_computes(vendor: str, region: str, gpus: list[HostGpu]) -> list[InstanceType]:
    """One instance type per GPU model in sizes x1..xN, plus `cpu` in x1, x2, x4... cores."""
    memory, cpus = host_memory_gb(), os.cpu_count() or 1
    computes: list[InstanceType] = []
    for model in sorted({g.model for g in gpus}):
        same = [g for g in gpus if g.model == model]
        for count in range(1, len(same) + 1):
            computes.append(
                InstanceType(
                    vendor,
                    region,
                    model,
                    f"x{count}",
                    "gpu",
                    count,
                    model,
                    memory_gb=round(memory * count / len(gpus), 1),
                    gpu_memory_gb=same[0].memory_gb,
                    num_cpus=max(1, cpus * count // len(gpus)),
                    architecture=same[0].label,
                )
            )
    size = 1
    while size <= cpus:
        computes.append(
            InstanceType(
                vendor,
                region,
                "cpu",
                f"x{size}",
                "cpu",
                0,
                None,
                memory_gb=memory,
                num_cpus=size,
                architecture="CPU",
            )
        )
        size *= 2
    return computes


def _compute(vendor: str, region: str, raw: dict[str, Any]) -> InstanceType:
    try:
        return InstanceType(
            vendor=vendor,
            region=region,
            instance_type=str(raw["instanceType"]),
            instance_size=str(raw["instanceSize"]),
            accelerator=str(raw.get("accelerator", "cpu")),
            num_accelerators=int(raw.get("numAccelerators", 0)),
            gpu_model=raw.get("gpuModel"),
            memory_gb=float(raw.get("memoryGb", 0)),
            gpu_memory_gb=raw.get("gpuMemoryGb"),
            num_cpus=raw.get("numCpus"),
            architecture=str(raw.get("architecture", "")),
            price_per_hour=float(raw.get("pricePerHour", 0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CatalogFileError(f"bad compute in catalog {vendor}/{region}: {raw!r} ({e})") from e


def parse_catalog(data: dict[str, Any], gpus: list[HostGpu] | None = None) -> Catalog:
    """Builds a `Catalog` from the file's JSON; `detect` regions use `gpus` (default: probe)."""
    vendors = []
    for raw_vendor in data.get("vendors", []):
        regions = []
        for raw_region in raw_vendor.get("regions", []):
            name, computes = raw_vendor["name"], raw_region.get("computes", [])
            if computes == "detect":
                found = detected_computes(name, raw_region["name"], detect_gpus() if gpus is None else gpus)
            else:
                found = [_compute(name, raw_region["name"], c) for c in computes]
            regions.append(
                Region(raw_region["name"], raw_region.get("label", raw_region["name"]), tuple(found))
            )
        vendors.append(Vendor(raw_vendor["name"], tuple(regions)))
    if not vendors:
        raise CatalogFileError("the catalog has no vendors")
    return Catalog(tuple(vendors))


def load_catalog(path: Path | None) -> Catalog:
    """Loads `path`, or the built-in default (this host) when None."""
    try:
        if path is None:
            text = resources.files("lorafleet.controlplane.catalog").joinpath("default.json").read_text()
        else:
            text = Path(path).read_text()
        return parse_catalog(json.loads(text))
    except (OSError, json.JSONDecodeError) as e:
        raise CatalogFileError(f"cannot read catalog {path or 'default'}: {e}") from e
