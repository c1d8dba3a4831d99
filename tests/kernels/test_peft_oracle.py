"""Stacked real PEFT adapters through the kernels equal PEFT's own mixed-batch LoRA layers.

This pins the conventions the runtime relies on: A is [r, K] and B is [N, r] as PEFT saves them,
ranks zero-padded into one stack, scaling (alpha/r, alpha/sqrt(r) for rsLoRA, alpha_pattern and
rank_pattern) per slice, and an adapter that does not target a projection adds nothing there.
"""

from __future__ import annotations

import pytest
import torch
from lorafleet import kernels

from tests.fixtures import STANDARD_ADAPTERS, standard_adapters, tiny_model
from tests.kernels.cases import assert_close_to_reference

NAMES = list(STANDARD_ADAPTERS)  # slot i holds NAMES[i]
FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "gate_up": ("gate_proj", "up_proj")}


@pytest.fixture(scope="module")
def peft_layer():
    import peft
    import transformers
    model_dir = tiny_model("mistral")
    paths = standard_adapters(model_dir)
    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, paths[NAMES[0]], adapter_name=NAMES[0])
    for name in NAMES[1:]:
        model.load_adapter(paths[name], adapter_name=name)
    model.eval()
    return model.base_model.model.model.layers[0]


def _stack(modules: list, hidden_in: int) -> tuple[torch.Tensor, ...]:
    """[L, S, R, K] A, [L, N, R] B and [S, L] scales from PEFT LoRA layers, zero where untargeted."""
    max_rank = max(STANDARD_ADAPTERS[n].r for n in NAMES)
    widths = [m.base_layer.out_features for m in modules]
    lora_a = torch.zeros(len(NAMES), len(modules), max_rank, hidden_in)
    lora_b = torch.zeros(len(NAMES), sum(widths), max_rank)
    scales = torch.zeros(len(modules), len(NAMES))
    for s, module in enumerate(modules):
        begin = sum(widths[:s])
        for slot, name in enumerate(NAMES):
            if name not in getattr(module, "lora_A", {}):
                continue
            a, b = module.lora_A[name].weight, module.lora_B[name].weight  # [r, K], [N, r]
            lora_a[slot, s, : a.shape[0]] = a
            lora_b[slot, begin : begin + b.shape[0], : b.shape[1]] = b
            scales[s, slot] = module.scaling[name]
    return lora_a, lora_b, scales, tuple(widths)


@pytest.mark.parametrize("fused", FUSED, ids=FUSED)
def test_stacked_peft_adapters_match_peft_mixed_batch(peft_layer, fused: str, backend: str) -> None:
    parent = peft_layer.self_attn if fused == "qkv" else peft_layer.mlp
    modules = [getattr(parent, name) for name in FUSED[fused]]
    hidden_in = modules[0].base_layer.in_features
    lora_a, lora_b, scales, widths = _stack(modules, hidden_in)
    token_lora = torch.tensor([0, 3, -1, 1, 2, 2, 0, 3, 1, -1, 2])
    x = torch.randn(len(token_lora), hidden_in, generator=torch.Generator().manual_seed(0))
    adapter_names = ["__base__" if slot < 0 else NAMES[slot] for slot in token_lora.tolist()]
    with torch.no_grad():
        expected = torch.cat([m(x[:, None], adapter_names=adapter_names)[:, 0] for m in modules], dim=1)
        out = torch.cat([m.base_layer(x) for m in modules], dim=1)
    kernels.add_lora_sliced(out, x, lora_a, lora_b, token_lora, scales, slice_widths=widths)
    assert_close_to_reference(out, expected)


def _to_pages(
    lora_a: torch.Tensor, lora_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, kernels.AdapterPages]:
    """The stacked adapters moved into pages in reverse order, each slot with its true rank (the
    largest over its slices): ceil(r / 8) pages per slot, none padded to the stack's rank."""
    num_slots, num_slices, max_rank, hidden_in = lora_a.shape
    nonzero = (lora_a.abs().sum((1, 3)) + lora_b.abs().sum(1)) > 0  # [L, R]: rank rows in use
    used = [nonzero[slot].nonzero() for slot in range(num_slots)]
    ranks = [int(rows.max()) + 1 if rows.numel() else 0 for rows in used]  # 0: the group is not targeted
    held = [kernels.pages_for_rank(r) for r in ranks]
    ids = list(range(sum(held)))[::-1]  # scattered: the last slot gets page 0
    slot_pages = [ids[sum(held[:slot]) : sum(held[: slot + 1])] for slot in range(num_slots)]
    page_rank = kernels.PAGE_RANK
    a_pages = torch.zeros(len(ids), num_slices, page_rank, hidden_in)
    b_pages = torch.zeros(len(ids), lora_b.shape[1], page_rank)
    for slot, placed in enumerate(slot_pages):
        for j, page in enumerate(placed):
            rows = slice(j * page_rank, min((j + 1) * page_rank, max_rank))
            a_pages[page, :, : rows.stop - rows.start] = lora_a[slot, :, rows]
            b_pages[page, :, : rows.stop - rows.start] = lora_b[slot, :, rows]
    pages = kernels.build_adapter_pages(slot_pages, ranks, max_pages=max_rank // page_rank)
    return a_pages, b_pages, pages


@pytest.mark.parametrize("fused", FUSED, ids=FUSED)
def test_paged_peft_adapters_match_peft_mixed_batch(peft_layer, fused: str, backend: str) -> None:
    parent = peft_layer.self_attn if fused == "qkv" else peft_layer.mlp
    modules = [getattr(parent, name) for name in FUSED[fused]]
    hidden_in = modules[0].base_layer.in_features
    lora_a, lora_b, scales, widths = _stack(modules, hidden_in)
    a_pages, b_pages, pages = _to_pages(lora_a, lora_b)
    assert pages.pages_used < len(NAMES) * pages.max_pages  # mixed ranks, stored without padding
    token_lora = torch.tensor([2, 0, -1, 3, 1, 1, 0, 2, 3])
    x = torch.randn(len(token_lora), hidden_in, generator=torch.Generator().manual_seed(1))
    adapter_names = ["__base__" if slot < 0 else NAMES[slot] for slot in token_lora.tolist()]
    with torch.no_grad():
        expected = torch.cat([m(x[:, None], adapter_names=adapter_names)[:, 0] for m in modules], dim=1)
        out = torch.cat([m.base_layer(x) for m in modules], dim=1)
    kernels.add_lora_paged(out, x, a_pages, b_pages, token_lora, scales, pages=pages, slice_widths=widths)
    assert_close_to_reference(out, expected)
