"""PEFT LoRA adapters: loading and validation, host-memory cache, device slots."""

from lorafleet.runtime.adapters.loader import AdapterWeights, load_adapter, resolve_adapter_dir
from lorafleet.runtime.adapters.slots import AdapterSlots, SlotGrant
from lorafleet.runtime.adapters.store import AdapterStore

__all__ = [
    "AdapterSlots",
    "AdapterStore",
    "AdapterWeights",
    "SlotGrant",
    "load_adapter",
    "resolve_adapter_dir",
]
