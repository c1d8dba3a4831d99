"""benchmarks/attention.py: its baseline computes attention (else its speed-ups lie), its pool is
laid out as the runtime's, and its CPU pass runs and writes the report gpu_check.sh collects."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from lorafleet.kernels import attention_reference

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "attention.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("attention_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_gathered_baseline_matches_reference(bench) -> None:
    gen = torch.Generator().manual_seed(3)
    k_cache, v_cache = torch.randn(2, 12, 8, 2, 16, generator=gen)  # finite everywhere: it reads padding
    tables = torch.randperm(12, generator=gen)[:9].view(3, 3).to(torch.int32)
    lens = torch.tensor([5, 24, 17], dtype=torch.int32)
    q = torch.randn(3, 4, 16, generator=gen)
    expected = attention_reference.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale=0.25)
    actual = bench.gathered_sdpa(q, k_cache, v_cache, tables, lens, 0.25)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_pool_is_layered_like_the_runtime_and_scatters_distinct_blocks(bench, monkeypatch) -> None:
    monkeypatch.setattr(bench, "LAYER", {"num_heads": 4, "num_kv_heads": 2, "head_dim": 8, "block_size": 4})
    gen = torch.Generator().manual_seed(0)
    kv, tables = bench.build_pool(3, 5, 10, torch.float32, torch.device("cpu"), gen)
    assert kv.shape == (3, 2, 5 * 3, 4, 2, 8)  # [layers, k|v, blocks, block_size, KVH, D]
    assert tables.shape == (5, 3) and tables.dtype == torch.int32
    assert sorted(tables.flatten().tolist()) == list(range(15))


def test_cpu_pass_writes_the_report_and_plot(bench, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick", "--cpu", "--json-out", str(tmp_path / "attention.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "attention.json").read_text())
    assert report["device"] == "cpu" and report["quick"] and "needs a GPU" in report["note"]
    assert report["decode"] and all(row["max_abs_err_vs_reference"] < 1e-4 for row in report["decode"])
    assert all(row["ours_us"] > 0 and row["gathered_us"] > 0 for row in report["decode"])
    assert (tmp_path / "attention.png").stat().st_size > 0
