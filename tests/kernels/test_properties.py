"""Property-based: random shapes, ranks, slots and slices against the reference."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lorafleet import kernels
from lorafleet.kernels import reference

from tests.kernels.cases import assert_close_to_reference, forced_backend, make_case
from tests.kernels.conftest import DEVICE

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def problems(draw: st.DrawFn) -> tuple:
    num_slots = draw(st.integers(1, 6))
    num_tokens = draw(st.integers(1, 40))
    token_lora = draw(st.lists(st.integers(-1, num_slots - 1), min_size=num_tokens, max_size=num_tokens))
    ranks = draw(st.lists(st.sampled_from([1, 4, 8, 16, 64]), min_size=num_slots, max_size=num_slots))
    widths = tuple(draw(st.lists(st.integers(1, 48), min_size=1, max_size=3)))
    hidden_in = draw(st.integers(1, 80))
    return token_lora, hidden_in, widths, ranks, draw(st.sampled_from(DTYPES)), draw(st.booleans())


def _check(problem: tuple, seed: int) -> None:
    token_lora, hidden_in, widths, ranks, dtype, per_slice = problem
    case = make_case(token_lora, hidden_in=hidden_in, slice_widths=widths, ranks=ranks, dtype=dtype,
                     device=DEVICE, per_slice_scales=per_slice, seed=seed)
    args = (case.x, case.lora_a, case.lora_b, case.token_lora, case.scales)
    expected = reference.add_lora_sliced(case.out.clone(), *args, widths)
    actual = kernels.add_lora_sliced(case.out.clone(), *args, slice_widths=widths)
    assert_close_to_reference(actual, expected)
    untouched = case.token_lora < 0
    assert torch.equal(actual[untouched], case.out[untouched])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_torch_path_matches_reference_on_random_problems(problem: tuple, seed: int) -> None:
    with forced_backend("torch"):
        _check(problem, seed)


@settings(max_examples=6, deadline=None)
@given(problem=problems(), seed=st.integers(0, 2**16))
def test_triton_path_matches_reference_on_random_problems(problem: tuple, seed: int) -> None:
    with forced_backend("triton"):
        _check(problem, seed)
