"""The CPU path's own kernels (`csrc/`): built once per machine, used when present.

- `lora_layer` (`csrc/lora_cpu.cpp`): at a decode step's few rows per adapter the LoRA matmuls are
  bound by reading their weights from memory, and MKL's small GEMMs read them at a third of the
  machine's bandwidth (they pack each operand a column strip at a time). The kernel streams them
  instead, and does one layer call's every adapter in one call (docs/kernels.md, "CPU path";
  docs/runtime.md, seventh pass).
- `decode_attention` (`csrc/attention_cpu.cpp`): decode rows attend to their sequences' KV blocks
  where they lie in the paged cache, instead of gathering them into padded copies for SDPA
  (docs/runtime.md, eighth pass).
- `rms_norm`, `add_rms_norm`, `rotary` (`csrc/layers_cpu.cpp`): the decoder's RMSNorm (with the
  residual add before it) and RoPE, one pass over each row instead of five to ten torch ops.

It is compiled for the CPU it is built on (`-march=native`), by `make setup`
(`python -m lorafleet.kernels.native_cpu`), into `kernels/_native/<tag>/`, where the tag hashes the
source, the flags, torch's version and this CPU's feature flags: a build for another CPU, source or
torch is never loaded, only ignored. Nothing is compiled when a process runs: a machine without a
build (no compiler, or setup not run) uses the torch forms, as does `LORAFLEET_CPU_NATIVE=0`.
The folder sits beside this module so that sandboxed replicas, which see lorafleet's package
folders read-only, load the same build.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("lorafleet.kernels")

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = tuple(CSRC / name for name in (
    "bindings.cpp", "lora_cpu.cpp", "attention_cpu.cpp", "layers_cpu.cpp"))
HEADERS = tuple(CSRC / name for name in ("kernels.h", "vec.h"))
BUILDS = Path(__file__).resolve().parent / "_native"
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)
DISABLE = "LORAFLEET_CPU_NATIVE"  # "0": never load it


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_tag() -> str:
    """What a build is valid for: these sources, these flags, this torch, this CPU."""
    digest = hashlib.sha256()
    for part in (*(path.read_bytes() for path in SOURCES + HEADERS), " ".join(CFLAGS + LDFLAGS).encode(),
                 torch.__version__.encode(), _cpu_flags().encode(), platform.machine().encode()):
        digest.update(part)
    return digest.hexdigest()[:16]


def module_name() -> str:
    return f"lorafleet_cpu_{build_tag()}"


def build(say: Callable[[str], None] = print) -> Path:
    """Compiles the kernels for this machine (if not built yet) and returns the library's path."""
    from torch.utils import cpp_extension

    folder = BUILDS / build_tag()
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    cpp_extension.load(module_name(), [str(path) for path in SOURCES], extra_cflags=list(CFLAGS),
                       extra_ldflags=list(LDFLAGS), build_directory=str(folder), verbose=False)
    library = _library(folder)
    assert library is not None, f"the build left no library in {folder}"
    say(f"CPU kernels ready in {time.monotonic() - start:.1f} s: {library}")
    return library


