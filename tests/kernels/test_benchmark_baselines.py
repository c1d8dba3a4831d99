"""The benchmark's baselines compute the same thing as the reference (else its speedups lie)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from lorafleet.kernels import reference

from tests.kernels.cases import assert_close_to_reference, make_case

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("kernels_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("baseline", ["loop_over_adapters", "gathered_bmm"])
def test_benchmark_baseline_matches_reference(bench, baseline: str, device) -> None:
    case = make_case([2, -1, 0, 2, 1, 1], hidden_in=24, slice_widths=(20,), ranks=[8, 16, 8],
                     dtype=torch.float32, device=device)
    expected = reference.add_lora(*case.single)
    assert_close_to_reference(getattr(bench, baseline)(*case.single), expected)


def test_zipf_slots_favour_the_first_adapters_and_stay_in_range(bench) -> None:
    slots = bench.zipf_slots(4000, 8, torch.Generator().manual_seed(0))
    counts = torch.bincount(slots, minlength=8)
    assert slots.min() >= 0 and slots.max() < 8
    assert counts[0] > 2 * counts[7]


def test_full_benchmark_covers_the_issue_shapes(bench) -> None:
    cases = bench.cases(quick=False, on_cuda=True)
    assert {(c.layer, c.rank) for c in cases} == {("qo", 16), ("qo", 64), ("mlp", 16), ("mlp", 64)}
    decode = {(c.num_tokens, c.num_adapters) for c in cases if c.phase == "decode"}
    assert (64, 32) in decode and (1, 1) in decode and (256, 64) in decode
