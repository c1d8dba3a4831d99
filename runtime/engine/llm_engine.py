"""`Engine`: wires tokenizer, adapter store, scheduler, model runner and the loop that drives them.

Callers (the HTTP server, tests) prepare requests on their own threads (`prepare`: checks,
tokenizes and loads the adapter's weights into host memory, once per request, off the event
loop), then hand the prepared request to the loop (`stream`, `generate`). The loop's thread owns
the scheduler and the runner; the engine never touches them after construction, and reads the
counters the loop publishes (`stats`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from lorafleet.runtime.adapters import AdapterStore, AdapterVersion
from lorafleet.runtime.args import AdapterSource, EngineArgs
from lorafleet.runtime.distributed.launch import ShardGroup, start_shards
from lorafleet.runtime.distributed.runner import ShardedRunner
from lorafleet.runtime.engine import building, memory, setup, warmup
from lorafleet.runtime.engine.adapter_service import AdapterListing, AdapterReader, EngineAdapters
from lorafleet.runtime.engine.build_thread import on_build_thread
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.delivery import DeliveryRegistry
from lorafleet.runtime.engine.loop import EngineLoop
from lorafleet.runtime.engine.model_runner import ModelRunner
from lorafleet.runtime.engine.output import RequestOutput
from lorafleet.runtime.engine.scheduler import Scheduler, SchedulerConfig
from lorafleet.runtime.engine.sequence import Sequence as Seq
from lorafleet.runtime.engine.validation import prepare_request
from lorafleet.runtime.errors import EngineError, GenerationError
from lorafleet.runtime.models.args import LoraCapacity, ModelArgs
from lorafleet.runtime.models.decoder import DecoderModel
from lorafleet.runtime.models.loader import read_config
from lorafleet.runtime.tokenizer import Tokenizer
from lorafleet.runtime.types import GenerationRequest, GenerationResult, PreparedRequest, TokenEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    architecture: str  # config.json's, e.g. "Qwen3ForCausalLM"
    model_sha: str | None
    dtype: str
    device: str
    max_input_tokens: int
    max_total_tokens: int
    max_batch_prefill_tokens: int
    max_batch_total_tokens: int
    block_size: int
    num_kv_blocks: int
    max_loaded_adapters: int
    eos_token_id: int | None
    memory: memory.MemorySplit  # of one shard when sharded
    num_shard: int = 1  # processes (devices) the model is split over


@dataclass(frozen=True)
class EngineStats:
    queue_size: int
    batch_size: int
    num_free_blocks: int
    adapter_loads: int
    adapter_evictions: int
    generated_tokens: int
    adapter_bytes_used: int = 0  # device bytes the resident adapters occupy (their real size)
    preemptions: int = 0  # cumulative: sequences sent back to recompute when the KV pool ran out
    prefix_cache_query_tokens: int = 0  # cumulative: prompt tokens looked up in the prefix cache
    prefix_cache_hit_tokens: int = 0  # cumulative: of which found cached (not recomputed)


class Engine:
    """Serves a base model and any number of LoRA adapters with continuous batching.

    Example:
        >>> engine = Engine.from_pretrained("/models/mistral", adapters={"sql": "/adapters/sql"})
        >>> with engine:
        ...     [result] = engine.generate([GenerationRequest("SELECT", adapter_id="sql")])
    """

    def __init__(
        self,
        config: EngineConfig,
        model: DecoderModel,
        tokenizer: Tokenizer,
        shards: ShardGroup | None = None,
    ) -> None:
        self.config = config
        self.shards = shards
        # Why the engine can no longer serve (a shard died); the server reports 503 and exits.
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        self.tokenizer = tokenizer
        page_bytes = dict(config.adapter_page_bytes)
        reader = AdapterReader(config, model.lora_sites, frozenset(page_bytes))
        store = AdapterStore(reader, config.adapter_host_bytes)
        scheduler = Scheduler(
            SchedulerConfig(
                num_kv_blocks=config.num_kv_blocks,
                block_size=config.block_size,
                max_batch_prefill_tokens=config.max_batch_prefill_tokens,
                max_batch_size=config.max_batch_size,
                num_adapter_slots=config.max_loaded_adapters,
                enable_prefix_caching=config.args.prefix_caching,
                adapter_pages=tuple((group, config.adapter_pages) for group in page_bytes),
                adapter_page_bytes=config.adapter_page_bytes,
            )
        )
        runner = ModelRunner(config, model) if shards is None else ShardedRunner(config, model)
        self.loop = EngineLoop(scheduler, runner, store)
        self.adapters = EngineAdapters(config, store, self.loop)
        self.memory = memory.memory_split(model, list(model.lora_holders), runner.kv_cache,
                                          reserve=config.memory_reserve)
        self._seq_ids = itertools.count()
        self._deliveries = DeliveryRegistry()  # stream events reach each event loop in batches
        if shards is not None:
            shards.watch(self._shard_died)

    def _shard_died(self, reason: str) -> None:
        self.failure = reason
        if self.on_failure is not None:
            self.on_failure(reason)

    @classmethod
    def from_args(cls, args: EngineArgs, progress: Callable[[str], None] | None = None) -> Engine:
        """Loads the checkpoint `args.model_id` (local folder or Hub id), preloads and pins `args.adapters`.

        May be called from any thread; the caller waits while the engine is built on a thread of
        its own that then exits (`build_thread.py`), so that on the CPU the only OpenMP worker pool
        left in the process is the engine loop's. Any other live thread that runs torch work
        creates a second pool, which turns the workers' busy-waiting off (docs/runtime.md, "CPU
        threads"); `OMP_NUM_THREADS` / `OMP_WAIT_POLICY` in the environment choose for a host.
        """
        return on_build_thread(lambda: cls._from_args(args, progress))

    @classmethod
    def _from_args(cls, args: EngineArgs, progress: Callable[[str], None] | None) -> Engine:
        say = progress or (lambda message: logger.info("%s", message))
        setup.check_args(args)
        model_dir, sha = setup.resolve_model_dir(args.model_id, args.revision)
        say(f"model files in {model_dir}")
        raw_config, model_args = read_config(model_dir)
        device = setup.resolve_device(args.device)
        dtype = setup.resolve_dtype(args.dtype, device)
        lora = LoraCapacity(args.max_loaded_adapters, args.max_lora_rank)
        num_shard = setup.resolve_num_shard(args, device)
        shards = start_shards(num_shard, model_dir, model_args, dtype, device, lora)
        if shards is not None:
            say(f"sharded over {shards.world} processes ({', '.join(shards.devices)})")
        try:
            return cls._build(args, say, (model_dir, sha, raw_config, model_args), dtype, device, shards)
        except BaseException:
            if shards is not None:
                shards.abort()
            raise

    @classmethod
    def _build(
        cls,
        args: EngineArgs,
        say: Callable[[str], None],
        checkpoint: tuple[Path, str | None, dict[str, Any], ModelArgs],
        dtype: torch.dtype,
        device: torch.device,
        shards: ShardGroup | None,
    ) -> Engine:
        config, model, tokenizer = building.load_parts(args, say, checkpoint, dtype, device, shards)
        num_pages = config.adapter_pages
        engine = cls(config, model, tokenizer, shards)
        say(f"KV pool: {config.num_kv_blocks} blocks x {config.block_size} tokens")
        say(f"adapter memory: {num_pages} pages per projection group, {config.adapter_bytes} bytes")
        if device.type == "cuda":  # before the adapters: warm-up borrows a slot and empty pages
            warmup.warm_up(engine.loop.runner)
            say(f"warmed up{'; decode CUDA graphs captured' if config.cuda_graphs else ''}")
        for adapter in args.adapters:
            say(f"loading adapter {adapter.adapter_id} from {adapter.source}")
            engine.adapters.pin(adapter.adapter_id, adapter.source, adapter.revision)
        return engine

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike[str],
        *,
        adapters: dict[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
        **options: Any,
    ) -> Engine:
        """`from_args` with `EngineArgs(model_id, adapters=..., **options)`; adapters map id -> source."""
        sources = tuple(AdapterSource(name, str(source)) for name, source in (adapters or {}).items())
        return cls.from_args(EngineArgs(str(model_id), adapters=sources, **options), progress)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the background loop (idempotent)."""
        self.loop.start()

    def shutdown(self) -> None:
        """Stops the loop (and the shards' workers); requests still running fail with `GenerationError`."""
        self.loop.stop()
        if self.shards is not None:
            runner = self.loop.runner
            assert isinstance(runner, ShardedRunner)
            if self.failure is None:
                runner.close()
            self.shards.close()

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- public API --------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        c = self.config
        return EngineInfo(
            model_id=c.model_id,
            architecture=c.model.architecture,
            model_sha=c.model_sha,
            dtype=str(c.dtype).removeprefix("torch."),
            device=str(c.device),
            max_input_tokens=c.max_input_tokens,
            max_total_tokens=c.max_total_tokens,
            max_batch_prefill_tokens=c.max_batch_prefill_tokens,
            max_batch_total_tokens=c.max_batch_total_tokens,
            block_size=c.block_size,
            num_kv_blocks=c.num_kv_blocks,
            max_loaded_adapters=c.max_loaded_adapters,
            eos_token_id=self.tokenizer.eos_token_id,
            memory=self.memory,
            num_shard=self.shards.world if self.shards is not None else 1,
        )

    def loaded_adapters(self) -> list[str]:
        """Names of the adapters in device memory now, least recently used first."""
        names = [key.rpartition("@")[0] for key in self.loop.snapshot.scheduler.loaded_adapters]
        return list(dict.fromkeys(names))

    def list_adapters(self) -> list[AdapterListing]:
        """Every adapter requests may name whose version is known, with its digest and residency."""
        return self.adapters.listing()

    def load_adapter(self, name: str, source: str, revision: str | None = None) -> AdapterVersion:
        """Serves `name` from `source` (a local folder or a Hub repo id, the operator's choice) from
        the next request on, replacing its previous version if the files differ; reads and
        validates it now (raising `AdapterLoadError`). Call it off the event loop."""
        return self.adapters.load(name, source, revision)

    def unload_adapter(self, name: str) -> AdapterVersion | None:
        """Stops serving `name` (requests naming it are refused); running ones finish. Returns its
        version, or None when `name` was not served."""
        return self.adapters.unload(name)

    def stats(self) -> EngineStats:
        snapshot = self.loop.snapshot
        counters = snapshot.scheduler
        return EngineStats(
            queue_size=counters.num_waiting + self.loop.num_queued,
            batch_size=counters.num_running,
            num_free_blocks=counters.num_free_blocks,
            adapter_loads=counters.adapter_loads,
            adapter_evictions=counters.adapter_evictions,
            generated_tokens=snapshot.generated_tokens,
            adapter_bytes_used=counters.adapter_bytes_used,
            preemptions=counters.num_preemptions,
            prefix_cache_query_tokens=counters.prefix_cache_query_tokens,
            prefix_cache_hit_tokens=counters.prefix_cache_hit_tokens,
        )

    def register_adapter(self, adapter_id: str, source: str, revision: str | None = None) -> None:
        """Lets requests name `adapter_id`: its weights come from `source` (a local folder or a Hub
        repo id, the operator's choice), read on first use (unlike `load_adapter`, which reads it
        now, and `adapters=` of `from_args`, which are also pinned). Safe while the engine runs."""
        self.adapters.register(adapter_id, source, revision)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Checks and tokenizes `request` once and loads its adapter into host memory.

        Call it off the event loop (it may read the adapter from disk or the Hub). Raises
        `EngineValidationError` (or `AdapterLoadError`) for a request the engine would refuse,
        including an `adapter_id` that is neither registered nor an allowed Hub repo id
        (`adapters.policy`): that check comes first, before any file is read.
        """
        version = self.adapters.resolve(request.adapter_id) if request.adapter_id is not None else None
        prepared = prepare_request(request, self.config, self.tokenizer)
        if version is None:
            return prepared
        return replace(
            prepared, adapter_digest=version.digest, adapter_key=version.key, adapter_ranks=version.ranks
        )

    def generate(self, requests: Sequence[GenerationRequest | PreparedRequest]) -> list[GenerationResult]:
        """Runs `requests` together and blocks until all finish; validation errors raise before any runs."""
        prepared = [r if isinstance(r, PreparedRequest) else self.prepare(r) for r in requests]
        sinks = [_BlockingSink() for _ in prepared]
        seqs = [self._sequence(p, sink) for p, sink in zip(prepared, sinks, strict=True)]
        for seq in seqs:
            self.loop.submit(seq)
        return [sink.wait() for sink in sinks]

    async def stream(self, request: PreparedRequest | GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Yields one `TokenEvent` per token; closing the iterator early cancels the request.

        Pass a `PreparedRequest` from an event loop (preparing may read files); a plain
        `GenerationRequest` is prepared here, on the caller's thread.
        """
        prepared = request if isinstance(request, PreparedRequest) else self.prepare(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        seq = self._sequence(prepared, self._deliveries.for_loop(loop).sink(events.put_nowait))
        self.loop.submit(seq)
        finished = False
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    finished = True
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.loop.abort(seq)

    # --- request intake ----------------------------------------------------------------------

    def _sequence(self, prepared: PreparedRequest, sink: Callable[[Any], None]) -> Seq:
        """The loop's state for one prepared request (builds, checks nothing)."""
        if not self.loop.is_running:
            raise EngineError("the engine is not running; call start() or use it as a context manager")
        generator = None
        if prepared.seed is not None:
            generator = torch.Generator(device=self.config.device)
            generator.manual_seed(prepared.seed)
        seq = Seq(
            seq_id=next(self._seq_ids),
            token_ids=list(prepared.prompt_ids),
            num_prompt_tokens=len(prepared.prompt_ids),
            max_new_tokens=prepared.max_new_tokens,
            params=prepared.request.params,
            adapter_id=prepared.adapter_key,
            adapter_ranks=prepared.adapter_ranks,
            generator=generator,
        )
        seq.output = RequestOutput(prepared, self.tokenizer, self.config.eos_token_ids, sink)
        if not prepared.request.decoder_input_details:  # prompt log-probs need every prompt token run
            seq.cache_identity = (prepared.adapter_digest or "base").encode()
        return seq


class _BlockingSink:
    """Collects one request's events for `generate` and wakes the caller at the end."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    def __call__(self, item: TokenEvent | BaseException) -> None:
        if isinstance(item, BaseException):
            self._error = item
            self._done.set()
        elif item.result is not None:
            self._result = item.result
            self._done.set()

    def wait(self) -> GenerationResult:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


__all__ = ["Engine", "EngineInfo", "EngineStats", "GenerationError"]
