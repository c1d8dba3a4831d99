"""Runs the model on a scheduled batch. The only owner of the model, its LoRA buffers and the KV pool.

The KV pool is one preallocated tensor [num_layers, 2, num_blocks, block_size, KVH, D]; the
block manager decides which blocks a sequence uses, this class turns that into slot mappings,
block tables and per-token adapter slots for one flat batch of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lorafleet import kernels
from lorafleet.runtime.adapters.loader import AdapterWeights
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.scheduler import ScheduledBatch
from lorafleet.runtime.engine.sequence import Sequence
from lorafleet.runtime.layers.attention import AttentionMetadata, DecodeGroup, PrefillSpan
from lorafleet.runtime.layers.lora_linear import LoraGroupStep, LoraStep
from lorafleet.runtime.models.decoder import LORA_GROUP_OF, LORA_MODULES, DecoderModel, ModelArgs


@dataclass(frozen=True)
class StepOutput:
    """Logits of the rows the engine asked for, float32."""

    sample_seqs: list[Sequence]  # sequences whose next token is sampled this step
    sample_logits: torch.Tensor  # [len(sample_seqs), V]
    prompt_logits: dict[int, tuple[int, torch.Tensor]]  # seq_id -> (first position, [n, V])


def kv_bytes_per_block(args: ModelArgs, block_size: int, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return args.num_layers * 2 * block_size * args.num_kv_heads * args.head_dim * element


class ModelRunner:
    def __init__(self, config: EngineConfig, model: DecoderModel, args: ModelArgs) -> None:
        self.config = config
        self.model = model
        self.args = args
        self.device = config.device
        self.kv_cache = torch.zeros(  # [layers, 2, blocks, block_size, KVH, D]
            args.num_layers,
            2,
            config.num_kv_blocks,
            config.block_size,
            args.num_kv_heads,
            args.head_dim,
            dtype=config.dtype,
            device=config.device,
        )
        num_slots = max(config.max_loaded_adapters, 1)
        # [groups, L]: does the adapter in slot l target projection group g (in any layer)?
        self._group_names = tuple(dict.fromkeys(LORA_GROUP_OF.values()))
        self._slot_targets = torch.zeros(
            len(self._group_names), num_slots, dtype=torch.bool, device=config.device
        )

    def set_adapter(self, slot: int, weights: AdapterWeights) -> None:
        """Writes `weights` into `slot` of every layer's stacked buffers (clearing untargeted ones)."""
        for layer in range(self.args.num_layers):
            for linear in {
                id(m): m for m in (self.model.lora_linear(layer, n) for n in LORA_MODULES)
            }.values():
                linear.reset_lora(slot)
        for (layer, module), w in weights.modules.items():
            self.model.lora_linear(layer, module).set_lora(
                slot, module, w.lora_a.to(self.device), w.lora_b.to(self.device), w.scale
            )
        targeted = {LORA_GROUP_OF[module] for _, module in weights.modules}
        for g, group in enumerate(self._group_names):
            self._slot_targets[g, slot] = group in targeted

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, wants_prompt_logits: set[int]) -> StepOutput:
        """Runs one step; `wants_prompt_logits` holds seq ids whose prompt-token log-probs are needed."""
        inputs = self._prepare(batch)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_cache, inputs.attention, inputs.lora)
        sample_seqs, sample_rows, prompt_logits = [], [], {}
        row = 0
        for item in batch.items:
            seq, start = item.seq, item.seq.num_computed
            if seq.seq_id in wants_prompt_logits and start < seq.num_prompt_tokens:
                prompt_logits[seq.seq_id] = (
                    start,
                    self.model.compute_logits(hidden[row : row + item.num_tokens]),
                )
            if start + item.num_tokens == seq.num_tokens:
                sample_seqs.append(seq)
                sample_rows.append(row + item.num_tokens - 1)
            row += item.num_tokens
        rows = torch.tensor(sample_rows, dtype=torch.long, device=self.device)
        return StepOutput(sample_seqs, self.model.compute_logits(hidden[rows]), prompt_logits)

    def _prepare(self, batch: ScheduledBatch) -> _Inputs:
        bs = self.config.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        token_lora: list[int] = []
        prefills: list[PrefillSpan] = []
        decode_rows: list[int] = []
        decode_seqs: list[Sequence] = []
        for item in batch.items:
            seq, start, n = item.seq, item.seq.num_computed, item.num_tokens
            row = len(ids)
            ids.extend(seq.token_ids[start : start + n])
            span = range(start, start + n)
            positions.extend(span)
            slots.extend(seq.block_table[p // bs] * bs + p % bs for p in span)
            token_lora.extend([seq.adapter_slot if seq.adapter_id is not None else -1] * n)
            if n == 1:
                decode_rows.append(row)
                decode_seqs.append(seq)
            else:
                table = self._tensor(seq.block_table)
                prefills.append(PrefillSpan(row, row + n, start, table))
        decode = None
        if decode_seqs:
            width = max(len(s.block_table) for s in decode_seqs)
            tables = [s.block_table + [0] * (width - len(s.block_table)) for s in decode_seqs]
            decode = DecodeGroup(
                token_index=self._tensor(decode_rows),
                block_tables=self._tensor(tables),
                context_lens=self._tensor([s.num_computed + 1 for s in decode_seqs]),
            )
        lora = self._lora_step(token_lora) if any(slot >= 0 for slot in token_lora) else None
        return _Inputs(
            input_ids=self._tensor(ids),
            positions=self._tensor(positions),
            attention=AttentionMetadata(self._tensor(slots), tuple(prefills), decode),
            lora=lora,
        )

    def _lora_step(self, token_lora: list[int]) -> LoraStep:
        """Per projection group: rows whose adapter does not target the group are set to -1."""
        slots = self._tensor(token_lora)  # [T]
        has_slot = slots >= 0
        targets = self._slot_targets[:, slots.clamp(min=0)] & has_slot  # [G, T]
        groups = {}
        for g, group in enumerate(self._group_names):
            if bool(targets[g].any()):
                group_slots = torch.where(targets[g], slots, -1)
                groups[group] = LoraGroupStep(
                    group_slots, kernels.prepare_lora_batch(group_slots, self._slot_targets.shape[1])
                )
        return LoraStep(groups)

    def _tensor(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


@dataclass(frozen=True)
class _Inputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attention: AttentionMetadata
    lora: LoraStep | None
