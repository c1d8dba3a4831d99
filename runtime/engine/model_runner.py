"""Runs the model on a scheduled batch. The only owner of the model, its LoRA buffers and the KV pool.

The KV pool is one preallocated tensor [num_layers, 2, num_blocks, block_size, KVH, D]; the
block manager decides which blocks a sequence uses, this class turns that into slot mappings,
block tables and per-token adapter slots for one flat batch of tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from lorafleet import kernels
from lorafleet.runtime.adapters.loader import AdapterWeights
from lorafleet.runtime.adapters.residency import Residence
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.scheduler import ScheduledBatch, ScheduledSeq
from lorafleet.runtime.engine.sequence import Sequence
from lorafleet.runtime.layers.attention import AttentionMetadata, DecodeGroup, PrefillSpan
from lorafleet.runtime.layers.lora_linear import LoraStep
from lorafleet.runtime.layers.moe import EXPERTS_GROUP, ExpertsLinear
from lorafleet.runtime.models.decoder import DecoderModel


@dataclass(frozen=True)
class AdapterWrite:
    """An adapter's weights written into its pages: its rank per group, and (CUDA) when done."""

    ranks: dict[str, int]
    event: torch.cuda.Event | None


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
        # Per group and slot: its pages and rank there (0: the slot's adapter does not target the
        # group, or the slot is empty). Host-side, so a step's LoRA set-up costs no device read.
        self._max_pages = kernels.pages_for_rank(config.max_lora_rank)
        self._slot_pages = {g: [()] * self._num_slots for g in self._group_names}
        self._slot_ranks = {g: [0] * self._num_slots for g in self._group_names}
        self._experts = [h for h in model.lora_holders if isinstance(h, ExpertsLinear)]
        self._pages = {g: self._build_pages(g) for g in self._group_names}
        # The previous step's metadata by row slots: consecutive decode steps of the same
        # sequences have the same slots, so their metadata (and the index tensors the CPU path
        # derives from it) is built once, not every step. It depends on slot numbers only, never
        # on the weights in the slots, so it stays valid when a slot is given another adapter.
        self._lora_meta: tuple[tuple[int, ...], kernels.LoraBatch] | None = None

    def write_adapter(self, residence: Residence, weights: AdapterWeights) -> None:
        """Writes `weights` into the residence and points the slot's page-table rows there."""
        self.activate(residence, self.write_pages(residence, weights))

    def write_pages(self, residence: Residence, weights: AdapterWeights) -> AdapterWrite:
        """Writes `weights` into the residence's slot and pages of every layer, and returns the
        slot's rank per group for `activate`.

        Safe on the adapter loader's thread while steps run: the residence's pages and slot belong
        to no row of any step until `activate` (on the loop's thread) points the tables there. On
        CUDA the copies go on a stream of their own; `activate` makes the step's stream wait for them.
        """
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            ranks = self._write_pages(residence, weights)
            event = torch.cuda.Event() if stream is not None else None
            if event is not None:
                event.record(stream)
        return AdapterWrite(ranks, event)

    def activate(self, residence: Residence, written: AdapterWrite) -> None:
        """Points the slot's rows of every group's page table at the residence (loop thread only)."""
        if written.event is not None:
            torch.cuda.current_stream(self.device).wait_event(written.event)
        slot = residence.slot
        for group in self._group_names:
            self._slot_pages[group][slot] = residence.pages.get(group, ())
            self._slot_ranks[group][slot] = written.ranks[group]
            self._pages[group] = self._build_pages(group)

    def _write_pages(self, residence: Residence, weights: AdapterWeights) -> dict[str, int]:
        slot = residence.slot
        for holder in self.model.paged_holders:
            holder.clear(slot, residence.pages.get(holder.group, ()))
        for experts in self._experts:
            for expert in range(experts.num_experts):
                composite = experts.composite_slot(expert, slot)
                experts.clear(composite, (composite,))
        sites = self.model.lora_sites
        ranks = dict.fromkeys(self._group_names, 0)
        for name, w in weights.modules.items():
            site = sites[name]
            pages = residence.pages.get(site.group, ())
            site.write(slot, pages, w.lora_a.to(self.device), w.lora_b.to(self.device), w.scale)
            ranks[site.group] = max(ranks[site.group], w.lora_a.shape[0])
        return ranks

    def clear_slots(self, slots: list[int]) -> None:
        """Empties vacated slots' page-table rows (their pages may go to another adapter)."""
        if not slots:
            return
        for group in self._group_names:
            for slot in slots:
                self._slot_pages[group][slot] = ()
                self._slot_ranks[group][slot] = 0
            self._pages[group] = self._build_pages(group)

    def _build_pages(self, group: str) -> kernels.AdapterPages:
        ranks = self._slot_ranks[group]
        if group == EXPERTS_GROUP and self._experts:  # one fixed page per expert and slot
            experts = self._experts[0]
            count = experts.num_experts * self._num_slots
            composite_ranks = [ranks[c % self._num_slots] for c in range(count)]
            return kernels.build_adapter_pages(
                [[c] if rank else [] for c, rank in enumerate(composite_ranks)], composite_ranks,
                max_pages=1, page_rank=experts.page_rank, device=self.device,
            )
        return kernels.build_adapter_pages(
            self._slot_pages[group], ranks, max_pages=self._max_pages, device=self.device
        )

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, wants_prompt_logits: set[int]) -> StepOutput:
        """Runs one step; `wants_prompt_logits` holds seq ids whose prompt-token log-probs are needed."""
        # Rows grouped by adapter slot (the base last): each adapter's rows are then one range of
        # the flat batch, which the LoRA kernels' CPU path reads and writes in place.
        items = sorted(batch.items, key=_slot_order)
        inputs = self._prepare(items)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_cache, inputs.attention, inputs.lora)
        sample_seqs, sample_rows, prompt_logits = [], [], {}
        row = 0
        for item in items:
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

    def _prepare(self, items: list[ScheduledSeq]) -> _Inputs:
        bs = self.config.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        token_lora: list[int] = []
        prefills: list[PrefillSpan] = []
        decode_rows: list[int] = []
        decode_seqs: list[Sequence] = []
        for item in items:
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
        """The rows' slots and the groups their adapters target; None when no row uses an adapter.

        One `kernels.LoraBatch` serves every group (a slot whose adapter does not target a group
        has rank 0 there, which the kernels leave untouched), and the next step reuses it when
        its rows are the same (decode). A group no row's adapter targets is left out: its
        layers skip LoRA entirely.
        """
        if all(slot < 0 for slot in token_lora):
            return None
        slots = tuple(token_lora)
        if self._lora_meta is None or self._lora_meta[0] != slots:
            self._lora_meta = (slots, kernels.prepare_lora_batch(self._tensor(token_lora), self._num_slots))
        meta = self._lora_meta[1]
        active = {slot for slot in slots if slot >= 0}
        groups = {
            group: meta
            for group in self._group_names
            if any(self._slot_ranks[group][slot] for slot in active)
        }
        return LoraStep(groups, dict(self._pages), self.lora_backend)

    def _tensor(self, values: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


def _slot_order(item: ScheduledSeq) -> int:
    return item.seq.adapter_slot if item.seq.adapter_id is not None else 1 << 30


@dataclass(frozen=True)
class _Inputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attention: AttentionMetadata
    lora: LoraStep | None
