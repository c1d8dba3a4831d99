"""Bad input to the attention entry points raises AttentionKernelError (a ValueError) naming the
argument, before anything is launched or written."""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels
from lorafleet.kernels import AttentionKernelError, LoraKernelError


def _decode_args(dtype: torch.dtype = torch.float32) -> dict:
    return {
        "q": torch.ones(2, 4, 16, dtype=dtype),
        "k_cache": torch.ones(6, 8, 2, 16, dtype=dtype),
        "v_cache": torch.ones(6, 8, 2, 16, dtype=dtype),
        "block_tables": torch.zeros(2, 3, dtype=torch.int32),
        "context_lens": torch.tensor([3, 9], dtype=torch.int32),
        "scale": 0.25,
        "out": torch.zeros(2, 4, 16, dtype=dtype),
    }


def _prefill_args() -> dict:
    return {
        "q": torch.ones(5, 4, 16),
        "k_cache": torch.ones(6, 8, 2, 16),
        "v_cache": torch.ones(6, 8, 2, 16),
        "cu_seqlens_q": torch.tensor([0, 2, 5], dtype=torch.int32),
        "start_pos": torch.tensor([0, 3], dtype=torch.int32),
        "block_tables": torch.zeros(2, 3, dtype=torch.int32),
        "scale": 0.25,
        "out": torch.zeros(5, 4, 16),
    }


SHARED = {  # wrong for either entry point: (override, words the message must contain)
    "q_2d": ({"q": torch.ones(2, 64)}, "q must be 3-D"),
    "cache_3d": ({"k_cache": torch.ones(6, 8, 32)}, "k_cache 4-D"),
    "v_cache_other_shape": ({"v_cache": torch.ones(6, 8, 1, 16)}, "v_cache must have k_cache's shape"),
    "head_dim_differs": ({"k_cache": torch.ones(6, 8, 2, 32), "v_cache": torch.ones(6, 8, 2, 32)},
                         "head_dim"),
    "heads_not_multiple_of_kv_heads": ({"k_cache": torch.ones(6, 8, 3, 16),
                                        "v_cache": torch.ones(6, 8, 3, 16)}, "multiple of KVH"),
    "cache_dtype_differs": ({"k_cache": torch.ones(6, 8, 2, 16, dtype=torch.float16)}, "one dtype"),
    "integer_cache": ({"k_cache": torch.ones(6, 8, 2, 16, dtype=torch.int8),
                       "v_cache": torch.ones(6, 8, 2, 16, dtype=torch.int8)}, "one dtype"),
    "out_other_dtype": ({"out": "half"}, "out must have q's shape and dtype"),
    "out_other_shape": ({"out": "short"}, "out must have q's shape and dtype"),
    "q_not_contiguous_in_head_dim": ({"q": "transposed"}, "contiguous in their last dim"),
    "scale_zero": ({"scale": 0.0}, "scale must be a finite positive number"),
    "scale_nan": ({"scale": float("nan")}, "scale must be a finite positive number"),
    "scale_string": ({"scale": "0.1"}, "scale must be a finite positive number"),
    "scale_bool": ({"scale": True}, "scale must be a finite positive number"),
    "soft_cap_bool": ({"soft_cap": True}, "soft_cap"),
    "window_zero": ({"sliding_window": 0}, "sliding_window must be None or an int >= 1"),
    "window_negative": ({"sliding_window": -4}, "sliding_window"),
    "window_float": ({"sliding_window": 2.5}, "sliding_window"),
    "window_bool": ({"sliding_window": True}, "sliding_window"),
    "soft_cap_zero": ({"soft_cap": 0.0}, "soft_cap must be None or a finite positive number"),
    "soft_cap_negative": ({"soft_cap": -30.0}, "soft_cap"),
    "soft_cap_infinite": ({"soft_cap": float("inf")}, "soft_cap"),
    "tensors_on_two_devices": ({"k_cache": torch.ones(6, 8, 2, 16, device="meta"),
                                "v_cache": torch.ones(6, 8, 2, 16, device="meta")}, "one device"),
}

