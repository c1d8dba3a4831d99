"""Per-step LoRA metadata of the model runner, and the CPU layout of the LoRA layers' buffers."""

from __future__ import annotations

import torch
from lorafleet import kernels
from lorafleet.kernels import torch_lora
from lorafleet.runtime.layers.lora_linear import LoRALinear, LoraStep

from tests.runtime.oracle import engine_for

CPU = torch.device("cpu")


def test_runner_builds_per_group_slots_shares_equal_groups_and_reuses_them_next_step() -> None:
    # token_lora is Optional on LoraBatch only for dataclass ordering: prepare_lora_batch always sets it
    engine = engine_for("mistral", max_loaded_adapters=4)
    runner = engine.loop.runner
    runner.set_adapter(0, engine.store.get("r8-qv"))  # q and v only: the qkv group
    runner.set_adapter(1, engine.store.get("r16-all"))  # every projection
    step = runner._lora_step([0, 1, -1, 1])
    assert step is not None and set(step.groups) == {"qkv", "o", "gate_up", "down"}
    assert step.groups["qkv"].token_lora.tolist() == [0, 1, -1, 1]
    assert step.groups["o"].token_lora.tolist() == [-1, 1, -1, 1]  # slot 0's adapter skips o_proj
    assert step.groups["o"] is step.groups["gate_up"] is step.groups["down"]  # one metadata for all three
    assert step.groups["o"].num_active_tokens == 2
    again = runner._lora_step([0, 1, -1, 1])  # the next decode step of the same sequences
    assert again is not None and again.groups["qkv"] is step.groups["qkv"]
    changed = runner._lora_step([0, 1, -1])  # a sequence finished: new metadata
    assert changed is not None and changed.groups["qkv"].token_lora.tolist() == [0, 1, -1]
    assert runner._lora_step([-1, -1]) is None


def test_slot_given_an_adapter_with_other_targets_changes_its_groups() -> None:
    engine = engine_for("mistral", max_loaded_adapters=4)
    runner = engine.loop.runner
    runner.set_adapter(1, engine.store.get("r16-all"))
    first = runner._lora_step([1, 1])
    assert first is not None and set(first.groups) == {"qkv", "o", "gate_up", "down"}
    runner.set_adapter(1, engine.store.get("r8-qv"))
    second = runner._lora_step([1, 1])
    assert second is not None and set(second.groups) == {"qkv"}


def _layer(device: torch.device) -> LoRALinear:
    layer = LoRALinear(16, (("q_proj", 12), ("k_proj", 4), ("v_proj", 4)), group="qkv", bias=False,
                       max_loras=3, max_rank=8, dtype=torch.float32, device=device)
    layer.weight.data.copy_(torch.randn(20, 16, generator=torch.Generator().manual_seed(0)))
    return layer


def test_cpu_layer_stores_row_layout_behind_the_kernels_shapes() -> None:
    layer = _layer(CPU)
    assert layer.lora_a.shape == (3, 3, 8, 16) and layer.lora_b.shape == (3, 20, 8)
    assert torch_lora.is_row_layout(layer.lora_a, layer.lora_b)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 16, generator=gen), torch.randn(4, 4, generator=gen)  # rank 4 into max rank 8
    layer.set_lora(2, "v_proj", a, b, 0.5)
    assert torch.equal(layer.lora_a[2, 2, :4], a) and not layer.lora_a[2, 2, 4:].any()
    assert torch.equal(layer.lora_b[2, 16:20, :4], b) and not layer.lora_b[2, :16].any()
    layer.reset_lora(2)
    assert not layer.lora_a.any() and not layer.lora_b.any() and not layer.lora_scales.any()


def test_cpu_layer_forward_adds_each_rows_adapter_and_leaves_base_rows_exact() -> None:
    layer = _layer(CPU)
    gen = torch.Generator().manual_seed(2)
    weights = {slot: (torch.randn(8, 16, generator=gen), torch.randn(12, 8, generator=gen))
               for slot in (0, 2)}
    for slot, (a, b) in weights.items():
        layer.set_lora(slot, "q_proj", a, b, 2.0)
    x = torch.randn(4, 16, generator=gen)
    slots = torch.tensor([2, -1, 0, 2])
    step = LoraStep({"qkv": kernels.prepare_lora_batch(slots, 3)}, kernels.backend_for(CPU))
    out = layer(x, step)
    base = x @ layer.weight.T
    expected = base.clone()
    for row, slot in enumerate(slots.tolist()):
        if slot >= 0:
            a, b = weights[slot]
            expected[row, :12] += 2.0 * (x[row] @ a.T) @ b.T
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1], base[1])
    # The public kernels API over the same (strided) buffers agrees with the layer's direct call.
    via_api = kernels.add_lora_sliced(base.clone(), x, layer.lora_a, layer.lora_b, slots, layer.lora_scales,
                                      slice_widths=layer.slice_widths)
    torch.testing.assert_close(via_api, out, atol=1e-6, rtol=1e-6)
