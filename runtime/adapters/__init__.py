"""PEFT LoRA adapters: loading and validation, versions in host memory, residency on the device."""

from lorafleet.runtime.adapters.loader import AdapterWeights, load_adapter, resolve_adapter_dir
from lorafleet.runtime.adapters.residency import AdapterResidency, Grant, Residence
from lorafleet.runtime.adapters.store import AdapterStore, AdapterVersion

__all__ = [
    "AdapterResidency",
    "AdapterStore",
    "AdapterVersion",
    "AdapterWeights",
    "Grant",
    "Residence",
    "load_adapter",
    "resolve_adapter_dir",
]
