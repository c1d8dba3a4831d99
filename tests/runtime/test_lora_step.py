"""Per-step LoRA metadata of the model runner, and the paged layout of the LoRA layers' buffers."""

from __future__ import annotations

import torch
from lorafleet import kernels
from lorafleet.kernels import torch_lora
from lorafleet.runtime.adapters import Residence
from lorafleet.runtime.layers.lora_linear import LoRALinear, LoraStep

from tests.runtime.oracle import engine_for

CPU = torch.device("cpu")


def _place(engine, slot: int, name: str, first_page: int) -> None:  # type: ignore[no-untyped-def]
    """Writes adapter `name` into `slot`, its pages from `first_page` on in every group it targets."""
    store = engine.adapters.store
    version = store.current(name)
    pages, at = {}, first_page
    for group, rank in version.ranks.items():
        count = kernels.pages_for_rank(rank)
        pages[group] = tuple(range(at, at + count))
    engine.loop.runner.write_adapter(Residence(slot, pages, version.ranks, 0), store.weights(version.key))


def _bare_runner(engine):  # type: ignore[no-untyped-def]
    """The engine's runner with the preloaded adapters' slots emptied (the engine is not started)."""
    runner = engine.loop.runner
    runner.clear_slots(list(range(engine.config.max_loaded_adapters)))
    return runner


def test_runner_shares_one_metadata_across_groups_and_reuses_it_next_step() -> None:
    engine = engine_for("mistral", max_loaded_adapters=4)
    runner = _bare_runner(engine)
    _place(engine, 0, "r8-qv", 0)  # q and v only: the qkv group
    _place(engine, 1, "r16-all", 4)  # every projection
    step = runner._lora_step([0, 1, -1, 1])
    assert step is not None and set(step.groups) == {"qkv", "o", "gate_up", "down"}
    meta = step.groups["qkv"]
    assert all(m is meta for m in step.groups.values())  # one metadata for every group
    assert meta.token_lora is not None and meta.token_lora.tolist() == [0, 1, -1, 1]
    assert step.pages["o"].slot_ranks[:2] == (0, 16)  # slot 0's adapter skips o_proj: rank 0 there
    assert step.pages["qkv"].slot_ranks[:2] == (8, 16)
    again = runner._lora_step([0, 1, -1, 1])  # the next decode step of the same sequences
    assert again is not None and again.groups["qkv"] is meta
    changed = runner._lora_step([0, 1, -1])  # a sequence finished: new metadata
    assert changed is not None and changed.groups["qkv"].token_lora.tolist() == [0, 1, -1]  # type: ignore[union-attr]
    only_qv = runner._lora_step([0, 0])
    assert only_qv is not None and set(only_qv.groups) == {"qkv"}  # the MLP and o_proj skip LoRA
    assert runner._lora_step([-1, -1]) is None


def test_a_vacated_slot_given_an_adapter_with_other_targets_changes_its_groups() -> None:
    engine = engine_for("mistral", max_loaded_adapters=4)
    runner = _bare_runner(engine)
    _place(engine, 1, "r16-all", 0)
    first = runner._lora_step([1, 1])
    assert first is not None and set(first.groups) == {"qkv", "o", "gate_up", "down"}
    runner.clear_slots([1])
    _place(engine, 1, "r8-qv", 0)  # the same pages, another adapter
    second = runner._lora_step([1, 1])
    assert second is not None and set(second.groups) == {"qkv"}
    assert second.pages["qkv"].slot_pages[1] == (0,)


def _layer(device: torch.device) -> LoRALinear:
    layer = LoRALinear(16, (("q_proj", 12), ("k_proj", 4), ("v_proj", 4)), group="qkv", bias=False,
                       max_loras=3, num_pages=6, dtype=torch.float32, device=device)
    layer.weight.data.copy_(torch.randn(20, 16, generator=torch.Generator().manual_seed(0)))
    return layer


def test_cpu_layer_stores_pages_in_row_layout_behind_the_kernels_shapes() -> None:
    layer = _layer(CPU)
    assert layer.lora_a.shape == (6, 3, 8, 16) and layer.lora_b.shape == (6, 20, 8)
    assert torch_lora.is_row_layout(layer.lora_a, layer.lora_b)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(12, 16, generator=gen), torch.randn(4, 12, generator=gen)  # rank 12: two pages
    layer.write(2, (4, 1), "v_proj", a, b, 0.5)
    assert torch.equal(layer.lora_a[4, 2], a[:8]) and torch.equal(layer.lora_a[1, 2, :4], a[8:])
    assert torch.equal(layer.lora_b[4, 16:20], b[:, :8]) and torch.equal(layer.lora_b[1, 16:20, :4], b[:, 8:])
    assert layer.lora_scales[2, 2] == 0.5
    layer.clear(2, (4, 1))
    assert not layer.lora_a.any() and not layer.lora_b.any() and not layer.lora_scales.any()
    assert layer.page_bytes == (3 * 16 + 20) * 8 * 4


def test_cpu_layer_forward_adds_each_rows_adapter_and_leaves_base_rows_exact() -> None:
    layer = _layer(CPU)
    gen = torch.Generator().manual_seed(2)
    weights = {
        slot: (torch.randn(8, 16, generator=gen), torch.randn(12, 8, generator=gen)) for slot in (0, 2)
    }
    placement = {0: (3,), 2: (0,)}
    for slot, (a, b) in weights.items():
        layer.write(slot, placement[slot], "q_proj", a, b, 2.0)
    pages = kernels.build_adapter_pages([[3], [], [0]], [8, 0, 8], max_pages=2)
    x = torch.randn(4, 16, generator=gen)
    slots = torch.tensor([2, -1, 0, 2])
    meta = kernels.prepare_lora_batch(slots, 3)
    out = layer(x, LoraStep({"qkv": meta}, {"qkv": pages}, kernels.backend_for(CPU)))
    base = x @ layer.weight.T
    expected = base.clone()
    for row, slot in enumerate(slots.tolist()):
        if slot >= 0:
            a, b = weights[slot]
            expected[row, :12] += 2.0 * (x[row] @ a.T) @ b.T
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1], base[1])
    # The public kernels API over the same (strided) buffers agrees with the layer's direct call.
    via_api = kernels.add_lora_paged(base.clone(), x, layer.lora_a, layer.lora_b, slots, layer.lora_scales,
                                     pages=pages, slice_widths=layer.slice_widths)
    torch.testing.assert_close(via_api, out, atol=1e-6, rtol=1e-6)
