"""`Engine`: wires tokenizer, scheduler, model runner and adapters around one background loop.

Callers (the HTTP server, tests) talk to the loop through a queue of commands; only the loop
thread touches the model, the KV cache, the adapter slots and the scheduler's queues.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import random
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lorafleet.runtime.adapters import AdapterSlots, AdapterStore, load_adapter, resolve_adapter_dir
from lorafleet.runtime.adapters.loader import AdapterWeights
from lorafleet.runtime.engine import setup
from lorafleet.runtime.engine.block_manager import BlockManager
from lorafleet.runtime.engine.config import EngineConfig
from lorafleet.runtime.engine.delivery import DeliveryRegistry
from lorafleet.runtime.engine.loop import run_loop
from lorafleet.runtime.engine.model_runner import ModelRunner, kv_bytes_per_block
from lorafleet.runtime.engine.output import RequestOutput
from lorafleet.runtime.engine.scheduler import Scheduler, SchedulerConfig
from lorafleet.runtime.engine.sequence import Sequence as Seq
from lorafleet.runtime.engine.types import (
    AdapterLoadError,
    EngineError,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    TokenEvent,
)
from lorafleet.runtime.engine.validation import validate_request
from lorafleet.runtime.layers.sampler import is_greedy
from lorafleet.runtime.models.decoder import DecoderModel, LoraCapacity, ModelArgs
from lorafleet.runtime.models.loader import load_model, read_config
from lorafleet.runtime.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
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


@dataclass(frozen=True)
class EngineStats:
    queue_size: int
    batch_size: int
    num_free_blocks: int
    adapter_loads: int
    adapter_evictions: int
    generated_tokens: int
    preemptions: int = 0  # cumulative: sequences sent back to recompute when the KV pool ran out


class Engine:
    """Serves a base model and any number of LoRA adapters with continuous batching.

    Example:
        >>> engine = Engine.from_pretrained("/models/mistral", adapters={"sql": "/adapters/sql"})
        >>> with engine:
        ...     [result] = engine.generate([GenerationRequest("SELECT", adapter_id="sql")])
    """

    def __init__(
        self, config: EngineConfig, model: DecoderModel, args: ModelArgs, tokenizer: Tokenizer
    ) -> None:
        self.config = config
        self.args = args
        self.tokenizer = tokenizer
        self.store = AdapterStore(self._load_adapter_weights, config.max_cpu_adapters)
        self.adapter_slots = AdapterSlots(config.max_loaded_adapters)
        self.block_manager = BlockManager(config.num_kv_blocks, config.block_size)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_batch_prefill_tokens, config.max_batch_size),
            self.block_manager,
            self.adapter_slots,
        )
        self.runner = ModelRunner(config, model, args)
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.eos_token_ids = frozenset(eos | _config_eos(config))
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._seq_ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._generated_tokens = 0
        self._deliveries = DeliveryRegistry()  # stream events reach each event loop in batches
        # (waiting, running, free KV blocks): written by the loop thread after every change,
        # read by `stats()` from any thread
        self._snapshot = (0, 0, config.num_kv_blocks)

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | os.PathLike[str],
        *,
        adapters: Mapping[str, str] | None = None,
        revision: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        max_input_tokens: int | None = None,
        max_total_tokens: int | None = None,
        max_batch_prefill_tokens: int | None = None,
        max_batch_total_tokens: int | None = None,
        max_loaded_adapters: int = 8,
        block_size: int = 16,
        num_kv_blocks: int | None = None,
        progress: Callable[[str], None] | None = None,
        max_lora_rank: int = 64,
        max_batch_size: int = 256,
    ) -> Engine:
        """Loads a Hugging Face checkpoint (local folder or Hub id) and preloads and pins `adapters`.

        May be called from any thread; the model runs on the engine's own loop thread. On the CPU
        the loop's speed still depends on the process's threads: torch's OpenMP (libgomp) keeps a
        worker pool per thread that ran torch work, and its workers only busy-wait while those
        pools do not outnumber the CPUs. Building on a helper thread that then exits (its pool
        freed) gives spinning workers: fastest on an idle host, several times slower on a host
        shared with other jobs. Any other live thread that ran torch work turns spinning off.
        Set `OMP_NUM_THREADS` / `OMP_WAIT_POLICY` in the environment to choose (docs/runtime.md,
        "CPU threads").
        """
        say = progress or (lambda message: logger.info("%s", message))
        model_dir, sha = setup.resolve_model_dir(model_id, revision)
        say(f"model files in {model_dir}")
        _, args = read_config(model_dir)
        torch_device = setup.resolve_device(device)
        torch_dtype = setup.resolve_dtype(dtype, torch_device)
        adapters = dict(adapters or {})
        if len(adapters) > max_loaded_adapters:
            raise EngineError(
                f"{len(adapters)} preloaded adapters exceed max_loaded_adapters={max_loaded_adapters}"
            )
        tokenizer = Tokenizer(model_dir)
        lora = LoraCapacity(max_loaded_adapters, max_lora_rank)
        model, args = load_model(model_dir, dtype=torch_dtype, device=torch_device, lora=lora, progress=say)
        config = setup.build_config(
            model_dir=model_dir,
            model_id=str(model_id),
            model_sha=sha,
            args=args,
            dtype=torch_dtype,
            device=torch_device,
            max_input_tokens=max_input_tokens,
            max_total_tokens=max_total_tokens,
            max_batch_prefill_tokens=max_batch_prefill_tokens,
            max_batch_total_tokens=max_batch_total_tokens,
            max_loaded_adapters=max_loaded_adapters,
            max_lora_rank=max_lora_rank,
            max_batch_size=max_batch_size,
            block_size=block_size,
            num_kv_blocks=num_kv_blocks,
            kv_bytes_per_block=kv_bytes_per_block(args, block_size, torch_dtype),
        )
        engine = cls(config, model, args, tokenizer)
        say(f"KV pool: {config.num_kv_blocks} blocks x {config.block_size} tokens")
        for adapter_id, source in adapters.items():
            say(f"loading adapter {adapter_id} from {source}")
            engine.store.register(adapter_id, source)
            engine._pin_adapter(adapter_id)
        return engine

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the background loop (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="lorafleet-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stops the loop; requests still running fail with `GenerationError`."""
        if self._thread is None:
            return
        self._stopping.set()
        self._inbox.put(("wake", None))
        self._thread.join()
        self._thread = None
        while True:  # a request that raced the shutdown never reached the loop: fail it too
            try:
                kind, seq = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                seq.output.sink(GenerationError("the engine shut down before the request started"))

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
        )

    def loaded_adapters(self) -> list[str]:
        """Adapters currently in a device slot, least recently used first."""
        return self.adapter_slots.loaded()

    def stats(self) -> EngineStats:
        waiting, running, free_blocks = self._snapshot
        return EngineStats(
            queue_size=waiting + self._inbox.qsize(),
            batch_size=running,
            num_free_blocks=free_blocks,
            adapter_loads=self.adapter_slots.num_loads,
            adapter_evictions=self.adapter_slots.num_evictions,
            generated_tokens=self._generated_tokens,
            preemptions=self.scheduler.num_preemptions,
        )

    def validate(self, request: GenerationRequest) -> None:
        """Raises `EngineValidationError` (or `AdapterLoadError`) for a request the engine would refuse."""
        validate_request(request, self.config, self.tokenizer)
        if request.adapter_id is not None:
            self._check_adapter(request.adapter_id)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Runs `requests` together and blocks until all finish; validation errors raise before any runs."""
        sinks = [_BlockingSink() for _ in requests]
        seqs = [self._make_sequence(r, s) for r, s in zip(requests, sinks, strict=True)]
        for seq in seqs:
            self._submit(seq)
        return [sink.wait() for sink in sinks]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Yields one `TokenEvent` per token; closing the iterator early cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()

        sink = self._deliveries.for_loop(loop).sink(events.put_nowait)
        seq = self._make_sequence(request, sink)
        self._submit(seq)
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
                self._inbox.put(("abort", seq))

    # --- request intake ----------------------------------------------------------------------

    def _make_sequence(self, request: GenerationRequest, sink: Callable[[Any], None]) -> Seq:
        if self._thread is None or not self._thread.is_alive():
            raise EngineError("the engine is not running; call start() or use it as a context manager")
        checked = validate_request(request, self.config, self.tokenizer)
        if request.adapter_id is not None:
            self._check_adapter(request.adapter_id)  # load/validate now so errors reach the caller
        generator, seed = None, None
        if not is_greedy(request.params):
            seed = request.params.seed if request.params.seed is not None else random.randrange(2**63)
            generator = torch.Generator(device=self.config.device)
            generator.manual_seed(seed)
        seq = Seq(
            seq_id=next(self._seq_ids),
            token_ids=list(checked.prompt_ids),
            num_prompt_tokens=len(checked.prompt_ids),
            max_new_tokens=checked.max_new_tokens,
            params=request.params,
            adapter_id=request.adapter_id,
            generator=generator,
        )
        seq.output = RequestOutput(
            request, self.tokenizer, checked.prompt_ids, checked.max_new_tokens, seed, sink
        )
        return seq

    def _check_adapter(self, adapter_id: str) -> None:
        self.store.get(adapter_id)
        if not self.adapter_slots.can_ever_place(adapter_id):
            raise AdapterLoadError(
                f"adapter {adapter_id!r} cannot be served: all max_loaded_adapters="
                f"{self.config.max_loaded_adapters} slots hold preloaded (pinned) adapters"
            )

    def _submit(self, seq: Seq) -> None:
        self._inbox.put(("add", seq))

    def _load_adapter_weights(self, adapter_id: str, source: str) -> AdapterWeights:
        folder = resolve_adapter_dir(source)
        return load_adapter(
            adapter_id,
            folder,
            self.args,
            max_rank=self.config.max_lora_rank,
            dtype=self.config.dtype,
            base_model_id=self.config.model_id,
        )

    def _pin_adapter(self, adapter_id: str) -> None:
        weights = self.store.get(adapter_id)
        grant = self.adapter_slots.acquire(adapter_id, pin=True)
        if grant is None:
            raise AdapterLoadError(f"no free adapter slot to pin {adapter_id!r}")
        self.runner.set_adapter(grant.slot, weights)

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        run_loop(self)


def _config_eos(config: EngineConfig) -> set[int]:
    try:
        import json

        value = json.loads((config.model_dir / "config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError):
        return set()
    if value is None:
        return set()
    return set(value) if isinstance(value, list) else {int(value)}


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
