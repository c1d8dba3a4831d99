"""Paged KV caches for the attention tests, built so that reading anything invisible shows.

Every cache slot a query may not see holds NaN: the tail of each sequence's last block, positions
before a sliding window, whole unused blocks. Block-table entries that no visible key needs point
at NaN blocks, at -1 or far past the pool. A kernel that loads one invisible value (even with
probability 0: 0 * NaN = NaN) or dereferences one unused entry fails the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Max |kernel - reference| <= ATOL + RTOL * |reference|; outputs are softmax averages of N(0, 1)
# values. fp32: summation order (online softmax, exp2, split-K) only. fp16: both round the fp32
# result once; on a GPU the probabilities enter P.V in fp16 (2^-11). bf16: the same at 2^-8, plus
# the interpreter truncating fp32 -> bf16 instead of rounding.
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


@dataclass(frozen=True)
class PagedCase:
    k_cache: torch.Tensor  # [num_blocks, block_size, KVH, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks] int32
    num_blocks: int


def make_paged_cache(
    visible: list[tuple[int, int]],  # per sequence: keys [lo, hi) that some query may see
    *,
    max_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    spare_blocks: int = 3,
) -> PagedCase:
    gen = torch.Generator().manual_seed(seed)
    needed = [[i for i in range(max_blocks) if i * block_size < hi and (i + 1) * block_size > lo]
              for lo, hi in visible]
    num_blocks = sum(len(n) for n in needed) + spare_blocks
    ids = torch.randperm(num_blocks, generator=gen).tolist()  # scattered, like a used pool
    spare = ids[: spare_blocks]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"))
    v_cache = torch.full(shape, float("nan"))
    garbage = [spare[0], -1, num_blocks + 1000]  # NaN block, negative, far past the pool
    tables = torch.tensor([[garbage[(s + i) % 3] for i in range(max_blocks)] for s in range(len(visible))],
                          dtype=torch.int32).reshape(len(visible), max_blocks)
    next_id = spare_blocks
    for s, ((lo, hi), blocks) in enumerate(zip(visible, needed, strict=True)):
        for i in blocks:
            tables[s, i] = ids[next_id]
            next_id += 1
        for pos in range(lo, hi):
            block, offset = int(tables[s, pos // block_size]), pos % block_size
            k_cache[block, offset] = torch.randn(num_kv_heads, head_dim, generator=gen)
            v_cache[block, offset] = torch.randn(num_kv_heads, head_dim, generator=gen)
    return PagedCase(k_cache.to(dtype).to(device), v_cache.to(dtype).to(device), tables.to(device),
                     num_blocks)


def decode_visible(context_lens: list[int], sliding_window: int | None) -> list[tuple[int, int]]:
    """Keys the one query of each sequence sees: [max(0, ctx - window), ctx)."""
    window = sliding_window or max(context_lens + [1])
    return [(max(0, c - window), c) for c in context_lens]


def prefill_visible(chunks: list[tuple[int, int]], sliding_window: int | None) -> list[tuple[int, int]]:
    """chunks: (start_pos, length). Keys some query of the chunk sees."""
    return [(0 if sliding_window is None else max(0, start - sliding_window + 1), start + length)
            for start, length in chunks]


def random_queries(num_tokens: int, num_heads: int, head_dim: int, dtype: torch.dtype,
                   device: torch.device, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, num_heads, head_dim, generator=gen).to(dtype).to(device)


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@dataclass(frozen=True)
class DecodeProblem:
    q: torch.Tensor  # [B, H, D]
    cache: PagedCase
    context_lens: torch.Tensor  # [B] int32
    options: dict  # scale, sliding_window, soft_cap

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        return (self.q, self.cache.k_cache, self.cache.v_cache, self.cache.block_tables, self.context_lens)


@dataclass(frozen=True)
class PrefillProblem:
    q: torch.Tensor  # [T, H, D]
    cache: PagedCase
    cu_seqlens_q: torch.Tensor  # [S + 1] int32
    start_pos: torch.Tensor  # [S] int32
    options: dict

    @property
    def args(self) -> tuple[torch.Tensor, ...]:
        return (self.q, self.cache.k_cache, self.cache.v_cache)

    @property
    def kwargs(self) -> dict:
        return {"cu_seqlens_q": self.cu_seqlens_q, "start_pos": self.start_pos,
                "block_tables": self.cache.block_tables, **self.options}


def decode_problem(
    context_lens: list[int], *, block_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype, device: torch.device, sliding_window: int | None = None,
    soft_cap: float | None = None, spare_table_entries: int = 1, seed: int = 0,
) -> DecodeProblem:
    """A batch of sequences with these contexts; each table has spare unused entries at its end."""
    max_blocks = -(-max(context_lens + [1]) // block_size) + spare_table_entries
    cache = make_paged_cache(decode_visible(context_lens, sliding_window), max_blocks=max_blocks,
                             block_size=block_size, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype,
                             device=device, seed=seed)
    return DecodeProblem(
        q=random_queries(len(context_lens), num_heads, head_dim, dtype, device, seed=seed + 1),
        cache=cache,
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        options={"scale": head_dim**-0.5, "sliding_window": sliding_window, "soft_cap": soft_cap},
    )


def prefill_problem(
    chunks: list[tuple[int, int]], *, block_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
    dtype: torch.dtype, device: torch.device, sliding_window: int | None = None,
    soft_cap: float | None = None, seed: int = 0,
) -> PrefillProblem:
    """chunks: (start_pos, length) per sequence, packed in this order."""
    max_blocks = -(-max([s + n for s, n in chunks] + [1]) // block_size) + 1
    cache = make_paged_cache(prefill_visible(chunks, sliding_window), max_blocks=max_blocks,
                             block_size=block_size, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype,
                             device=device, seed=seed)
    lengths = [n for _, n in chunks]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return PrefillProblem(
        q=random_queries(cu[-1], num_heads, head_dim, dtype, device, seed=seed + 1),
        cache=cache,
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        start_pos=torch.tensor([s for s, _ in chunks], dtype=torch.int32, device=device),
        options={"scale": head_dim**-0.5, "sliding_window": sliding_window, "soft_cap": soft_cap},
    )
