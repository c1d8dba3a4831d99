"""The CPU LoRA kernel (`kernels/native_cpu.py`, `kernels/csrc/lora_cpu.cpp`): built by `make setup`
where a compiler is, equal to the float64 product, and the planned form's engine for decode rows."""

from __future__ import annotations

import shutil

import pytest
import torch
from lorafleet.kernels import native_cpu, prepare_lora_batch, torch_lora, torch_slot_weights
from lorafleet.kernels.torch_slot_weights import SlotWeights

from tests.kernels.cases import assert_close_to_reference, make_paged_case

CPU = torch.device("cpu")
KERNEL = native_cpu.lora_kernel()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no CPU LoRA kernel built on this machine")


def test_setup_built_the_kernel_where_a_compiler_is() -> None:
    """`make setup` builds it (`python -m lorafleet.kernels.native_cpu`): with a C++ compiler on this
    machine, it must be there, or every test of it would skip unnoticed."""
    if shutil.which("c++") is None:  # ninja comes with the runtime's packages
        pytest.skip("no C++ compiler here: the torch forms serve")
    assert KERNEL is not None, "run `make setup` (it builds the CPU LoRA kernel)"


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
    native_cpu.lora_kernel.cache_clear()
    try:
        assert native_cpu.lora_kernel() is None
    finally:
        monkeypatch.delenv(native_cpu.DISABLE)
        native_cpu.lora_kernel.cache_clear()
    assert (native_cpu.lora_kernel() is None) == (KERNEL is None)


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
