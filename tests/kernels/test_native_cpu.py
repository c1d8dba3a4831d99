"""The CPU kernels (`kernels/native_cpu.py`, `kernels/csrc/`): built by `make setup` where a compiler
is. The LoRA kernel equals the float64 product and is the planned form's engine for decode rows; the
decode attention kernel equals float64 attention over the paged cache and refuses bad arguments."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from lorafleet.kernels import native_cpu, prepare_lora_batch, torch_lora, torch_slot_weights
from lorafleet.kernels.torch_slot_weights import SlotWeights

from tests.kernels.cases import assert_close_to_reference, make_paged_case

CPU = torch.device("cpu")
KERNEL = native_cpu.lora_kernel()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no CPU LoRA kernel built on this machine")


def test_setup_built_the_kernels_where_a_compiler_is() -> None:
    """`make setup` builds them (`python -m lorafleet.kernels.native_cpu`): with a C++ compiler on
    this machine, each must be there and pass its check, or every test of it would skip unnoticed."""
    if shutil.which("c++") is None:  # ninja comes with the runtime's packages
        pytest.skip("no C++ compiler here: the torch forms serve")
    assert KERNEL is not None, "run `make setup` (it builds the CPU kernels)"
    assert native_cpu.attention_kernel() is not None, "the decode attention kernel failed its check"
    assert native_cpu.norm_rope_kernel() is not None, "the RMSNorm/RoPE kernel failed its check"


def _segments_case(seed: int, rank: int, widths: tuple[int, ...], hidden_in: int, rows: list[int]):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    total = sum(rows) + 3
    # strided rows: views into wider tensors, as the engine's fused outputs can be
    x = torch.randn(total, hidden_in + 5, generator=generator)[:, 2 : 2 + hidden_in]
    out = torch.randn(total, sum(widths) + 7, generator=generator)[:, : sum(widths)]
    offsets = [0]
    for width in widths:
        offsets.append(offsets[-1] + width)
    firsts, ends, a_rows, b, alphas = [], [], [], [], []
    at = 1  # row 0 and the last two rows belong to no segment
    for count in rows:
        firsts.append(at)
        ends.append(at + count)
        at += count
        a_rows.append(torch.randn(len(widths) * rank, hidden_in, generator=generator))
        b.extend(torch.randn(rank, width, generator=generator) for width in widths)
        alphas.extend([0.5, 0.0, 2.0][: len(widths)])  # a slice with scale 0 is skipped
    return out, x, firsts, ends, a_rows, b, offsets, alphas


def _expected(out, x, firsts, ends, a_rows, b, offsets, alphas):  # type: ignore[no-untyped-def]
    expected = out.double().clone()
    slices = len(offsets) - 1
    for g, (first, end) in enumerate(zip(firsts, ends, strict=True)):
        rank = a_rows[g].shape[0] // slices
        shrunk = x[first:end].double() @ a_rows[g].double().t()
        for s in range(slices):
            if alphas[g * slices + s] != 0.0:
                delta = shrunk[:, s * rank : (s + 1) * rank] @ b[g * slices + s].double()
                expected[first:end, offsets[s] : offsets[s + 1]] += alphas[g * slices + s] * delta
    return expected


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("rank", "widths", "hidden_in", "rows"), [
    (8, (576, 192, 192), 576, [8, 8]),  # issue 18's q|k|v, two adapters of 8 rows
    (64, (1536, 1536), 576, [8]),  # gate|up, rank 64
    (16, (100, 24), 100, [1, 3, 13, 16]),  # widths and K off the vector size; 1-16 rows
    (1, (40,), 16, [5]),
    (72, (33,), 37, [2, 9]),  # rank past 64, one slice, nothing a multiple of 16
])
def test_kernel_equals_the_float64_product(
    rank: int, widths: tuple[int, ...], hidden_in: int, rows: list[int], threads: int
) -> None:
    assert KERNEL is not None
    case = _segments_case(rank + hidden_in, rank, widths, hidden_in, rows)
    out, x, firsts, ends, a_rows, b, offsets, alphas = case
    expected = _expected(out, x, firsts, ends, a_rows, b, offsets, alphas)
    before = out.clone()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        KERNEL.lora_layer(out, x, firsts, ends, a_rows, b, offsets, alphas)
    finally:
        torch.set_num_threads(saved)
    delta = (expected - before.double()).abs().max().item()
    assert (out.double() - expected).abs().max().item() <= 1e-5 * delta
    assert torch.equal(out[0], before[0]) and torch.equal(out[-2:], before[-2:])  # rows of no segment
    if len(widths) > 1:  # the slice with scale 0
        assert torch.equal(out[:, offsets[1] : offsets[2]], before[:, offsets[1] : offsets[2]])


@needs_kernel
def test_kernel_refuses_arguments_that_do_not_fit() -> None:
    assert KERNEL is not None
    out, x, firsts, ends, a_rows, b, offsets, alphas = _segments_case(0, 8, (40, 24), 16, [4])
    with pytest.raises(RuntimeError, match="a_t"):
        KERNEL.lora_layer(out, x, firsts, ends, [a_rows[0][:, :8]], b, offsets, alphas)  # K 8, not 16
    with pytest.raises(RuntimeError, match="segment rows"):
        KERNEL.lora_layer(out, x, firsts, [out.shape[0] + 1], a_rows, b, offsets, alphas)
    with pytest.raises(RuntimeError, match="fp32"):
        KERNEL.lora_layer(out.double(), x, firsts, ends, a_rows, b, offsets, alphas)
    with pytest.raises(RuntimeError, match="b:"):
        KERNEL.lora_layer(out, x, firsts, ends, a_rows, [b[1], b[0]], offsets, alphas)


@needs_kernel
def test_planned_form_runs_decode_rows_on_the_kernel_and_longer_ones_on_mkl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    class Spy:
        def lora_layer(self, out, x, firsts, *rest):  # type: ignore[no-untyped-def]
            calls.append(len(firsts))
            assert KERNEL is not None
            return KERNEL.lora_layer(out, x, firsts, *rest)

    monkeypatch.setattr(torch_lora.native_cpu, "lora_kernel", lambda: Spy())
    monkeypatch.setattr(torch_slot_weights.native_cpu, "lora_kernel", lambda: Spy())
    for pattern, kernel_calls in (([0, 0, 1, 1, 1, 2, -1], [3]), ([0] * 17 + [1] * 2, [])):
        case = make_paged_case(pattern, hidden_in=40, slice_widths=(24, 8, 8), ranks=[8, 16, 64],
                               dtype=torch.float32, device=CPU, per_slice_scales=True, row_layout=True)
        meta = prepare_lora_batch(case.token_lora, case.pages.num_slots)
        weights = SlotWeights()
        calls.clear()
        for _ in range(2):  # a second layer call of the step reuses the kernel's arguments
            actual = torch_lora.apply_paged(case.out.clone(), case.x, case.a_pages, case.b_pages, case.scales,
                                            case.slice_widths, meta, case.pages, path="grouped",
                                            slot_weights=weights)
            assert_close_to_reference(actual, case.expected())
        assert calls == kernel_calls * 2  # one kernel call per layer call, every segment in it
        if kernel_calls:
            first = weights.native_call(case.a_pages, case.b_pages, case.scales, case.pages, meta,
                                        [(0, 0, 2), (1, 2, 5), (2, 5, 6)], (0, 24, 32, 40))
            assert first is weights._call[1]  # type: ignore[index]  # built once for this metadata


@needs_kernel
def test_a_call_like_the_last_one_repeats_it_on_the_kernel() -> None:
    """`repeat_kernel_call`: the layer's next call with the same metadata and placement (a decode
    step's) goes straight to the kernel with the arguments of the last one; anything else does not."""
    case = make_paged_case([0, 0, 1, 1, 1, 2, -1], hidden_in=40, slice_widths=(24, 8, 8),
                           ranks=[8, 16, 64], dtype=torch.float32, device=CPU, per_slice_scales=True,
                           row_layout=True)
    meta = prepare_lora_batch(case.token_lora, case.pages.num_slots)
    weights = SlotWeights()
    assert not torch_lora.repeat_kernel_call(case.out.clone(), case.x, meta, case.pages, weights)  # none yet
    torch_lora.apply_paged(case.out.clone(), case.x, case.a_pages, case.b_pages, case.scales,
                           case.slice_widths, meta, case.pages, slot_weights=weights)
    again = case.out.clone()
    assert torch_lora.repeat_kernel_call(again, case.x, meta, case.pages, weights)
    assert_close_to_reference(again, case.expected())
    other_meta = prepare_lora_batch(case.token_lora, case.pages.num_slots)  # equal, but another step's
    assert not torch_lora.repeat_kernel_call(case.out.clone(), case.x, other_meta, case.pages, weights)
    assert not torch_lora.repeat_kernel_call(case.out.clone().double(), case.x, meta, case.pages, weights)
    wide = torch.zeros(case.x.shape[0], case.x.shape[1] * 2)[:, ::2]  # x's values with a column stride of 2
    wide.copy_(case.x)
    assert not torch_lora.repeat_kernel_call(case.out.clone(), wide, meta, case.pages, weights)
    weights.of(case.a_pages, case.b_pages, replace(case.pages), 0, (0, 24, 32, 40))  # a new placement
    assert not torch_lora.repeat_kernel_call(case.out.clone(), case.x, meta, case.pages, weights)


