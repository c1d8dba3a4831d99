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
from lorafleet.runtime.layers.lora_linear import LoraStep
from lorafleet.runtime.models.decoder import DecoderModel


@dataclass(frozen=True)
class StepOutput:
    """Logits of the rows the engine asked for, float32."""

    sample_seqs: list[Sequence]  # sequences whose next token is sampled this step
    sample_logits: torch.Tensor  # [len(sample_seqs), V]
    prompt_logits: dict[int, tuple[int, torch.Tensor]]  # seq_id -> (first position, [n, V])


class ModelRunner:
    def __init__(self, config: EngineConfig, model: DecoderModel) -> None:
        self.config = config
        self.model = model
        self.args = args = config.model
        self.device = config.device
        self.lora_backend = kernels.backend_for(config.device)  # resolved once, used by every layer
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
        self._num_slots = max(config.max_loaded_adapters, 1)
        self._group_names = model.lora_groups
        # Per slot: the projection groups its adapter targets (in any layer). Host-side, so building
        # a step's per-group slots costs no tensor op and no device sync.
        self._slot_groups: list[frozenset[str]] = [frozenset()] * self._num_slots
        # The previous step's per-group metadata by row slots: consecutive decode steps of the same
        # sequences have the same slots, so their metadata (and the index tensors the CPU path
        # derives from it) is built once, not every step. It depends on slot numbers only, never
        # on the weights in the slots, so it stays valid when a slot is given another adapter.
        self._lora_steps: dict[tuple[int, ...], kernels.LoraBatch] = {}

    def set_adapter(self, slot: int, weights: AdapterWeights) -> None:
        """Writes `weights` into `slot` of every layer's stacked buffers (clearing untargeted ones)."""
        for holder in self.model.lora_holders:
            holder.reset_lora(slot)
        sites = self.model.lora_sites
        for name, w in weights.modules.items():
            sites[name].set_lora(slot, w.lora_a.to(self.device), w.lora_b.to(self.device), w.scale)
        self._slot_groups[slot] = frozenset(sites[name].group for name in weights.modules)

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
            if item.samples:
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
        return _Inputs(
            input_ids=self._tensor(ids),
            positions=self._tensor(positions),
            attention=AttentionMetadata(self._tensor(slots), tuple(prefills), decode),
            lora=self._lora_step(token_lora),
        )

    def _lora_step(self, token_lora: list[int]) -> LoraStep | None:
        """Per projection group, each row's slot, or -1 where its adapter does not target the group.

        Groups whose rows come out the same (an adapter targeting every projection) share one
        `kernels.LoraBatch`, and so does the next step when its rows are the same (decode), so its
        metadata and the index tensors the CPU path derives from it are built once. None when no
        row uses an adapter.
        """
        if all(slot < 0 for slot in token_lora):
            return None
        previous = self._lora_steps
        shared: dict[tuple[int, ...], kernels.LoraBatch] = {}
        groups = {}
        for group in self._group_names:
            group_slots = tuple(
                slot if slot >= 0 and group in self._slot_groups[slot] else -1 for slot in token_lora
            )
            if all(slot < 0 for slot in group_slots):
                continue  # no row's adapter targets this group: its layers skip LoRA
            if group_slots not in shared:
                shared[group_slots] = previous.get(group_slots) or self._group_step(group_slots)
            groups[group] = shared[group_slots]
        self._lora_steps = shared
        return LoraStep(groups, self.lora_backend)

    def _group_step(self, group_slots: tuple[int, ...]) -> kernels.LoraBatch:
        slots = self._tensor(list(group_slots))  # [T]
        return kernels.prepare_lora_batch(slots, self._num_slots)

    def _tensor(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


@dataclass(frozen=True)
class _Inputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attention: AttentionMetadata
    lora: LoraStep | None