def _library(folder: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"{module_name()}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def lora_kernel() -> ModuleType | None:
    """The built kernels' module, where its LoRA passes its check on this machine; else None."""
    return _usable("LoRA")


def attention_kernel() -> ModuleType | None:
    """The built kernels' module, where its decode attention passes its check here; else None."""
    return _usable("decode attention")


def norm_rope_kernel() -> ModuleType | None:
    """The built kernels' module, where its RMSNorm and RoPE pass their check here; else None."""
    return _usable("RMSNorm/RoPE")


@functools.cache
def _usable(kernel: str) -> ModuleType | None:
    """The module where `kernel` passes its check (`CHECKS`, run once per process); else None."""
    module = _module()
    if module is None:
        return None
    if CHECKS[kernel](module):
        return module
    log.warning("CPU %s kernel failed its check on this machine (wrong result): torch forms", kernel)
    return None


@functools.cache
def _module() -> ModuleType | None:
    """This machine's build, loaded once (never compiled here); None where there is none."""
    if os.environ.get(DISABLE) == "0" or sys.platform != "linux":
        return None
    try:
        library = _library(BUILDS / build_tag())
        if library is None:
            log.info("no CPU kernels built for this machine (`make setup` builds them): torch forms")
            return None
        spec = importlib.util.spec_from_file_location(module_name(), library)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # a stale or foreign build: the torch forms serve
        log.warning("CPU kernels not loaded (%s): torch forms", error)
        return None
    return module


def forget() -> None:
    """Drops what this process loaded and decided, so that the next lookup starts over (tests)."""
    _usable.cache_clear()
    _module.cache_clear()


def _computes_right(module: ModuleType) -> bool:
    """A product of small integers (exact in any summation order) against torch's."""
    x = torch.arange(40.0).reshape(5, 8) % 7 - 3  # [5, K=8]
    a_rows = torch.arange(48.0).reshape(6, 8) % 5 - 2  # two slices of rank 3: [6, 8]
    b = [torch.arange(3.0 * 40).reshape(3, 40) % 3 - 1, torch.arange(3.0 * 24).reshape(3, 24) % 4 - 2]
    out = torch.zeros(5, 64)
    module.lora_layer(out, x, [1], [4], [a_rows], b, [0, 40, 64], [1.0, 2.0])
    shrunk = x[1:4] @ a_rows.t()
    expected = torch.zeros(5, 64)
    expected[1:4, :40] = shrunk[:, :3] @ b[0]
    expected[1:4, 40:] = 2.0 * (shrunk[:, 3:] @ b[1])
    return torch.equal(out, expected)


def _attends_right(module: ModuleType) -> bool:
    """Two sequences on a cache of 4-token blocks (one across two blocks), without and with a
    sliding window, against softmax attention in float64: within fp32's rounding."""
    gen = torch.Generator().manual_seed(0)
    k_cache, v_cache = (torch.randn(3, 4, 2, 8, generator=gen) for _ in range(2))  # [blocks, bs, KVH, D]
    q = torch.randn(3, 4, 8, generator=gen)  # 3 rows, 4 query heads: 2 per KV head
    tables, lens = torch.tensor([[2, 0], [1, 0]]), torch.tensor([6, 3])
    for window in (-1, 2):
        out = torch.zeros(3, 4, 8)
        rows = torch.tensor([2, 0])
        module.decode_attention(out, q, rows, k_cache, v_cache, tables, lens, 0.5, window, 0.0)
        for row, table, length in ((2, [2, 0], 6), (0, [1], 3)):
            start = max(0, length - window) if window > 0 else 0
            keys, values = (
                cache[table].reshape(-1, 2, 8)[start:length].double().repeat_interleave(2, 1)
                for cache in (k_cache, v_cache)
            )
            weights = (torch.einsum("hd,thd->ht", q[row].double(), keys) * 0.5).softmax(-1)
            if not torch.allclose(out[row].double(), torch.einsum("ht,thd->hd", weights, values), atol=1e-5):
                return False
        if not out[1].eq(0).all():  # a row no decode row names is left alone
            return False
    return True


def _norms_and_rope_right(module: ModuleType) -> bool:
    """RMSNorm (plain, after a residual add, Gemma's offset) within fp32 rounding of the eager
    form's; RoPE bit for bit."""
    gen = torch.Generator().manual_seed(0)
    x, residual = torch.randn(3, 40, generator=gen), torch.randn(3, 40, generator=gen)
    weight = torch.randn(40, generator=gen)
    for offset in (0.0, 1.0):
        total = x + residual
        normed = total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + 1e-6)
        expected = normed * (offset + weight) if offset else weight * normed
        out, got_total, plain = torch.empty(3, 40), torch.empty(3, 40), torch.empty(3, 40)
        module.add_rms_norm(out, got_total, x, residual, weight, 1e-6, offset)
        module.rms_norm(plain, total, weight, 1e-6, offset)
        if not (torch.equal(got_total, total) and torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
                and torch.allclose(plain, expected, atol=1e-5, rtol=1e-5)):
            return False
    q, k = torch.randn(3, 4, 8, generator=gen), torch.randn(3, 2, 8, generator=gen)
    angles = torch.randn(3, 1, 8, generator=gen)
    cos, sin = angles.cos(), angles.sin()
    q_out, k_out = torch.empty(3, 4, 8), torch.empty(3, 2, 8)
    module.rotary(q_out, k_out, q, k, cos, sin)

    def rotated(t: torch.Tensor) -> torch.Tensor:
        return t * cos + torch.cat((-t[..., 4:], t[..., :4]), dim=-1) * sin

    return torch.equal(q_out, rotated(q)) and torch.equal(k_out, rotated(k))


# Each kernel's check at first use: a small case against torch's result.
CHECKS: dict[str, Callable[[ModuleType], bool]] = {
    "LoRA": _computes_right, "decode attention": _attends_right, "RMSNorm/RoPE": _norms_and_rope_right,
}


def main() -> None:
    if os.environ.get(DISABLE) == "0":
        print(f"{DISABLE}=0: the CPU kernels are not built")
        return
    try:
        build()
    except Exception as error:  # no compiler or ninja: setup goes on, the torch forms serve
        print(f"CPU kernels not built ({type(error).__name__}: {error}); the torch forms will serve")
        return
    for kernel in CHECKS:
        if _usable(kernel) is None:
            print(f"CPU {kernel} kernel built but not usable here; the torch forms will serve")


if __name__ == "__main__":
    main()
