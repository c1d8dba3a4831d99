"""Property-based: random contexts, chunks, block sizes, GQA ratios and options against the
reference, for both paths; and int64 index tensors (the runtime's today) on both."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lorafleet import kernels
from lorafleet.kernels import attention_reference

from tests.kernels.attention_cases import assert_close_to_reference, decode_problem, prefill_problem
from tests.kernels.cases import forced_backend
from tests.kernels.conftest import DEVICE

LAYOUTS = [(2, 2), (4, 2), (8, 2), (4, 1)]  # (H, KVH): GQA 1, 2, 4 and MQA


@st.composite
def options(draw: st.DrawFn) -> dict:
    return {"block_size": draw(st.sampled_from([8, 16])),
            "heads": draw(st.sampled_from(LAYOUTS)),
            "head_dim": draw(st.sampled_from([16, 32, 40])),
            "dtype": draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16])),
            "sliding_window": draw(st.one_of(st.none(), st.integers(1, 60))),
            "soft_cap": draw(st.one_of(st.none(), st.floats(0.5, 50.0)))}


def _build(kind: str, shape: list, opts: dict, seed: int):
    heads, kv_heads = opts["heads"]
    build = decode_problem if kind == "decode" else prefill_problem
    return build(shape, block_size=opts["block_size"], num_heads=heads, num_kv_heads=kv_heads,
                 head_dim=opts["head_dim"], dtype=opts["dtype"], device=DEVICE,
                 sliding_window=opts["sliding_window"], soft_cap=opts["soft_cap"], seed=seed)


def _check_decode(contexts: list[int], opts: dict, seed: int) -> None:
    problem = _build("decode", contexts, opts, seed)
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    assert_close_to_reference(kernels.paged_decode_attention(*problem.args, **problem.options), expected)


def _check_prefill(chunks: list[tuple[int, int]], opts: dict, seed: int) -> None:
    problem = _build("prefill", chunks, opts, seed)
    expected = attention_reference.paged_prefill_attention(*problem.args, **problem.kwargs)
    assert_close_to_reference(kernels.paged_prefill_attention(*problem.args, **problem.kwargs), expected)


CONTEXTS = st.lists(st.integers(0, 70), min_size=1, max_size=5)
CHUNKS = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 20)), min_size=1, max_size=4)


@settings(max_examples=20, deadline=None)
@given(contexts=CONTEXTS, chunks=CHUNKS, opts=options(), seed=st.integers(0, 2**16))
def test_torch_path_matches_reference_on_random_problems(contexts, chunks, opts, seed) -> None:
    with forced_backend("torch"):
        _check_decode(contexts, opts, seed)
        _check_prefill(chunks, opts, seed)


@settings(max_examples=6, deadline=None)
@given(contexts=CONTEXTS, chunks=CHUNKS, opts=options(), seed=st.integers(0, 2**16))
def test_triton_path_matches_reference_on_random_problems(contexts, chunks, opts, seed) -> None:
    with forced_backend("triton"):
        _check_decode(contexts, opts, seed)
        _check_prefill(chunks, opts, seed)


def test_int64_tables_lengths_and_offsets_are_accepted(backend: str, device) -> None:
    problem = decode_problem([30, 1, 17], block_size=8, num_heads=4, num_kv_heads=2, head_dim=32,
                             dtype=torch.float16, device=device, sliding_window=20)
    q, k_cache, v_cache, tables, lens = problem.args
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    actual = kernels.paged_decode_attention(q, k_cache, v_cache, tables.long(), lens.long(),
                                            **problem.options)
    assert_close_to_reference(actual, expected)
    chunked = prefill_problem([(0, 9), (12, 5)], block_size=8, num_heads=4, num_kv_heads=2, head_dim=32,
                              dtype=torch.float16, device=device)
    as_int64 = {k: v.long() if isinstance(v, torch.Tensor) else v for k, v in chunked.kwargs.items()}
    expected = attention_reference.paged_prefill_attention(*chunked.args, **chunked.kwargs)
    assert_close_to_reference(kernels.paged_prefill_attention(*chunked.args, **as_int64), expected)


@pytest.mark.parametrize("window", [1, 2])
def test_tiny_windows_see_only_the_last_keys(window: int, backend: str, device) -> None:
    """window 1: each query sees only itself, so decode returns its own value row."""
    problem = decode_problem([5, 16, 33], block_size=8, num_heads=2, num_kv_heads=1, head_dim=16,
                             dtype=torch.float32, device=device, sliding_window=window)
    out = kernels.paged_decode_attention(*problem.args, **problem.options)
    expected = attention_reference.paged_decode_attention(*problem.args, **problem.options)
    assert_close_to_reference(out, expected)
    if window == 1:
        q, k_cache, v_cache, tables, lens = problem.args
        for b, context in enumerate(lens.tolist()):
            last = context - 1
            value = v_cache[int(tables[b, last // 8]), last % 8, 0]
            torch.testing.assert_close(out[b], value.expand(2, 16))
