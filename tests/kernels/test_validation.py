"""Bad input raises `LoraKernelError` (a ValueError) naming the shapes, before any launch."""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import LoraKernelError, backend_for, prepare_lora_batch


def _args(T: int = 3, K: int = 8, N: int = 6, L: int = 2, R: int = 4, dtype=torch.float32) -> dict:
    return {
        "out": torch.zeros(T, N, dtype=dtype),
        "x": torch.ones(T, K, dtype=dtype),
        "lora_a": torch.ones(L, R, K, dtype=dtype),
        "lora_b": torch.ones(L, N, R, dtype=dtype),
        "token_lora": torch.tensor([0, 1, -1][:T]),
        "scales": torch.ones(L),
    }


BAD_INPUTS = {
    "x_has_other_K_than_lora_a": ({"x": torch.ones(3, 9)}, "K"),
    "out_has_fewer_tokens": ({"out": torch.zeros(2, 6)}, "number of tokens"),
    "lora_b_has_other_rank": ({"lora_b": torch.ones(2, 6, 5)}, r"lora_b must be \[L, N, R\]"),
    "lora_b_has_other_N": ({"lora_b": torch.ones(2, 7, 4)}, r"lora_b must be \[L, N, R\]"),
    "lora_a_is_2d": ({"lora_a": torch.ones(4, 8)}, r"lora_a \[L, R, K\]"),
    "x_is_bf16_weights_fp32": ({"x": torch.ones(3, 8, dtype=torch.bfloat16),
                                "out": torch.zeros(3, 6, dtype=torch.bfloat16)}, "x's dtype"),
    "int_activations": ({k: torch.ones(s, dtype=torch.int32) for k, s in
                         [("x", (3, 8)), ("out", (3, 6)), ("lora_a", (2, 4, 8)), ("lora_b", (2, 6, 4))]},
                        "must be one of"),
    "scales_fp16": ({"scales": torch.ones(2, dtype=torch.float16)}, "scales must be float32"),
    "scales_wrong_length": ({"scales": torch.ones(3)}, "scales must be float32"),
    "float_token_lora": ({"token_lora": torch.zeros(3)}, "integer"),
    "token_lora_past_last_slot": ({"token_lora": torch.tensor([0, 2, 1])}, r"\[-1, 2\)"),
    "tensors_on_two_devices": ({"scales": torch.ones(2, device="meta")}, "one device"),
}


@pytest.mark.parametrize(("override", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_value_error_before_touching_out(override: dict, match: str) -> None:
    args = _args() | override
    before = args["out"].clone()
    with pytest.raises(ValueError, match=match) as info:
        kernels.add_lora(**args)
    assert isinstance(info.value, LoraKernelError)
    assert torch.equal(args["out"], before)


def test_error_message_lists_every_shape() -> None:
    with pytest.raises(LoraKernelError) as info:
        kernels.add_lora(**(_args() | {"x": torch.ones(3, 9)}))
    message = str(info.value)
    for shape in ["out (3, 6)", "x (3, 9)", "lora_a (2, 1, 4, 8)", "lora_b (2, 6, 4)", "scales (2,)"]:
        assert shape in message


def test_slice_widths_must_sum_to_out_width() -> None:
    args = _args()
    with pytest.raises(LoraKernelError, match="sum to out's N"):
        lora_a = args["lora_a"][:, None].expand(2, 2, 4, 8).contiguous()
        kernels.add_lora_sliced(
            args["out"], args["x"], lora_a, args["lora_b"], args["token_lora"], args["scales"],
            slice_widths=(4, 4),
        )


def test_meta_prepared_for_another_batch_is_rejected() -> None:
    meta = prepare_lora_batch(torch.tensor([0, 1]), num_slots=2)
    with pytest.raises(LoraKernelError, match="prepared for 2 tokens"):
        kernels.add_lora(**_args(), meta=meta)


def test_unknown_backend_name_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_KERNELS", "cuda")
    with pytest.raises(LoraKernelError, match="LORAFLEET_KERNELS"):
        backend_for(torch.device("cpu"))


def test_forcing_triton_on_cpu_without_interpreter_explains_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LORAFLEET_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(LoraKernelError, match="TRITON_INTERPRET=1"):
        backend_for(torch.device("cpu"))


def test_cpu_tensors_default_to_torch_and_cuda_to_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAFLEET_KERNELS", raising=False)
    assert backend_for(torch.device("cpu")).name == "torch"
    assert backend_for(torch.device("cuda", 0)).name == "triton"
