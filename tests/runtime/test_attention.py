"""`paged_attention` on the CPU against attention written out per sequence.

The model oracles check attention through whole models; this checks the paged layer alone on
shapes those models do not reach: sequences scattered over non-adjacent blocks, grouped-query
heads, decode rows beside prefill chunks (fresh and continuing) in one call, a sliding window,
and Gemma 2's soft-capping. Each case runs twice on the CPU: through the decode attention kernel
(`kernels/native_cpu.py`, where `make setup` built it) and through the torch form it replaces.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet.kernels import native_cpu
from lorafleet.runtime.layers import attention
from lorafleet.runtime.layers.attention import (
    AttentionMetadata,
    DecodeGroup,
    PrefillSpan,
    paged_attention,
)

BLOCK_SIZE = 4
NUM_BLOCKS = 32
KERNEL = native_cpu.attention_kernel()


@pytest.fixture(params=["kernel", "torch"])
def decode_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int] | None:
    """Which form the decode rows take: the kernel's (its calls, counted) or the torch form's (None)."""
    if request.param == "torch":
        monkeypatch.setattr(attention.native_cpu, "attention_kernel", lambda: None)
        return None
    calls: list[int] = []
    if KERNEL is None:
        pytest.skip("no CPU kernels built on this machine")

    class Counting:
        @staticmethod
        def decode_attention(*args):  # type: ignore[no-untyped-def]
            calls.append(1)
            return KERNEL.decode_attention(*args)

    monkeypatch.setattr(attention.native_cpu, "attention_kernel", lambda: Counting)
    return calls


def reference(
    q: torch.Tensor,  # [n, H, D]: the sequence's last n tokens
    keys: torch.Tensor,  # [ctx, KVH, D]: the whole sequence
    values: torch.Tensor,
    scale: float,
    window: int | None,
    soft_cap: float | None,
) -> torch.Tensor:  # [n, H, D]
    n, ctx = q.shape[0], keys.shape[0]
    groups = q.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(groups, dim=1).transpose(0, 1)  # [H, ctx, D]
    v = values.double().repeat_interleave(groups, dim=1).transpose(0, 1)
    scores = q.double().transpose(0, 1) @ k.transpose(1, 2) * scale  # [H, n, ctx]
    if soft_cap is not None:
        scores = torch.tanh(scores / soft_cap) * soft_cap
    q_pos = torch.arange(ctx - n, ctx)[:, None]
    k_pos = torch.arange(ctx)[None, :]
    visible = k_pos <= q_pos
    if window is not None:
        visible &= k_pos > q_pos - window
    scores = scores.masked_fill(~visible, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).float()


@pytest.mark.parametrize("head_dim", [8, 64])
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "window", "soft_cap"),
    [(6, 2, None, None), (4, 4, None, None), (6, 3, 5, None), (4, 2, None, 30.0), (4, 1, 3, 5.0)],
)
def test_paged_attention_matches_attention_per_sequence(
    num_heads: int, num_kv_heads: int, window: int | None, soft_cap: float | None, head_dim: int,
    decode_path: list[int] | None,
) -> None:
    generator = torch.Generator().manual_seed(num_heads * 10 + num_kv_heads + head_dim)
    # Each sequence: (tokens already cached, tokens this step). One token with a cache = decode.
    sequences = [(9, 1), (2, 1), (14, 1), (0, 7), (6, 5), (3, 1)]
    free_blocks = torch.randperm(NUM_BLOCKS, generator=generator).tolist()
    shape = (NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator)
    v_cache = torch.randn(shape, generator=generator)

    whole_keys, whole_values, tables, slots = [], [], [], []
    for cached, new in sequences:
        blocks = [free_blocks.pop() for _ in range(-(-(cached + new) // BLOCK_SIZE))]
        tables.append(torch.tensor(blocks))
        positions = torch.arange(cached + new)
        seq_slots = torch.tensor(blocks)[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
        keys = torch.randn(cached + new, num_kv_heads, head_dim, generator=generator)
        values = torch.randn(cached + new, num_kv_heads, head_dim, generator=generator)
        k_cache.view(-1, num_kv_heads, head_dim)[seq_slots[:cached]] = keys[:cached]
        v_cache.view(-1, num_kv_heads, head_dim)[seq_slots[:cached]] = values[:cached]
        whole_keys.append(keys)
        whole_values.append(values)
        slots.append(seq_slots[cached:])

    # The flat batch lists the sequences in order; the decode rows are those with one new token.
    q = torch.randn(sum(new for _, new in sequences), num_heads, head_dim, generator=generator)
    starts = torch.tensor([0] + [new for _, new in sequences]).cumsum(0).tolist()
    k = torch.cat([keys[cached:] for keys, (cached, _) in zip(whole_keys, sequences, strict=True)])
    v = torch.cat([vals[cached:] for vals, (cached, _) in zip(whole_values, sequences, strict=True)])
    decoding = [i for i, (cached, new) in enumerate(sequences) if new == 1 and cached > 0]
    widest = max(len(tables[i]) for i in decoding)
    padded = torch.zeros(len(decoding), widest, dtype=torch.int64)
    for row, i in enumerate(decoding):
        padded[row, : len(tables[i])] = tables[i]
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots),
        prefills=tuple(
            PrefillSpan(starts[i], starts[i + 1], cached, tables[i])
            for i, (cached, _) in enumerate(sequences)
            if i not in decoding
        ),
        decode=DecodeGroup(
            token_index=torch.tensor([starts[i] for i in decoding]),
            block_tables=padded,
            context_lens=torch.tensor([sum(sequences[i]) for i in decoding]),
        ),
    )
    scale = head_dim**-0.5

    out = paged_attention(q, k, v, k_cache, v_cache, meta, scale, window, soft_cap)

    for i, keys in enumerate(whole_keys):
        rows = slice(starts[i], starts[i + 1])
        expected = reference(q[rows], keys, whole_values[i], scale, window, soft_cap)
        torch.testing.assert_close(out[rows], expected, atol=1e-5, rtol=1e-5, msg=f"sequence {i}")
    assert decode_path is None or decode_path == [1]  # the kernel's path: one call for the decode rows
