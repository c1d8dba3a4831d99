"""The catalog a Ray cluster offers: instance types derived from its nodes, merged with the file.

The catalog file still names vendors and regions (the seed's `aws`/`us-east-1`); what changes
with Ray is the hardware behind them. A region whose computes are `"detect"` gets the cluster's
instance types (one per GPU model in sizes x1, x2, x4... up to the most GPUs on one node, plus
`cpu`); a region that lists computes keeps those the cluster can run at all.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from lorafleet.controlplane.catalog.loader import CatalogFileError, parse_catalog
from lorafleet.controlplane.catalog.types import Catalog, InstanceType, Region, Vendor
from lorafleet.controlplane.launchers.ray_nodes import (
    NodeResources,
    gpu_model_name,
    impossible_reason,
    power_of_two_sizes,
    request_for,
)

_GIB = 2**30


def read_catalog_file(path: Path | None) -> dict[str, Any]:
    """The catalog file's JSON (the built-in default when `path` is None)."""
    try:
        if path is None:
            text = resources.files("lorafleet.controlplane.catalog").joinpath("default.json").read_text()
        else:
            text = Path(path).read_text()
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise CatalogFileError(f"cannot read catalog {path or 'default'}: {e}") from e


def derived_computes(vendor: str, region: str, nodes: list[NodeResources]) -> list[InstanceType]:
    """Instance types the cluster's nodes offer, named as the process launcher names them."""
    computes: list[InstanceType] = []
    models = sorted({(gpu_model_name(t), t) for n in nodes for t in n.accelerator_types})
    for model, ray_type in models:
        hosts = [n for n in nodes if ray_type in n.accelerator_types and n.num_gpus > 0]
        if not hosts:
            continue
        largest = max(hosts, key=lambda n: n.num_gpus)
        for size in power_of_two_sizes(largest.num_gpus):
            share = size / largest.num_gpus
            computes.append(InstanceType(
                vendor, region, model, f"x{size}", "gpu", size, model,
                memory_gb=round(largest.total.get("memory", 0) / _GIB * share, 1),
                num_cpus=max(1, int(largest.num_cpus * share)), architecture=f"NVIDIA {ray_type}"
                if model.startswith("nvidia-") else ray_type))
    most_cpus = max((n.num_cpus for n in nodes), default=0)
    memory = max((n.total.get("memory", 0) for n in nodes), default=0) / _GIB
    for size in power_of_two_sizes(most_cpus):
        computes.append(InstanceType(vendor, region, "cpu", f"x{size}", "cpu", 0, None,
                                     memory_gb=round(memory, 1), num_cpus=size, architecture="CPU"))
    return computes


def runnable(instance: InstanceType, nodes: list[NodeResources]) -> bool:
    """Whether some node could ever hold one replica of `instance`."""
    request = request_for(instance.gpu_model, instance.num_accelerators if instance.gpu_model else 0,
                          instance.num_cpus or 1, nodes)
    return impossible_reason(request, nodes) is None


def cluster_catalog(data: dict[str, Any], nodes: list[NodeResources]) -> Catalog:
    """Merges the catalog file's JSON with what the cluster's nodes offer.

    Args:
        data: the catalog file (`{"vendors": [{"name", "regions": [...]}]}`).
        nodes: the cluster's alive nodes.
    """
    detect: set[tuple[str, str]] = set()
    listed: dict[str, list[dict[str, Any]]] = {"vendors": []}
    for vendor in data.get("vendors", []):
        regions = []
        for region in vendor.get("regions", []):
            if region.get("computes") == "detect":
                detect.add((vendor["name"], region["name"]))
                region = {**region, "computes": []}
            regions.append(region)
        listed["vendors"].append({**vendor, "regions": regions})
    parsed = parse_catalog(listed, gpus=[])
    vendors = []
    for vendor in parsed.vendors:
        regions = []
        for region in vendor.regions:
            if (vendor.name, region.name) in detect:
                computes = derived_computes(vendor.name, region.name, nodes)
            else:
                computes = [c for c in region.computes if runnable(c, nodes)]
            regions.append(Region(region.name, region.label, tuple(computes)))
        vendors.append(Vendor(vendor.name, tuple(regions)))
    return Catalog(tuple(vendors))
