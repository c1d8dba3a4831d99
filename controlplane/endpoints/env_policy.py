"""What a tenant may put in an endpoint's `model.env`, `model.secrets` and `model.args`.

An allowlist, not a denylist: a replica runs as a process on the operator's machine, and every
variable outside the runtime's own settings changes how something else behaves (Python's import
system and warnings, the dynamic loader, the Hub client's endpoint and cache, the browser module
that `PYTHONWARNINGS` can import...). Nobody reads a variable the runtime does not document, so
refusing it costs a tenant nothing. Env and secrets obey the same list: a secret is only an env
entry stored encrypted.

Accepted names:

* the runtime's settings, named as TGI names them (`RUNTIME_ENV`; a test checks each against the
  runtime's own flags);
* Hugging Face Hub auth (`HF_TOKEN`, and `HUGGING_FACE_HUB_TOKEN`, the older name TGI still
  reads), so a replica can download a private base model or adapter.

Not accepted, with the reason:

* `PORT`, `HOSTNAME`, `CUDA_VISIBLE_DEVICES`, `API_KEY`, `NUM_SHARD`, `DEVICE`, `LOG_FILE`,
  `LOG_MAX_BYTES`: the launcher sets them (where a replica listens, which GPUs it owns, its key,
  its log file);
* `HF_HUB_OFFLINE`: whether replicas reach the Hub is the operator's network decision
  (`LORAFLEET_REPLICA_ENV`), not a tenant's;
* `HF_ENDPOINT`, `HF_HOME` and the rest of the Hub client's knobs: they would send the tenant's
  token elsewhere or move the cache into someone else's;
* everything else (`PYTHON*`, `LD_*`, `PATH`, `HOME`, `BROWSER`, ...).

`model.args` takes the flags of the same runtime settings (`--max-total-tokens 512` or
`--max-total-tokens=512`); never `--hostname`, `--port`, `--api-key`, `--device`, `--num-shard`,
`--log-file`, and no positional arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lorafleet.controlplane.errors import BadRequestError

RUNTIME_ENV = (
    "MODEL_ID",
    "REVISION",
    "LORA_ADAPTERS",
    "DTYPE",
    "MAX_INPUT_LENGTH",
    "MAX_INPUT_TOKENS",
    "MAX_TOTAL_TOKENS",
    "MAX_BATCH_PREFILL_TOKENS",
    "MAX_BATCH_TOTAL_TOKENS",
    "MAX_CONCURRENT_REQUESTS",
    "MAX_LOADED_ADAPTERS",
    "BLOCK_SIZE",
    "NUM_KV_BLOCKS",
    "LOG_LEVEL",
    "PAYLOAD_LIMIT",
    "ALLOW_HUB_ADAPTERS",
    "PREFIX_CACHING",
    "ADAPTER_MEMORY",
    "ADAPTER_HOST_MEMORY",
)
HUB_AUTH_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
TENANT_ENV = frozenset(RUNTIME_ENV + HUB_AUTH_ENV)
LAUNCHER_ENV = frozenset((
    "PORT", "HOSTNAME", "CUDA_VISIBLE_DEVICES", "API_KEY", "NUM_SHARD", "DEVICE", "LOG_FILE", "LOG_MAX_BYTES"
))
MAX_VALUE_CHARS = 65_536  # a LORA_ADAPTERS list of a few hundred entries fits


def flag_for(name: str) -> str:
    """The runtime's flag for an env name, as TGI derives it: `MAX_TOTAL_TOKENS` → `--max-total-tokens`."""
    return "--" + name.lower().replace("_", "-")


TENANT_FLAGS = {flag_for(name): name for name in RUNTIME_ENV}


def check_env(env: Mapping[str, str], field: str) -> None:
    """Raises a 400 naming the first refused entry of `env` (at `field`, e.g. `model.env`).

    Example:
        >>> check_env({"MAX_TOTAL_TOKENS": "512"}, "model.env")   # accepted
        >>> check_env({"LD_PRELOAD": "/tmp/x.so"}, "model.env")   # BadRequestError, 400
    """
    for name, value in env.items():
        where = f"{field}.{name}"
        if name not in TENANT_ENV:
            why = "is set by the launcher" if name in LAUNCHER_ENV else "is not a setting the runtime reads"
            raise BadRequestError(
                f"{where}: {name} {why} and cannot be set by an endpoint; accepted names: "
                f"{', '.join(sorted(TENANT_ENV))}",
                field=where,
                accepted=sorted(TENANT_ENV),
            )
        _check_value(value, where)


def check_args(args: Sequence[str]) -> dict[str, str]:
    """Checks `model.args`; returns the settings they give, as env names (the runtime lets a flag
    win over its variable, so callers check paths on the merged result).

    Example:
        >>> check_args(["--max-total-tokens", "512", "--dtype=float32"])
        {'MAX_TOTAL_TOKENS': '512', 'DTYPE': 'float32'}
    """
    settings: dict[str, str] = {}
    index = 0
    while index < len(args):
        where = f"model.args[{index}]"
        flag, has_value, value = args[index].partition("=")
        if flag not in TENANT_FLAGS:
            what = "a positional argument" if not flag.startswith("-") else f"the flag {flag!r}"
            raise BadRequestError(
                f"{where}: {what} cannot be given to the runtime; accepted flags: "
                f"{', '.join(sorted(TENANT_FLAGS))} (each followed by its value)",
                field=where,
                accepted=sorted(TENANT_FLAGS),
            )
        if not has_value:
            index += 1
            if index >= len(args):
                raise BadRequestError(f"{where}: {flag} needs a value", field=where)
            value = args[index]
        if value.startswith("-"):
            raise BadRequestError(f"{where}: the value of {flag} must not start with '-'", field=where)
        _check_value(value, where)
        settings[TENANT_FLAGS[flag]] = value
        index += 1
    return settings


def _check_value(value: str, where: str) -> None:
    if "\x00" in value:
        raise BadRequestError(f"{where}: values cannot contain NUL characters", field=where)
    if len(value) > MAX_VALUE_CHARS:
        raise BadRequestError(f"{where}: longer than {MAX_VALUE_CHARS} characters", field=where)
