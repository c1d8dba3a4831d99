"""Runs the model on a scheduled batch. The only owner of the model, its LoRA buffers and the KV pool.

The KV pool is one preallocated tensor [num_layers, 2, num_blocks + 1, block_size, KVH, D]; the
block manager decides which blocks a sequence uses, this class turns that into slot mappings,
block tables and per-token adapter slots for one flat batch of tokens. The last block is the
null block: the block manager never hands it out; padded rows (CUDA graphs, warm-up and profiling
batches) write their keys/values there.

Two ways to attend: on CUDA (`kernel_attention`) through the paged kernels, with the step's
metadata built by `kernel_inputs.py` and decode-only steps replayed from CUDA graphs
(`graph_runner.py`) once `enable_decode_graphs` has captured them; elsewhere the CPU path of
`layers/attention.py`. Logits are computed for the sampled rows only; prompt log-probs come from
the prompt rows' hidden states, in bounded chunks (`PromptRows`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from lorafleet import kernels
from lorafleet.runtime.adapters.loader import AdapterWeights
from lorafleet.runtime.adapters.residency import Residence
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.graph_runner import DecodeGraphs, DecodeRow, StaticBatch, batch_buckets
from lorafleet.runtime.engine.kernel_inputs import build_kernel_inputs, decode_first
from lorafleet.runtime.engine.page_tables import PageTables
from lorafleet.runtime.engine.scheduler import ScheduledBatch, ScheduledSeq
from lorafleet.runtime.engine.sequence import Sequence
from lorafleet.runtime.engine.staging import HostStaging
from lorafleet.runtime.layers.attention import AttentionMetadata, DecodeGroup, PrefillSpan
from lorafleet.runtime.layers.attention_cuda import (
    AttentionShape,
    KernelAttention,
    decode_config,
    kernels_for,
)
from lorafleet.runtime.layers.lora_linear import LoraStep
from lorafleet.runtime.layers.moe import ExpertsLinear
from lorafleet.runtime.models.decoder import DecoderModel

LOGITS_CHUNK_ELEMENTS = 1 << 24  # prompt logits are computed this many at a time (64 MiB in fp32)


@dataclass(frozen=True)
class AdapterWrite:
    """An adapter's weights written into its pages: its rank per group, and (CUDA) when done."""

    ranks: dict[str, int]
    event: torch.cuda.Event | None


