"""`lorafleet-runtime` / `python -m lorafleet.runtime`: TGI's launcher flags and env vars.

A flag wins over its environment variable, which wins over the default. Bad values stop the
process before anything loads, with a message naming the flag and its variable.

Example:
    MODEL_ID=/repository LORA_ADAPTERS=predibase/magicoder,support=/data/support PORT=8080 \\
        python -m lorafleet.runtime --max-total-tokens 4096
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lorafleet.runtime.args import EngineArgs, parse_memory
from lorafleet.runtime.server.config import ConfigError, ServerConfig, parse_adapter_list
from lorafleet.runtime.server.lifecycle import serve
from lorafleet.runtime.server.logs import MIN_LOG_MAX_BYTES, configure_logging

logger = logging.getLogger("lorafleet.runtime.server")

DTYPES = ("float16", "bfloat16", "float32")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
MAX_SHARDS = 64  # tensor-parallel processes at most (catalog sizes stop at 8 GPUs)


def _int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError("must be an integer") from None


def _positive_int(value: str) -> int:
    number = _int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _port(value: str) -> int:
    number = _int(value)
    if not 1 <= number <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return number


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value.lower()

    return parse


def _bytes(value: str) -> int:
    amount = parse_memory(value)
    if isinstance(amount, float):
        raise ValueError("must be a number of bytes (e.g. 1GiB), not a fraction")
    return amount


def _bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _switch(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError("must be true or false")
    return lowered in ("true", "1", "yes", "on")


def _log_max_bytes(value: str) -> int:
    number = _int(value)
    if number < MIN_LOG_MAX_BYTES:
        raise ValueError(f"must be at least {MIN_LOG_MAX_BYTES} bytes")
    return number


def _num_shard(value: str) -> int:
    number = _int(value)
    if not 1 <= number <= MAX_SHARDS:
        raise ValueError(f"must be between 1 and {MAX_SHARDS}")
    return number


@dataclass(frozen=True)
class Flag:
    name: str  # --model-id
    env: tuple[str, ...]  # MODEL_ID, ...: read in this order when the flag is absent
    parse: Callable[[str], Any]
    help: str
    aliases: tuple[str, ...] = ()
    # "engine.<EngineArgs field>", a ServerConfig field, or "-" (checked, not kept); default: from the name
    field: str = ""
    secret: bool = False  # its value never appears in errors
    switch: bool = False  # `--flag` alone means true

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")

    @property
    def target(self) -> tuple[str, str]:
        """("engine" | "server", field name) this flag sets."""
        owner, _, name = (self.field or f"engine.{self.dest}").rpartition(".")
        return (owner or "server"), name

    def label(self) -> str:
        return "/".join((self.name, *self.env))


FLAGS = (
    Flag("--model-id", ("MODEL_ID",), _text, "base model: a local directory or a Hub repo id"),
    Flag("--revision", ("REVISION",), _text, "Hub revision of the base model"),
    Flag(
        "--lora-adapters",
        ("LORA_ADAPTERS",),
        lambda v: parse_adapter_list(v),
        "comma list of adapters to preload: `id`, `id@rev`, `name=path`",
        field="engine.adapters",
    ),
    Flag("--dtype", ("DTYPE",), _choice(DTYPES), "weights and activations dtype"),
    Flag("--device", ("DEVICE",), _text, "torch device (default: cuda when available, else cpu)"),
    Flag(
        "--max-input-length",
        ("MAX_INPUT_LENGTH", "MAX_INPUT_TOKENS"),
        _positive_int,
        "longest prompt in tokens",
        aliases=("--max-input-tokens",),
        field="engine.max_input_tokens",
    ),
    Flag("--max-total-tokens", ("MAX_TOTAL_TOKENS",), _positive_int, "longest prompt + output in tokens"),
    Flag(
        "--max-batch-prefill-tokens",
        ("MAX_BATCH_PREFILL_TOKENS",),
        _positive_int,
        "prompt tokens prefilled per engine step",
    ),
    Flag(
        "--max-batch-total-tokens",
        ("MAX_BATCH_TOTAL_TOKENS",),
        _positive_int,
        "tokens (prompt + output) of all running requests",
    ),
    Flag(
        "--max-concurrent-requests",
        ("MAX_CONCURRENT_REQUESTS",),
        _positive_int,
        "requests in flight before answering 429 (default 128)",
        field="max_concurrent_requests",
    ),
    Flag(
        "--max-loaded-adapters",
        ("MAX_LOADED_ADAPTERS",),
        _positive_int,
        "adapters kept loaded; least recently used ones are evicted past it",
    ),
    Flag("--block-size", ("BLOCK_SIZE",), _positive_int, "tokens per KV-cache block (default 16)"),
    Flag(
        "--num-kv-blocks", ("NUM_KV_BLOCKS",), _positive_int, "KV-cache blocks (default: sized by the engine)"
    ),
    Flag(
        "--prefix-caching",
        ("PREFIX_CACHING",),
        _bool,
        "reuse the KV cache of prompt prefixes already computed with the same adapter (default true)",
    ),
    Flag(
        "--cuda-graphs",
        ("CUDA_GRAPHS",),
        _bool,
        "replay decode steps from CUDA graphs captured at start (default true on CUDA for dense models)",
    ),
    Flag(
        "--adapter-memory",
        ("ADAPTER_MEMORY",),
        parse_memory,
        "device memory for adapters: bytes (512MiB, 2GB) or a fraction of the memory free after the "
        "weights (0.1); each adapter costs its real size (default: max-loaded-adapters at max rank)",
    ),
    Flag(
        "--adapter-host-memory",
        ("ADAPTER_HOST_MEMORY",),
        _bytes,
        "host memory for adapter weights, in bytes (default: 4x the device budget, at least 256MiB)",
    ),
    Flag("--hostname", ("HOSTNAME",), _text, "address to listen on (default 0.0.0.0)", field="hostname"),
    Flag("--port", ("PORT",), _port, "port to listen on (default 3000)", field="port"),
    Flag("--log-level", ("LOG_LEVEL",), _choice(LOG_LEVELS), "log level (default info)", field="log_level"),
    Flag(
        "--api-key",
        ("API_KEY",),
        _text,
        "every route but /health and /ping needs `Authorization: Bearer <key>` (prefer the variable: "
        "a flag shows in the process list); unset, the replica is open",
        field="api_key",
        secret=True,
    ),
    Flag(
        "--payload-limit",
        ("PAYLOAD_LIMIT",),
        _positive_int,
        "largest request body in bytes; larger ones get 413 (default 2000000)",
        field="payload_limit",
    ),
    Flag(
        "--allow-hub-adapters",
        ("ALLOW_HUB_ADAPTERS",),
        _switch,
        "let requests name Hub repo ids `org/name` besides the registered adapters (default false)",
        field="engine.allow_hub_adapters",
        switch=True,
    ),
    Flag("--log-file", ("LOG_FILE",), _text, "log to this rotated file (default stderr)", field="log_file"),
    Flag(
        "--log-max-bytes",
        ("LOG_MAX_BYTES",),
        _log_max_bytes,
        "size at which the log file rotates; one backup is kept (default 10000000)",
        field="log_max_bytes",
    ),
    Flag(
        "--num-shard",
        ("NUM_SHARD",),
        _num_shard,
        "processes (GPUs) to split the model over, tensor-parallel (default every visible GPU; 1 on the CPU)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorafleet-runtime",
        description="Serve one base model and many LoRA adapters over TGI- and OpenAI-compatible HTTP.",
    )
    for flag in FLAGS:
        env_help = " or ".join(f"${e}" for e in flag.env)
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if flag.switch else {}
        parser.add_argument(
            flag.name, *flag.aliases, dest=flag.dest, default=None, help=f"{flag.help} [{env_help}]", **extra
        )
    return parser


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags and env vars → `ServerConfig`; raises `ConfigError` naming the bad flag."""
    env = os.environ if env is None else env
    args = vars(build_parser().parse_args(argv))
    values: dict[str, dict[str, Any]] = {"engine": {}, "server": {}}
    for flag in FLAGS:
        raw, origin = args[flag.dest], flag.name
        if raw is None:
            origin, raw = next(((e, env[e]) for e in flag.env if env.get(e, "").strip()), (origin, None))
        if raw is None:
            continue
        try:
            value = flag.parse(raw)
        except ConfigError:
            raise
        except ValueError as e:
            shown = "(hidden)" if flag.secret else repr(raw)
            raise ConfigError(f"{flag.label()}: invalid value {shown} (from {origin}): {e}") from e
        if flag.field != "-":
            owner, field = flag.target
            values[owner][field] = value
    if "model_id" not in values["engine"]:
        raise ConfigError("--model-id/MODEL_ID is required: a local model directory or a Hub repo id")
    values["engine"].setdefault("num_shard", None)  # unset: TGI's default, every visible GPU
    _check_limits(values["engine"])
    return ServerConfig(engine=EngineArgs(**values["engine"]), **values["server"])


