"""The fused RoPE kernel (Triton: the interpreter on a CPU, real on CUDA) vs the eager module.

q and k are strided views of one fused q|k|v output, rotated in place; v and the dims past a
partial rotary must stay bit-identical. Scalings: default, linear, llama3 and LongRoPE with
positions on both sides of its switch; positions up to 40 000.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet.kernels import fused_rotary
from lorafleet.runtime.layers.rotary import RotaryEmbedding

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0 + i / 10 for i in range(12)],
            "long_factor": [2.0 + i / 5 for i in range(12)], "original_max_position_embeddings": 32,
            "max_position_embeddings": 512}
# (head_dim, partial_rotary_factor, theta, scaling)
CASES = {
    "default": (32, 1.0, 10000.0, None),
    "linear": (64, 1.0, 500000.0, {"rope_type": "linear", "factor": 4.0}),
    "llama3": (32, 1.0, 500000.0, LLAMA3),
    "longrope_partial": (32, 0.75, 10000.0, LONGROPE),
    "partial_half": (80, 0.5, 10000.0, None),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# fp32: the kernel may contract a product and a sum into one fma; half precision: one rounding of
# the result (the interpreter truncates bf16).
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_fused_rotary_matches_the_eager_module_in_place(case: tuple, dtype: torch.dtype, device) -> None:
    head_dim, partial, theta, scaling = case
    heads, kv_heads = 4, 2
    rotary = RotaryEmbedding(head_dim, theta, scaling, partial)
    positions = torch.tensor([0, 1, 5, 31, 32, 33, 100, 511, 4095, 40000])
    tokens = positions.numel()
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=torch.Generator().manual_seed(7))
    qkv = (qkv * 2).to(dtype)
    q_end, k_end = heads * head_dim, (heads + kv_heads) * head_dim
    q = qkv[:, :q_end].reshape(tokens, heads, head_dim)
    k = qkv[:, q_end:k_end].reshape(tokens, kv_heads, head_dim)
    expected_q, expected_k = rotary(positions, q, k)  # eager on the CPU: new tensors

    on_device = qkv.to(device)
    q_dev = on_device[:, :q_end].reshape(tokens, heads, head_dim)
    k_dev = on_device[:, q_end:k_end].reshape(tokens, kv_heads, head_dim)
    long = rotary.long_inv_freq.to(device) if rotary.long_from is not None else None
    out_q, out_k = fused_rotary.rotary_embedding(
        positions.to(device), q_dev, k_dev, rotary.inv_freq.to(device), long_inv_freq=long,
        long_from=rotary.long_from or 0, attention_factor=rotary.attention_factor,
    )
    assert out_q.data_ptr() == q_dev.data_ptr() and out_k.data_ptr() == k_dev.data_ptr()  # in place
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(out_q.cpu(), expected_q, atol=tol, rtol=tol)
    torch.testing.assert_close(out_k.cpu(), expected_k, atol=tol, rtol=tol)
    result = on_device.cpu()
    assert torch.equal(result[:, k_end:], qkv[:, k_end:])  # v untouched
    r = rotary.rotary_dim
    assert torch.equal(result[:, :q_end].reshape(tokens, heads, head_dim)[..., r:], q[..., r:])


def test_fused_rotary_of_no_tokens_launches_nothing(device) -> None:
    q, k = torch.empty(0, 2, 32, device=device), torch.empty(0, 1, 32, device=device)
    inv_freq = RotaryEmbedding(32, 10000.0, None).inv_freq.to(device)
    assert fused_rotary.rotary_embedding(torch.empty(0, dtype=torch.long, device=device), q, k,
                                         inv_freq) == (q, k)
