"""Mixtral-style sparse mixture of experts, with LoRA on the router and on every expert.

Routing is transformers' (`MixtralSparseMoeBlock`): router logits -> softmax in float32 -> top-k
-> renormalised weights cast to the activations' dtype; each (token, chosen expert) pair is a
*row*. Rows are sorted by expert, so each expert's base matmul reads one contiguous slice, and
the rows' outputs are weighted and summed back into their tokens in ascending expert order (the
order transformers adds them in).

LoRA on the experts (PEFT wraps `experts.{e}.w1/w2/w3` as plain linears, one adapter per expert)
runs as ONE kernel call per projection for all experts and all adapters of the step: the buffers
have `num_experts * L` slots, each one page of the largest rank (the experts' storage is not
paged by rank rows: a slot per expert and adapter, fixed), and a row of expert `e` whose token
uses adapter slot `a` reads slot `e * L + a` (-1 when its token has no adapter). `lorafleet.kernels`
then groups rows by that composite slot exactly as it groups tokens by adapter elsewhere
(docs/kernels.md, "LoRA on MoE experts"), stopping at each slot's true rank; an adapter that
leaves an expert or a layer alone has zeros in its slots there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lorafleet import kernels
from lorafleet.runtime.layers.lora_linear import LoRABuffers, LoRALinear, LoraStep
from torch import nn

EXPERTS_GROUP = "experts"


class ExpertsLinear(LoRABuffers):
    """One projection of every expert: base weights [E, N, K], LoRA slot `expert * L + adapter slot`."""

    def __init__(
        self,
        in_features: int,
        slices: tuple[tuple[str, int], ...],  # (PEFT module name, out features), e.g. w1 | w3
        *,
        num_experts: int,
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_adapter_slots = max(max_loras, 1)
        num_slots = num_experts * self.num_adapter_slots
        super().__init__(
            in_features,
            slices,
            num_slots=num_slots,
            num_pages=num_slots,  # composite slot c is page c, of max_rank rows
            page_rank=max_rank,
            dtype=dtype,
            device=device,
        )
        self.num_experts = num_experts
        self.weight = nn.Parameter(
            torch.empty(num_experts, self.out_features, in_features, dtype=dtype, device=device),
            requires_grad=False,
        )

    def composite_slot(self, expert: int, slot: int) -> int:
        return expert * self.num_adapter_slots + slot

    def run(self, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:  # rows [R, K] sorted by expert
        """Each expert's base matmul on its contiguous rows -> [R, N]."""
        out = rows.new_empty(rows.shape[0], self.out_features)
        start = 0
        for expert, count in enumerate(counts):
            if count:
                out[start : start + count] = F.linear(rows[start : start + count], self.weight[expert])
                start += count
        return out


class SparseMoE(nn.Module):
    """Router (a `LoRALinear`) + experts with SwiGLU (`w2(silu(w1 x) * w3 x)`), top-k routing."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        top_k: int,
        *,
        max_loras: int,
        max_rank: int,
        num_pages: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.gate = LoRALinear(
            hidden_size,
            (("gate", num_experts),),
            group="router",
            bias=False,
            max_loras=max_loras,
            num_pages=num_pages,
            dtype=dtype,
            device=device,
        )
        i = intermediate_size
        sizes = {"num_experts": num_experts, "max_loras": max_loras, "max_rank": max_rank}
        w13 = (("w1", i), ("w3", i))
        self.experts_w13 = ExpertsLinear(hidden_size, w13, **sizes, dtype=dtype, device=device)
        self.experts_w2 = ExpertsLinear(i, (("w2", hidden_size),), **sizes, dtype=dtype, device=device)
        self.num_experts, self.top_k, self.intermediate_size = num_experts, top_k, i

    def forward(self, x: torch.Tensor, lora: LoraStep | None) -> torch.Tensor:  # x [T, H] -> [T, H]
        router_logits = self.gate(x, lora)  # [T, E]
        weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        weights, chosen = torch.topk(weights, self.top_k, dim=-1)  # [T, k]
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        flat = chosen.reshape(-1)  # [T*k] expert of each (token, choice) row
        order = torch.sort(flat, stable=True).indices  # rows grouped by expert, tokens in order
        token_of_row = order // self.top_k  # [R]
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        rows = x[token_of_row]  # [R, H]
        meta = self._expert_rows_meta(lora, token_of_row, flat[order])
        gate_up = self.experts_w13.run(rows, counts)  # [R, 2I]
        if meta is not None:
            assert lora is not None
            self.experts_w13.add_lora(gate_up, rows, meta, lora.pages[EXPERTS_GROUP], lora.backend)
        i = self.intermediate_size
        hidden = F.silu(gate_up[:, :i]) * gate_up[:, i:]  # [R, I]
        down = self.experts_w2.run(hidden, counts)  # [R, H]
        if meta is not None:
            assert lora is not None
            self.experts_w2.add_lora(down, hidden, meta, lora.pages[EXPERTS_GROUP], lora.backend)
        down = down * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token_of_row, down)

    def _expert_rows_meta(
        self,
        lora: LoraStep | None,
        token_of_row: torch.Tensor,  # [R]
        expert_of_row: torch.Tensor,  # [R]
    ) -> kernels.LoraBatch | None:
        """The kernels' metadata over composite slots `expert * L + adapter slot`, or None."""
        step = lora.groups.get(EXPERTS_GROUP) if lora is not None else None
        if step is None or step.token_lora is None:
            return None
        slot = step.token_lora[token_of_row]  # [R] adapter slot of each row's token, -1 = none
        composite = torch.where(slot >= 0, expert_of_row * self.experts_w13.num_adapter_slots + slot, -1)
        return kernels.prepare_lora_batch(composite, self.experts_w13.lora_scales.shape[1])