@dataclass(frozen=True)
class PromptRows:
    """The final hidden states of one sequence's prompt rows this step (positions start..);
    logits on demand, never more than `LOGITS_CHUNK_ELEMENTS` of them at once."""

    hidden: torch.Tensor  # [n, hidden]
    model: DecoderModel

    @torch.inference_mode()
    def logits(self) -> torch.Tensor:  # [n, V] float32, whole (tests compare them with the oracle)
        return self.model.compute_logits(self.hidden)

    @torch.inference_mode()
    def logprobs(self, targets: list[int]) -> list[float]:
        """Log-prob of `targets[j]` under row j's distribution (len(targets) <= n), one host read."""
        vocab = self.model.args.vocab_size
        step = max(1, LOGITS_CHUNK_ELEMENTS // vocab)
        wanted = torch.tensor(targets, dtype=torch.long).to(self.hidden.device, non_blocking=True)
        pieces = []
        for lo in range(0, len(targets), step):
            logits = self.model.compute_logits(self.hidden[lo : lo + step][: len(targets) - lo])
            logprobs = torch.log_softmax(logits, dim=-1)
            pieces.append(logprobs.gather(1, wanted[lo : lo + logits.shape[0], None]).squeeze(1))
        return torch.cat(pieces).tolist() if pieces else []


@dataclass(frozen=True)
class StepOutput:
    """Logits of the rows the engine asked for, float32."""

    sample_seqs: list[Sequence]  # sequences whose next token is sampled this step
    sample_logits: torch.Tensor  # [len(sample_seqs), V]
    prompt_logits: dict[int, tuple[int, PromptRows]]  # seq_id -> (first position, its rows)


class ModelRunner:
    def __init__(self, config: EngineConfig, model: DecoderModel) -> None:
        self.config = config
        self.model = model
        self.args = args = model.args  # a shard's own heads when sharded (config.model: the whole)
        self.device = config.device
        self.lora_backend = kernels.backend_for(config.device)  # resolved once, used by every layer
        self.null_block = config.num_kv_blocks  # one block past the block manager's
        self.kv_cache = torch.zeros(  # [layers, 2, blocks + 1, block_size, KVH, D]
            args.num_layers,
            2,
            config.num_kv_blocks + 1,
            config.block_size,
            args.num_kv_heads,
            args.head_dim,
            dtype=config.dtype,
            device=config.device,
        )
        self._num_slots = max(config.max_loaded_adapters, 1)
        self._group_names = model.lora_groups
        experts = [h for h in model.lora_holders if isinstance(h, ExpertsLinear)]
        self.page_tables = PageTables(self._group_names, self._num_slots,
                                      kernels.pages_for_rank(config.max_lora_rank), self.device,
                                      experts[0] if experts else None)
        self._experts = experts
        # The previous step's metadata by row slots: consecutive decode steps of the same
        # sequences have the same slots, so their metadata (and the index tensors the CPU path
        # derives from it) is built once, not every step. It depends on slot numbers only, never
        # on the weights in the slots, so it stays valid when a slot is given another adapter.
        self._lora_meta: tuple[tuple[int, ...], kernels.LoraBatch] | None = None
        # The paged kernels' path: CUDA; tests set it on a CPU to run it through the kernels' torch path.
        self.kernel_attention = self.device.type == "cuda"
        self.attention_shape = AttentionShape(args.num_heads, args.num_kv_heads, args.head_dim,
                                              config.block_size, config.dtype, self.device)
        self.staging = HostStaging(self.device)
        self.graphs: DecodeGraphs | None = None
        self.max_blocks_per_seq = -(-config.max_total_tokens // config.block_size)

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
        self.page_tables.assign(residence.slot, residence.pages, written.ranks)

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
        plan = self.model.shard_plan
        for name, w in weights.modules.items():
            site = sites[name]
            pages = residence.pages.get(site.group, ())
            lora_a, lora_b = w.lora_a, w.lora_b
            if plan is not None:  # a shard: its slices of A or B (docs/kernels.md)
                lora_a, lora_b = plan.cut_lora(name, lora_a, lora_b)
            site.write(slot, pages, lora_a.to(self.device), lora_b.to(self.device), w.scale)
            ranks[site.group] = max(ranks[site.group], w.lora_a.shape[0])
        return ranks

    def clear_slots(self, slots: list[int]) -> None:
        """Empties vacated slots' page-table rows (their pages may go to another adapter)."""
        self.page_tables.clear(slots)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, wants_prompt_logits: set[int]) -> StepOutput:
        """Runs one step; `wants_prompt_logits` holds seq ids whose prompt-token log-probs are needed."""
        # The kernels' path puts decode rows first; the CPU path groups rows by adapter slot (the
        # base last), so each adapter's rows are one range of the flat batch, which the LoRA
        # kernels' CPU path reads and writes in place.
        items = decode_first(batch.items) if self.kernel_attention else sorted(batch.items, key=_slot_order)
        sample_seqs, sample_rows, prompt_spans, token_lora = [], [], {}, []
        row = 0
        for item in items:
            seq, start, n = item.seq, item.seq.num_computed, item.num_tokens
            if seq.seq_id in wants_prompt_logits and start < seq.num_prompt_tokens:
                prompt_spans[seq.seq_id] = (start, row, n)
            if item.samples:
                sample_seqs.append(seq)
                sample_rows.append(row + n - 1)
            token_lora.extend([seq.adapter_slot if seq.adapter_id is not None else -1] * n)
            row += n
        if not prompt_spans and self._fits_graphs(items):
            hidden = self._replay(items, token_lora)
            rows: torch.Tensor | slice = (
                slice(None) if len(sample_rows) == len(items) else self._tensor(sample_rows)
            )
        elif self.kernel_attention:
            inputs = build_kernel_inputs(
                items, token_lora, sample_rows, block_size=self.config.block_size,
                null_block=self.null_block, staging=self.staging, shape=self.attention_shape,
                kernels=kernels_for(self.device),
            )
            lora = self._lora_step(token_lora, inputs.token_lora)
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_cache, inputs.attention, lora)
            rows = inputs.sample_rows
        else:
            cpu = self._prepare(items, token_lora)
            hidden = self.model(cpu.input_ids, cpu.positions, self.kv_cache, cpu.attention, cpu.lora)
            rows = self._tensor(sample_rows)
        prompt_logits = {
            seq_id: (start, PromptRows(hidden[first : first + n], self.model))
            for seq_id, (start, first, n) in prompt_spans.items()
        }
        return StepOutput(sample_seqs, self.model.compute_logits(hidden[rows]), prompt_logits)

    # --- CUDA graphs (decode) -----------------------------------------------------------------

    def enable_decode_graphs(self, *, capture: bool) -> DecodeGraphs:
        """Decode-only steps from now on run from static buffers, replayed from CUDA graphs
        captured here (`capture`), or run eagerly from the same buffers (tests on a CPU)."""
        assert self.kernel_attention, "decode graphs run the paged kernels' path"
        graphs = DecodeGraphs(
            self._static_forward, buckets=batch_buckets(self.config.max_batch_size),
            max_blocks=self.max_blocks_per_seq, block_size=self.config.block_size,
            null_block=self.null_block, device=self.device, capture=capture,
            lora_variants=(False, True) if self.config.max_loaded_adapters else (False,),
        )
        if capture:
            graphs.capture_all()
        self.graphs = graphs
        return graphs

    def _fits_graphs(self, items: list[ScheduledSeq]) -> bool:
        graphs = self.graphs
        return (
            graphs is not None
            and len(items) <= graphs.max_batch
            and all(item.num_tokens == 1 and len(item.seq.block_table) <= graphs.max_blocks for item in items)
        )

    def _replay(self, items: list[ScheduledSeq], token_lora: list[int]) -> torch.Tensor:
        assert self.graphs is not None
        bs = self.config.block_size
        rows = []
        for item, adapter_slot in zip(items, token_lora, strict=True):
            seq, position = item.seq, item.seq.num_computed
            table = seq.block_table
            slot = table[position // bs] * bs + position % bs
            rows.append(DecodeRow(seq.token_ids[position], position, slot, adapter_slot, table))
        return self.graphs.run(rows, with_lora=any(s >= 0 for s in token_lora))

    def _static_forward(self, static: StaticBatch, with_lora: bool) -> torch.Tensor:  # [b, hidden]
        """The forward a decode graph records: everything derived from the static buffers."""
        b = static.input_ids.shape[0]
        attention_kernels = kernels_for(self.device)
        config = decode_config(self.attention_shape, b, self.max_blocks_per_seq)
        kernel = KernelAttention(attention_kernels, b, static.block_tables, static.context_lens,
                                 config if attention_kernels.name == "triton" else None, None)
        lora = None
        if with_lora:  # tiles computed in the graph from the slots; page tables updated in place
            meta = kernels.prepare_lora_batch(static.token_lora, self._num_slots, validate=False)
            lora = LoraStep(dict.fromkeys(self._group_names, meta), dict(self.page_tables.pages),
                            self.lora_backend)
        meta_attention = AttentionMetadata(static.slot_mapping, (), None, kernel)
        return self.model(static.input_ids, static.positions, self.kv_cache, meta_attention, lora)

    # --- the CPU path ---------------------------------------------------------------------------

    def _prepare(self, items: list[ScheduledSeq], token_lora: list[int]) -> _Inputs:
        bs = self.config.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
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

    def _lora_step(self, token_lora: list[int], device_slots: torch.Tensor | None = None) -> LoraStep | None:
        """The rows' slots and the groups their adapters target; None when no row uses an adapter.

        One `kernels.LoraBatch` serves every group (a slot whose adapter does not target a group
        has rank 0 there, which the kernels leave untouched), and the next step reuses it when
        its rows are the same (decode). A group no row's adapter targets is left out: its
        layers skip LoRA entirely. On CUDA the slots' range check is skipped (it would wait for
        the device): the scheduler's slots are in range by construction.
        """
        if all(slot < 0 for slot in token_lora):
            return None
        slots = tuple(token_lora)
        if self._lora_meta is None or self._lora_meta[0] != slots:
            on_device = device_slots if device_slots is not None else self._tensor(token_lora)
            meta = kernels.prepare_lora_batch(on_device, self._num_slots, validate=self.device.type != "cuda")
            self._lora_meta = (slots, meta)
        meta = self._lora_meta[1]
        active = {slot for slot in slots if slot >= 0}
        groups = {
            group: meta
            for group in self._group_names
            if any(self.page_tables.targets(group, slot) for slot in active)
        }
        return LoraStep(groups, dict(self.page_tables.pages), self.lora_backend)

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
