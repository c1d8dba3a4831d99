"""The benchmark's baselines compute the same thing as the reference (else its speedups lie)."""

from __future__ import annotations

import importlib.util
import json
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


@pytest.fixture
def tiny_paged_layers(bench, monkeypatch: pytest.MonkeyPatch):
    """The paged section on a layer small enough for a test (its real shapes are 7B's)."""
    monkeypatch.setattr(bench.kernels_paged, "PAGED_LAYERS", {"qkv": (48, (32, 16, 16))})
    return bench.kernels_paged


def test_paged_case_runs_the_same_adapters_both_ways_and_counts_the_padding(bench, tiny_paged_layers,
                                                                            device) -> None:
    case = tiny_paged_layers.PagedCase("decode", "qkv", num_tokens=12, num_adapters=6)
    row = tiny_paged_layers.run_paged_case(case, device, torch.float32, bench.zipf_slots)
    assert row["max_abs_diff"] < 1e-4  # paged and padded stacked compute the same delta
    present = row["ranks_present"]
    assert sum(present.values()) == row["adapters_present"] > 1
    per_row = 4 * (3 * 48 + 64)  # bytes of one rank row of A (three slices) and B, fp32
    ranks_read = sum(int(rank) * count for rank, count in present.items())
    assert row["bytes_stacked"] - row["bytes_paged"] == per_row * (64 * row["adapters_present"] - ranks_read)


def test_paged_section_writes_json_and_png_where_asked(bench, tiny_paged_layers, tmp_path: Path) -> None:
    target = tmp_path / "gpu" / "kernels.json"
    assert bench.main(["--quick", "--only", "paged", "--json-out", str(target)]) == 0
    report = json.loads(target.read_text())
    assert report["results"] == [] and len(report["paged"]) == 2
    assert {row["phase"] for row in report["paged"]} == {"decode", "prefill"}
    assert target.with_suffix(".png").stat().st_size > 0