DECODE_ONLY = {
    "float_block_tables": ({"block_tables": torch.zeros(2, 3)}, "block_tables must be int32 or int64"),
    "block_tables_other_batch": ({"block_tables": torch.zeros(3, 3, dtype=torch.int32)},
                                 "block_tables must have"),
    "block_tables_1d": ({"block_tables": torch.zeros(3, dtype=torch.int32)},
                        r"block_tables must be \[B, max_blocks\]"),
    "context_lens_2d": ({"context_lens": torch.zeros(2, 1, dtype=torch.int32)},
                        "context_lens must have shape"),
    "float_context_lens": ({"context_lens": torch.tensor([3.0, 9.0])}, "context_lens must be int32"),
    "head_dim_too_large": ({"q": torch.ones(2, 4, 264), "k_cache": torch.ones(6, 8, 2, 264),
                            "v_cache": torch.ones(6, 8, 2, 264), "out": torch.zeros(2, 4, 264)},
                           "head_dim must be a multiple of 8 from 8 to 256"),
    "head_dim_not_multiple_of_8": ({"q": torch.ones(2, 4, 12), "k_cache": torch.ones(6, 8, 2, 12),
                                    "v_cache": torch.ones(6, 8, 2, 12), "out": torch.zeros(2, 4, 12)},
                                   "multiple of 8"),
}

PREFILL_ONLY = {
    "cu_seqlens_too_short": ({"cu_seqlens_q": torch.tensor([0, 5], dtype=torch.int32)},
                             r"cu_seqlens_q must have shape \(3,\)"),
    "float_cu_seqlens": ({"cu_seqlens_q": torch.tensor([0.0, 2.0, 5.0])}, "cu_seqlens_q must be int32"),
    "start_pos_2d": ({"start_pos": torch.zeros(2, 1, dtype=torch.int32)}, r"start_pos must be \[S\]"),
    "block_tables_other_count": ({"block_tables": torch.zeros(3, 3, dtype=torch.int32)},
                                 r"block_tables must have shape \(2, 3\)"),
}


def _apply(args: dict, override: dict) -> dict:
    args = dict(args)
    for name, value in override.items():
        if value == "half":
            value = args[name].half()
        elif value == "short":
            value = args[name][:1]
        elif value == "transposed":
            value = args[name].transpose(1, 2).contiguous().transpose(1, 2)
        args[name] = value
    return args


def _expect_refusal(call, args: dict, match: str) -> None:
    before = args["out"].clone() if args["out"].device.type != "meta" else None
    with pytest.raises(ValueError, match=match) as info:
        call(**args)
    assert isinstance(info.value, AttentionKernelError) and isinstance(info.value, LoraKernelError)
    if before is not None and args["out"].shape == before.shape and args["out"].dtype == before.dtype:
        assert torch.equal(args["out"], before)


@pytest.mark.parametrize(("override", "match"), (SHARED | DECODE_ONLY).values(),
                         ids=(SHARED | DECODE_ONLY).keys())
def test_decode_refuses_bad_input_before_writing(override: dict, match: str) -> None:
    _expect_refusal(kernels.paged_decode_attention, _apply(_decode_args(), override), match)


@pytest.mark.parametrize(("override", "match"), (SHARED | PREFILL_ONLY).values(),
                         ids=(SHARED | PREFILL_ONLY).keys())
def test_prefill_refuses_bad_input_before_writing(override: dict, match: str) -> None:
    _expect_refusal(kernels.paged_prefill_attention, _apply(_prefill_args(), override), match)


def test_error_message_lists_every_tensor() -> None:
    with pytest.raises(AttentionKernelError) as info:
        kernels.paged_decode_attention(**_apply(_decode_args(), {"scale": -1.0}))
    message = str(info.value)
    for part in ["paged_decode_attention", "q (2, 4, 16) float32", "k_cache (6, 8, 2, 16)",
                 "block_tables (2, 3) int32", "context_lens (2,) int32", "-1.0"]:
        assert part in message


def test_unknown_backend_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("LORAFLEET_KERNELS", "cuda-magic")
    with pytest.raises(LoraKernelError, match="LORAFLEET_KERNELS must be one of"):
        kernels.paged_decode_attention(**_decode_args())