def _check_limits(values: Mapping[str, Any]) -> None:
    max_input, max_total = values.get("max_input_tokens"), values.get("max_total_tokens")
    prefill = values.get("max_batch_prefill_tokens")
    if max_input is not None and max_total is not None and max_input >= max_total:
        raise ConfigError(
            f"--max-input-length ({max_input}) must be < --max-total-tokens ({max_total}): "
            "no room is left for output tokens"
        )
    max_loaded, preloaded = values.get("max_loaded_adapters"), len(values.get("adapters", ()))
    if max_loaded is not None and max_loaded < preloaded:
        raise ConfigError(
            f"--max-loaded-adapters ({max_loaded}) must be >= the number of --lora-adapters ({preloaded}): "
            "preloaded adapters stay loaded"
        )
    if max_input is not None and prefill is not None and prefill < max_input:
        raise ConfigError(
            f"--max-batch-prefill-tokens ({prefill}) must be >= --max-input-length ({max_input})"
        )


def main(argv: list[str] | None = None) -> int:
    """Runs the server until SIGINT/SIGTERM; returns the process exit code."""
    try:
        config = parse_config(argv)
    except ConfigError as e:
        print(f"lorafleet-runtime: error: {e}", file=sys.stderr)
        return 2
    try:
        configure_logging(config.log_level, config.log_file, config.log_max_bytes)
    except OSError as e:
        print(f"lorafleet-runtime: error: --log-file/LOG_FILE: cannot open it: {e}", file=sys.stderr)
        return 2
    if config.api_key is None:
        logger.warning(
            "no --api-key/API_KEY: every route is open to anyone who reaches %s:%d",
            config.hostname,
            config.port,
        )
    return serve(config)