def test_without_a_kernel_the_planned_form_is_mkls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch_lora.native_cpu, "lora_kernel", lambda: None)
    monkeypatch.setattr(torch_slot_weights.native_cpu, "lora_kernel", lambda: None)
    case = make_paged_case([0, 0, 1, 2, -1], hidden_in=40, slice_widths=(24, 8, 8), ranks=[8, 16, 64],
                           dtype=torch.float32, device=CPU, per_slice_scales=True, row_layout=True)
    meta = prepare_lora_batch(case.token_lora, case.pages.num_slots)
    weights = SlotWeights()
    actual = torch_lora.apply_paged(case.out.clone(), case.x, case.a_pages, case.b_pages, case.scales,
                                    case.slice_widths, meta, case.pages, path="grouped", slot_weights=weights)
    assert_close_to_reference(actual, case.expected())
    assert weights.of(case.a_pages, case.b_pages, case.pages, 0, (0, 24, 32, 40)).a_rows is None


def test_disabled_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native_cpu.DISABLE, "0")
    native_cpu.forget()
    try:
        assert native_cpu.lora_kernel() is None
        assert native_cpu.attention_kernel() is None
    finally:
        monkeypatch.delenv(native_cpu.DISABLE)
        native_cpu.forget()
    assert (native_cpu.lora_kernel() is None) == (KERNEL is None)
    assert (native_cpu.attention_kernel() is None) == (KERNEL is None)


