"""The sparse MoE block with LoRA on the router and on each expert, against a per-token reference.

Tokens of different adapters and experts share one kernel call per projection (composite slots
`expert * L + adapter slot`): checked on the torch path and on the Triton kernels (interpreted on
the CPU), with adapters of different ranks that target different experts.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from lorafleet import kernels
from lorafleet.runtime.layers.lora_linear import LoraStep
from lorafleet.runtime.layers.moe import SparseMoE

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before lorafleet.kernels.lora is imported

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
E, TOP_K, H, FFN, L, R, T = 4, 2, 32, 48, 3, 8, 24
# adapter slot -> {(expert or None for the router, module): rank}
ADAPTERS: dict[int, dict[tuple[int | None, str], int]] = {
    0: {**{(e, m): 8 for e in range(E) for m in ("w1", "w2", "w3")}},
    1: {(1, "w2"): 4, (3, "w2"): 4, (3, "w1"): 6},
    2: {(None, "gate"): 5, (0, "w1"): 8, (2, "w3"): 2},
}


def _moe(gen: torch.Generator) -> tuple[SparseMoE, dict[tuple[int, int | None, str], tuple]]:
    moe = SparseMoE(
        H, FFN, E, TOP_K, max_loras=L, max_rank=R, num_pages=L, dtype=torch.float32, device=DEVICE
    )
    with torch.no_grad():
        for param in (moe.gate.weight, moe.experts_w13.weight, moe.experts_w2.weight):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    loras = {}
    for slot, modules in ADAPTERS.items():
        for (expert, module), rank in modules.items():
            holder = moe.gate if expert is None else moe.experts_w2 if module == "w2" else moe.experts_w13
            width = holder.slice_widths[holder.slice_index[module]]
            a = torch.randn(rank, holder.in_features, generator=gen) * 0.3
            b = torch.randn(width, rank, generator=gen) * 0.3
            scale = 2.0 / rank
            target = slot if expert is None else holder.composite_slot(expert, slot)  # type: ignore[attr-defined]
            holder.write(target, (target,), module, a.to(DEVICE), b.to(DEVICE), scale)  # router: page = slot
            loras[(slot, expert, module)] = (a, b, scale)
    return moe, loras


def _router_pages() -> kernels.AdapterPages:
    """Adapter slot s of the router sits in page s (only slot 2's adapter targets it)."""
    ranks = [ADAPTERS[slot].get((None, "gate"), 0) for slot in range(L)]
    return kernels.build_adapter_pages([[s] if r else [] for s, r in enumerate(ranks)], ranks, max_pages=2,
                                       device=DEVICE)


def _expert_pages(moe: SparseMoE) -> kernels.AdapterPages:
    """Composite slot c = expert * L + slot is page c, ranked by its adapter's largest expert rank."""
    ranks = []
    for c in range(E * L):
        expert, slot = divmod(c, L)
        ranks.append(max((r for (e, _), r in ADAPTERS[slot].items() if e == expert), default=0))
    return kernels.build_adapter_pages([[c] if r else [] for c, r in enumerate(ranks)], ranks, max_pages=1,
                                       page_rank=moe.experts_w13.page_rank, device=DEVICE)


def _reference(moe: SparseMoE, loras: dict, x: torch.Tensor, slots: list[int]) -> torch.Tensor:
    """Token by token: PEFT's `base(x) + scale * B(A x)` on each wrapped linear, then Mixtral's routing."""
    w13, w2, gate = moe.experts_w13.weight.cpu(), moe.experts_w2.weight.cpu(), moe.gate.weight.cpu()

    def linear(
        v: torch.Tensor, weight: torch.Tensor, slot: int, expert: int | None, module: str
    ) -> torch.Tensor:
        out = v @ weight.T
        if (slot, expert, module) in loras:
            a, b, scale = loras[(slot, expert, module)]
            out = out + scale * (v @ a.T) @ b.T
        return out

    rows = []
    for t, slot in enumerate(slots):
        v = x[t].cpu()
        probs = F.softmax(linear(v, gate, slot, None, "gate"), dim=-1, dtype=torch.float)
        weights, chosen = torch.topk(probs, TOP_K)
        weights = weights / weights.sum()
        out = torch.zeros(H)
        for weight, expert in zip(weights.tolist(), chosen.tolist(), strict=True):
            up_gate = linear(v, w13[expert, :FFN], slot, expert, "w1")
            up = linear(v, w13[expert, FFN:], slot, expert, "w3")
            out += weight * linear(F.silu(up_gate) * up, w2[expert], slot, expert, "w2")
        rows.append(out)
    return torch.stack(rows)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_moe_with_lora_on_router_and_experts_matches_a_per_token_reference(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFLEET_KERNELS", backend)
    gen = torch.Generator().manual_seed(0)
    moe, loras = _moe(gen)
    x = torch.randn(T, H, generator=gen).to(DEVICE)
    slots = [(t % (L + 1)) - 1 for t in range(T)]  # -1, 0, 1, 2, -1, ...: every adapter and the base
    token_lora = torch.tensor(slots, device=DEVICE)
    router = torch.tensor([s if s == 2 else -1 for s in slots], device=DEVICE)  # only slot 2 adapts it
    step = LoraStep(
        {
            "router": kernels.prepare_lora_batch(router, L),
            "experts": kernels.prepare_lora_batch(token_lora, L),
        },
        {"router": _router_pages(), "experts": _expert_pages(moe)},
        kernels.backend_for(DEVICE),
    )
    assert step.backend.name == backend
    with torch.no_grad():
        ours = moe(x, step).cpu()
        base = moe(x, None).cpu()
    expected = _reference(moe, loras, x, slots)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    base_rows = [t for t, s in enumerate(slots) if s < 0]
    torch.testing.assert_close(ours[base_rows], base[base_rows], atol=0, rtol=0)  # the base is untouched
    for slot in range(L):
        rows = [t for t, s in enumerate(slots) if s == slot]
        assert (ours[rows] - base[rows]).abs().max() > 1e-3, slot  # every adapter changes its tokens


def test_clear_empties_an_adapter_slot_in_every_expert() -> None:
    moe, _ = _moe(torch.Generator().manual_seed(1))
    for expert in range(E):
        composite = moe.experts_w13.composite_slot(expert, 0)
        moe.experts_w13.clear(composite, (composite,))
    for expert in range(E):
        assert not moe.experts_w13.lora_a[moe.experts_w13.composite_slot(expert, 0)].any()
        assert moe.experts_w13.lora_scales[:, moe.experts_w13.composite_slot(expert, 0)].eq(0).all()
    assert moe.experts_w13.lora_a[moe.experts_w13.composite_slot(0, 2)].any()  # other slots kept
