"""Timing helpers shared by the kernel benchmarks (`kernels.py`, `kernels_paged.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

NOMINAL_PEAK_GBPS = {"H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
                     "A100": 1555, "L40S": 864, "A10": 600, "L4": 300}


def time_us(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Time of one call: on CUDA the median of 3 rounds of `reps` back-to-back calls timed with
    events; on a CPU the best of 5 rounds (CPU machines here are shared, noise only adds)."""
    fn()
    samples = []
    for _ in range(3 if device.type == "cuda" else 5):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) * 1e3 / reps)
        else:
            began = time.perf_counter()
            for _ in range(reps):
                fn()
            samples.append((time.perf_counter() - began) * 1e6 / reps)
    return statistics.median(samples) if device.type == "cuda" else min(samples)


def graph_time_us(fn: Callable[[], object], reps: int) -> float:
    """GPU time per call with launch gaps removed: `reps` calls captured in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm caches (slice offsets, compiled kernels) outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return time_us(graph.replay, torch.device("cuda"), 3) / reps


def peak_bandwidth(device: torch.device) -> tuple[float, str]:
    """(GB/s, where it came from): the nominal HBM figure for a known GPU, else a measured copy."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, gbps in NOMINAL_PEAK_GBPS.items():
            if key in name:
                return float(gbps), f"nominal for {name}"
    src = torch.empty(64 << 20 if device.type == "cuda" else 16 << 20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = time_us(lambda: dst.copy_(src), device, 5) / 1e6
    return 2 * src.numel() * 4 / seconds / 1e9, f"measured copy on {device}"