@needs_kernel
def test_a_kernel_failing_its_check_is_not_used_and_the_others_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(native_cpu.CHECKS, "decode attention", lambda module: False)  # a wrong result
    native_cpu.forget()
    try:
        assert native_cpu.attention_kernel() is None
        assert native_cpu.lora_kernel() is not None and native_cpu.norm_rope_kernel() is not None
    finally:
        monkeypatch.undo()
        native_cpu.forget()
    assert native_cpu.attention_kernel() is not None


def test_a_build_is_tagged_with_its_source_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    tag = native_cpu.build_tag()
    monkeypatch.setattr(native_cpu, "_cpu_flags", lambda: "flags : fpu sse2")  # another CPU
    assert native_cpu.build_tag() != tag  # whose build this machine would never load


@needs_kernel
def test_the_rule_gives_the_kernel_every_call_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 adapters of one row each: the cost model (fitted on MKL) picks the gathered form, but the
    kernel does all 32 in one call (on the demo model's 32-adapter batch, in-process A/B: 4 207
    tokens/s planned on the kernel, 3 720 gathered, 2 220 planned on MKL, all projections r16)."""
    case = make_paged_case(list(range(32)), hidden_in=40, slice_widths=(24, 8, 8), ranks=[8] * 32,
                           dtype=torch.float32, device=CPU, per_slice_scales=True, row_layout=True)
    meta = prepare_lora_batch(case.token_lora, case.pages.num_slots)
    chosen = torch_lora.chosen_path(case.x, case.a_pages, case.b_pages, meta, case.pages, planned=True)
    assert chosen == torch_lora.GROUPED
    long = make_paged_case([0] * 17, hidden_in=40, slice_widths=(24, 8, 8), ranks=[8], dtype=torch.float32,
                           device=CPU, per_slice_scales=True, row_layout=True)  # 17 rows: not the kernel's
    long_meta = prepare_lora_batch(long.token_lora, long.pages.num_slots)
    assert not torch_lora._kernel_runs(long.x, long_meta, long.pages, planned=True)
    monkeypatch.setattr(torch_lora.native_cpu, "lora_kernel", lambda: None)
    without = torch_lora.chosen_path(case.x, case.a_pages, case.b_pages, meta, case.pages, planned=True)
    assert without == torch_lora.GATHERED


def _paged_attention_case(  # type: ignore[no-untyped-def]
    seed: int, lens: list[int], block_size: int, kv_heads: int, groups: int, head_dim: int
):
    """Sequences of these lengths scattered over a shuffled cache; q's rows are strided (a view of a
    wider tensor) and one row of the batch is no sequence's."""
    generator = torch.Generator().manual_seed(seed)
    widest = max(-(-n // block_size) for n in lens)
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache, v_cache = (torch.randn(shape, generator=generator) for _ in range(2))
    free = torch.randperm(num_blocks, generator=generator).tolist()
    tables = torch.zeros(len(lens), widest, dtype=torch.int64)
    for row, n in enumerate(lens):
        for j in range(-(-n // block_size)):
            tables[row, j] = free.pop()
    heads = kv_heads * groups
    q = torch.randn(len(lens) + 1, heads, head_dim + 3, generator=generator)[:, :, :head_dim]
    token_index = torch.randperm(len(lens) + 1, generator=generator)[: len(lens)]
    return q, token_index, k_cache, v_cache, tables, torch.tensor(lens)


def _attention_reference(q, token_index, k_cache, v_cache, tables, lens, scale, window, soft_cap):  # type: ignore[no-untyped-def]
    expected = {}
    kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    groups = q.shape[1] // kv_heads
    for row, n in enumerate(lens.tolist()):
        start = max(0, n - window) if window > 0 else 0
        keys, values = (
            cache[tables[row]].reshape(-1, kv_heads, head_dim)[start:n].double().repeat_interleave(groups, 1)
            for cache in (k_cache, v_cache)
        )
        scores = torch.einsum("hd,thd->ht", q[token_index[row]].double(), keys) * scale
        if soft_cap > 0:
            scores = soft_cap * torch.tanh(scores / soft_cap)
        expected[int(token_index[row])] = torch.einsum("ht,thd->hd", scores.softmax(-1), values)
    return expected


needs_attention = pytest.mark.skipif(native_cpu.attention_kernel() is None, reason="no CPU kernels built")


@needs_attention
@pytest.mark.parametrize(
    ("lens", "block_size", "kv_heads", "groups", "head_dim", "window", "soft_cap"),
    [
        ([1, 17, 40, 16, 33], 16, 3, 3, 64, -1, 0.0),  # SmolLM2's heads, contexts on and off block edges
        ([5, 70, 9], 16, 2, 7, 64, -1, 0.0),  # Qwen2.5's
        ([3, 12, 25], 4, 1, 4, 40, 6, 0.0),  # D off the vector size, a sliding window
        ([8, 31], 8, 2, 2, 80, -1, 50.0),  # Gemma 2's soft cap
        ([2, 9], 4, 4, 1, 8, 3, 5.0),  # D under one vector, window and cap, one query head per KV head
    ],
)
def test_decode_attention_matches_float64_attention(
    lens: list[int], block_size: int, kv_heads: int, groups: int, head_dim: int, window: int, soft_cap: float
) -> None:
    kernel = native_cpu.attention_kernel()
    assert kernel is not None
    q, token_index, k_cache, v_cache, tables, context = _paged_attention_case(
        len(lens) * 7 + head_dim, lens, block_size, kv_heads, groups, head_dim
    )
    out = torch.full(q.shape, 7.0)
    scale = head_dim**-0.5
    kernel.decode_attention(out, q, token_index, k_cache, v_cache, tables, context, scale, window, soft_cap)
    expected = _attention_reference(q, token_index, k_cache, v_cache, tables, context, scale, window,
                                    soft_cap)
    for row in range(q.shape[0]):
        if row in expected:
            torch.testing.assert_close(out[row].double(), expected[row], atol=1e-5, rtol=1e-5)
        else:  # no decode row: untouched
            assert out[row].eq(7.0).all()


@needs_attention
def test_decode_attention_on_two_threads_equals_one_thread() -> None:
    kernel = native_cpu.attention_kernel()
    assert kernel is not None
    case = _paged_attention_case(5, [30, 2, 64, 17, 5, 48], 16, 3, 3, 64)
    outs = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            out = torch.zeros(case[0].shape)
            kernel.decode_attention(out, *case, 0.125, -1, 0.0)
            outs.append(out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])  # one task per (sequence, KV head): the same sums either way


@needs_attention
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("block", "block table entry out of range"),
        ("negative block", "block table entry out of range"),
        ("context", "context_lens out of range"),
        ("empty context", "context_lens out of range"),
        ("token", "token_index out of range"),
        ("dtype", "fp32"),
        ("int32 tables", "int64"),
        ("heads", "multiple of the KV heads"),
        ("window", "window"),
    ],
)
def test_decode_attention_refuses_arguments_that_would_reach_out_of_bounds(change: str, match: str) -> None:
    kernel = native_cpu.attention_kernel()
    assert kernel is not None
    q, token_index, k_cache, v_cache, tables, lens = _paged_attention_case(3, [5, 9], 4, 2, 2, 16)
    window = -1
    if change == "block":
        tables[1, 2] = k_cache.shape[0]
    elif change == "negative block":
        tables[0, 0] = -1
    elif change == "context":
        lens[1] = tables.shape[1] * 4 + 1
    elif change == "empty context":
        lens[0] = 0
    elif change == "token":
        token_index[0] = q.shape[0]
    elif change == "dtype":
        q = q.double()
    elif change == "int32 tables":
        tables = tables.int()
    elif change == "heads":
        q = q[:, :3]
    elif change == "window":
        window = 0
    out = torch.zeros(q.shape, dtype=q.dtype)
    with pytest.raises(RuntimeError, match=match):
        kernel.decode_attention(out, q, token_index, k_cache, v_cache, tables, lens, 0.25, window, 0.0)


needs_norm_rope = pytest.mark.skipif(native_cpu.norm_rope_kernel() is None, reason="no CPU kernels built")


def _eager_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    normed = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + eps)
    return normed * (offset + weight.double()) if offset else weight.double() * normed


