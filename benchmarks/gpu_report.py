"""What the GPU check scripts share: sections that record a result or an error, and device facts.

Each section runs at once; its return value (a JSON-able dict) or its error lands in the report,
with its duration, and the next section still runs. The report is printed and written as JSON.

    report = Report("engine")
    report.section("env", device_facts)
    report.write(path)          # exits non-zero from main() via report.ok
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The Triton kernels the runtime launches (module, function name), for counting compiled variants.
KERNELS = (
    ("lorafleet.kernels.lora", "_shrink_kernel"),
    ("lorafleet.kernels.lora", "_expand_kernel"),
    ("lorafleet.kernels.attention", "_decode_kernel"),
    ("lorafleet.kernels.attention", "_decode_reduce_kernel"),
    ("lorafleet.kernels.attention_prefill", "_prefill_kernel"),
    ("lorafleet.kernels.fused_norm", "_rms_norm_kernel"),
    ("lorafleet.kernels.fused_rotary", "_rotary_kernel"),
)


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[str, Any] = {"errors": {}, "seconds": {}}

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        began = time.time()
        try:
            self.data[name] = result = fn()
        except BaseException as e:  # noqa: BLE001 - record it, run the next section
            if isinstance(e, KeyboardInterrupt):
                raise
            self.data["errors"][name] = f"{type(e).__name__}: {e}"[-1500:]
            traceback.print_exc()
            result = None
        self.data["seconds"][name] = round(time.time() - began, 1)
        print(f"[{self.name}] {name}: {'error' if name in self.data['errors'] else 'done'} "
              f"in {self.data['seconds'][name]} s", flush=True)
        return result

    @property
    def ok(self) -> bool:
        sections = [value for key, value in self.data.items() if key not in ("errors", "seconds", "ok")]
        return not self.data["errors"] and all(
            value.get("ok", True) for value in sections if isinstance(value, dict)
        )

    def write(self, path: Path | None) -> None:
        self.data["ok"] = self.ok
        text = json.dumps(self.data, indent=1, default=str)
        print(text)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def device_facts() -> dict[str, Any]:
    import triton

    facts: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                             "triton": triton.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        facts |= {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                  "sms": props.multi_processor_count, "free_gib": round(free / 2**30, 1),
                  "total_gib": round(total / 2**30, 1),
                  "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1)}
    return facts


def compiled_variants() -> dict[str, int | None]:
    """Per kernel, how many variants Triton has compiled in this process (None: not readable)."""
    import importlib

    counts: dict[str, int | None] = {}
    for module_name, name in KERNELS:
        fn = getattr(importlib.import_module(module_name), name)
        try:
            caches = getattr(fn, "device_caches", None)
            if caches is not None:  # Triton >= 3.2: device -> (kernel cache, ...)
                counts[name] = sum(len(entry[0]) for entry in caches.values())
            else:
                counts[name] = sum(len(cache) for cache in fn.cache.values())
        except (AttributeError, TypeError, IndexError):
            counts[name] = None
    return counts


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
