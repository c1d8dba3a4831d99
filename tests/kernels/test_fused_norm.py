"""The fused RMSNorm kernel (Triton: the interpreter on a CPU, real on CUDA) vs the eager module.

The eager `RMSNorm` of the runtime is the reference: both forms (Llama's weight after the cast,
Gemma's 1 + weight in float32), the decoder's residual add, rows that are per-head views of a fused
q|k|v projection (Qwen3's q/k norm), widths that are not powers of two.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet.kernels import fused_norm
from lorafleet.runtime.layers.norms import RMSNorm

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# One rounding apart at most (the variance's summation order differs, so `hidden` may round the
# other way); bf16 also covers the interpreter truncating instead of rounding.
TOLERANCES = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _eager(width: int, offset: float, dtype: torch.dtype, seed: int) -> RMSNorm:
    norm = RMSNorm(width, 1e-6, dtype, torch.device("cpu"), offset=offset)
    generator = torch.Generator().manual_seed(seed)
    norm.weight.data = (torch.randn(width, generator=generator) * 0.5 + 1 - offset).to(dtype)
    assert not norm.fused  # built on the CPU: the eager reference
    return norm


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual.cpu(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
@pytest.mark.parametrize("width", [64, 80, 1000])
def test_fused_rms_norm_matches_the_eager_module(dtype: torch.dtype, offset: float, width: int,
                                                 device) -> None:
    norm = _eager(width, offset, dtype, seed=width)
    x = (torch.randn(7, width, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    actual = fused_norm.rms_norm(x.to(device), norm.weight.to(device), norm.eps, norm.offset)
    assert actual.shape == x.shape and actual.dtype == dtype
    _assert_close(actual, norm(x))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
def test_fused_add_and_norm_returns_the_rounded_sum_and_its_norm(dtype: torch.dtype, offset: float,
                                                                 device) -> None:
    norm = _eager(96, offset, dtype, seed=3)
    generator = torch.Generator().manual_seed(2)
    x, residual = (torch.randn(5, 96, generator=generator).to(dtype) for _ in range(2))
    total, normed = fused_norm.add_rms_norm(x.to(device), residual.to(device), norm.weight.to(device),
                                            norm.eps, norm.offset)
    expected_total, expected_norm = norm.add_and_norm(x, residual)
    if dtype == torch.bfloat16 and total.device.type == "cpu":  # the interpreter truncates to bf16
        torch.testing.assert_close(total, expected_total, atol=0, rtol=2**-7)
    else:
        assert torch.equal(total.cpu(), expected_total)  # x + residual, rounded once to the dtype
    _assert_close(normed, expected_norm)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_norm_of_per_head_views_of_a_fused_projection(dtype: torch.dtype, device) -> None:
    heads, kv_heads, head_dim, tokens = 4, 2, 32, 6
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=torch.Generator().manual_seed(4))
    qkv = qkv.to(dtype)
    q = qkv[:, : heads * head_dim].reshape(tokens, heads, head_dim)  # strided: row stride is qkv's
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].reshape(tokens, kv_heads, head_dim)
    assert not q.is_contiguous()
    norm = _eager(head_dim, 0.0, dtype, seed=5)
    on_device = qkv.to(device)
    q_dev = on_device[:, : heads * head_dim].reshape(tokens, heads, head_dim)
    k_dev = on_device[:, heads * head_dim : (heads + kv_heads) * head_dim].reshape(tokens, kv_heads, head_dim)
    weight = norm.weight.to(device)
    _assert_close(fused_norm.rms_norm(q_dev, weight, norm.eps), norm(q))
    _assert_close(fused_norm.rms_norm(k_dev, weight, norm.eps), norm(k))
    assert torch.equal(on_device.cpu(), qkv)  # inputs untouched


def test_fused_norm_of_an_empty_batch_launches_nothing(device) -> None:
    weight = torch.ones(64, device=device)
    assert fused_norm.rms_norm(torch.empty(0, 64, device=device), weight, 1e-6).shape == (0, 64)