@needs_norm_rope
@pytest.mark.parametrize(("rows", "dim"), [(1, 576), (33, 896), (7, 40), (2, 8)])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm_and_the_add_before_it_match_float64(rows: int, dim: int, offset: float) -> None:
    kernel = native_cpu.norm_rope_kernel()
    assert kernel is not None
    generator = torch.Generator().manual_seed(rows * dim)
    x = torch.randn(rows, dim, generator=generator) * 3
    residual = torch.randn(rows, dim, generator=generator)
    weight = torch.randn(dim, generator=generator)
    out, total = torch.empty(rows, dim), torch.empty(rows, dim)
    kernel.add_rms_norm(out, total, x, residual, weight, 1e-5, offset)
    assert torch.equal(total, x + residual)  # the sum itself is exact: one rounding, as torch's
    torch.testing.assert_close(out.double(), _eager_norm(total, weight, 1e-5, offset), atol=1e-5, rtol=1e-5)
    plain = torch.empty(rows, dim)
    kernel.rms_norm(plain, x, weight, 1e-5, offset)
    torch.testing.assert_close(plain.double(), _eager_norm(x, weight, 1e-5, offset), atol=1e-5, rtol=1e-5)


@needs_norm_rope
def test_rotary_is_the_eager_rotation_bit_for_bit() -> None:
    """q and k as the attention layer has them: strided views into one fused q|k|v output."""
    kernel = native_cpu.norm_rope_kernel()
    assert kernel is not None
    generator = torch.Generator().manual_seed(3)
    tokens, heads, kv_heads, dim = 37, 9, 3, 64
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=generator)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    angles = torch.randn(tokens, 1, dim, generator=generator) * 50
    cos, sin = angles.cos(), angles.sin()
    q_out, k_out = torch.empty(q.shape), torch.empty(k.shape)
    kernel.rotary(q_out, k_out, q, k, cos, sin)

    def eager(t: torch.Tensor) -> torch.Tensor:
        return t * cos + torch.cat((-t[..., dim // 2 :], t[..., : dim // 2]), dim=-1) * sin

    assert torch.equal(q_out, eager(q))
    assert torch.equal(k_out, eager(k))


@needs_norm_rope
@pytest.mark.parametrize(
    ("call", "match"),
    [("norm rows", "x: \\[rows, dim\\]"), ("norm weight", "weight"), ("norm dtype", "fp32"),
     ("add shapes", "residual"), ("rope width", "rotary width"), ("rope tables", "cos, sin"),
     ("rope out", "q_out, k_out")],
)
def test_norm_and_rope_kernels_refuse_mismatched_tensors(call: str, match: str) -> None:
    kernel = native_cpu.norm_rope_kernel()
    assert kernel is not None
    x, weight = torch.randn(4, 16), torch.randn(16)
    q, k, cos = torch.randn(4, 2, 8), torch.randn(4, 1, 8), torch.randn(4, 1, 8)
    with pytest.raises(RuntimeError, match=match):
        if call == "norm rows":
            kernel.rms_norm(torch.empty(4, 16), torch.randn(16, 4).t(), weight, 1e-6, 0.0)  # strided rows
        elif call == "norm weight":
            kernel.rms_norm(torch.empty(4, 16), x, torch.randn(15), 1e-6, 0.0)
        elif call == "norm dtype":
            kernel.rms_norm(torch.empty(4, 16, dtype=torch.float64), x.double(), weight, 1e-6, 0.0)
        elif call == "add shapes":
            short = torch.randn(3, 16)
            kernel.add_rms_norm(torch.empty(4, 16), torch.empty(4, 16), x, short, weight, 1e-6, 0.0)
        elif call == "rope width":
            kernel.rotary(torch.empty(4, 2, 6), torch.empty(4, 1, 6), q[..., :6], k[..., :6], cos, cos)
        elif call == "rope tables":
            kernel.rotary(torch.empty(q.shape), torch.empty(k.shape), q, k, cos[:3], cos)
        else:
            kernel.rotary(torch.empty(4, 2, 8), torch.empty(4, 2, 8), q, k, cos, cos)
