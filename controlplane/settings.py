"""Control-plane settings: the ONLY module that reads the environment (prefix `LORAFLEET_`)."""

from __future__ import annotations

import os
import shlex
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".lorafleet"


class Settings(BaseSettings):
    """Every knob of the control plane.

    Example:
        >>> Settings(database_url="sqlite:////tmp/cp.db", launcher="process")
    """

    model_config = SettingsConfigDict(env_prefix="LORAFLEET_", frozen=True, extra="ignore")

    home: Path = Field(default_factory=_default_home, description="state folder (db, replica logs)")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite file under `home`")
    launcher: str = Field("process", description="`process` or `ray`")
    catalog: Path | None = Field(None, description="catalog JSON file; None = built-in default")
    secret_key: SecretStr | None = Field(None, description="encrypts endpoint secrets at rest")
    runtime_command: str = Field("", description="replica command; default `python -m lorafleet.runtime`")
    public_host: str = Field("127.0.0.1", description="host name replicas' URLs use")
    ray_address: str = Field(
        "auto", description="`ray.init` address for the ray launcher: `auto`, `ray://head:10001`, `host:6379`"
    )
    ray_namespace: str = Field("lorafleet", description="Ray namespace of the replica actors")
    ray_runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env for replica actors (JSON)"
    )
    reconcile_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(2.0, gt=0)
    adapter_load_timeout_s: float = Field(
        120.0, gt=0, description="how long a replica may take to load one adapter (admin API)"
    )
    startup_timeout_s: float = Field(900.0, gt=0, description="a replica not healthy by then failed")
    max_restarts: int = Field(4, ge=0, description="consecutive crashes before `failed`")
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    scale_down_cooldown_s: float = Field(60.0, ge=0)
    reconciler_enabled: bool = Field(True, description="false: serve the API only")
    log_tail_lines: int = Field(40, ge=1, description="log lines in a failed endpoint's message")
    sqlite_busy_timeout_s: float = Field(10.0, ge=0, description="wait for a SQLite write lock, then 503")
    # --- tenant isolation (docs/security.md) ---------------------------------------------------
    local_roots: str = Field(
        "", description="os.pathsep-separated host folders specs may take models/adapters from by path"
    )
    isolation: str = Field("auto", description="`auto`, `sandbox` (required) or `none` (replicas unconfined)")
    replica_uid_base: int = Field(2_000_000_000, ge=1000, description="first uid given to a namespace")
    replica_uid_count: int = Field(100_000, ge=1, description="how many namespace uids there are")
    replica_max_processes: int = Field(8192, ge=64, description="RLIMIT_NPROC of a namespace's uid")
    sandbox_paths: str = Field(
        "", description="os.pathsep-separated host paths bound read-only into every replica sandbox"
    )
    replica_env: dict[str, str] = Field(
        default_factory=dict, description="operator's environment for every replica (JSON object)"
    )
    replica_log_max_bytes: int = Field(10_000_000, ge=10_000, description="LOG_MAX_BYTES for replicas")
    replica_output_max_bytes: int = Field(
        1_000_000, ge=10_000, description="cap of a replica's captured stdout/stderr"
    )
    quota_endpoints: int = Field(20, ge=0, description="endpoints per namespace")
    quota_replicas: int = Field(8, ge=0, description="replicas per namespace")
    quota_accelerators: int = Field(8, ge=0, description="accelerators (GPUs) per namespace")
    quota_adapters: int = Field(64, ge=0, description="adapters in one endpoint's live set")
    # --- the endpoint gateway (docs/controlplane.md#gateway) ----------------------------------
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="base of every endpoint's URL (`{public_url}/endpoints/{ns}/{name}`); `serve` "
        "defaults it to its own --host/--port",
    )
    gateway_enabled: bool = Field(True, description="false: `controlplane serve` serves no /endpoints")
    gateway_refresh_s: float = Field(1.0, gt=0, description="endpoints and replicas reloaded every")
    gateway_adapters_refresh_s: float = Field(2.0, gt=0, description="replicas asked what they hold every")
    gateway_flush_s: float = Field(2.0, gt=0, description="how often it writes usage and load")
    gateway_max_body_bytes: int = Field(2_000_000, ge=1024, description="request body limit (413 above)")
    gateway_max_header_bytes: int = Field(16_384, ge=1024, description="request header limit (431 above)")
    gateway_connect_timeout_s: float = Field(5.0, gt=0, description="connecting to a replica")
    gateway_read_timeout_s: float = Field(300.0, gt=0, description="longest wait for a replica's next bytes")
    gateway_connect_retries: int = Field(2, ge=0, description="other replicas tried when one refuses")
    gateway_auth_cache_s: float = Field(5.0, ge=0, description="how long a checked token is trusted")
    gateway_routing: str = Field("affinity", description="`affinity` (bounded hash) or `round_robin`")
    gateway_load_factor: float = Field(1.5, ge=1.0, le=8.0, description="c of the routing's load bound")
    scale_up_timeout_max_s: float = Field(600.0, ge=0, description="cap of X-Scale-Up-Timeout")
    drain_grace_s: float = Field(3.0, ge=0, description="a draining replica is stopped no sooner")
    drain_timeout_s: float = Field(120.0, ge=0, description="... and no later, even with requests left")
    metrics_token: SecretStr | None = Field(None, description="bearer of `/metrics`, all namespaces")

    @field_validator("secret_key", "metrics_token", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # LORAFLEET_SECRET_KEY= means "use the key file"

    @field_validator("isolation")
    @classmethod
    def _known_isolation(cls, value: str) -> str:
        if value not in ("auto", "sandbox", "none"):
            raise ValueError(f"LORAFLEET_ISOLATION must be 'auto', 'sandbox' or 'none', got {value!r}")
        return value

    @field_validator("gateway_routing")
    @classmethod
    def _known_routing(cls, value: str) -> str:
        if value not in ("affinity", "round_robin"):
            raise ValueError(f"LORAFLEET_GATEWAY_ROUTING must be 'affinity' or 'round_robin', got {value!r}")
        return value

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"LORAFLEET_PUBLIC_URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("launcher")
    @classmethod
    def _known_launcher(cls, value: str) -> str:
        if value not in ("process", "ray"):
            raise ValueError(f"LORAFLEET_LAUNCHER must be 'process' or 'ray', got {value!r}")
        return value

    def endpoint_url(self, namespace: str, name: str) -> str:
        """An endpoint's stable URL (`status.url`): the gateway's path for it."""
        return f"{self.public_url}/endpoints/{namespace}/{name}"

    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'controlplane.db'}"

    @cached_property
    def replica_command(self) -> list[str]:
        if self.runtime_command:
            return shlex.split(self.runtime_command)
        return [sys.executable, "-m", "lorafleet.runtime"]

    @cached_property
    def secret_key_file(self) -> Path:
        return self.home / "secret.key"

    @cached_property
    def local_root_paths(self) -> tuple[Path, ...]:
        """`LOCAL_ROOTS` resolved (symlinks and `..` gone), so containment checks compare real paths."""
        return _path_list(self.local_roots)

    @cached_property
    def sandbox_path_list(self) -> tuple[Path, ...]:
        return _path_list(self.sandbox_paths)


def _path_list(text: str) -> tuple[Path, ...]:
    return tuple(Path(os.path.realpath(Path(p).expanduser())) for p in text.split(os.pathsep) if p.strip())


def private_home(settings: Settings) -> Path:
    """Creates `home` readable by this user only (0700; an existing folder of ours is narrowed):
    it holds the database, the secret key and the replicas' handles, and replicas run tenants' code."""
    home = settings.home
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if home.stat().st_uid == os.getuid():
        home.chmod(0o700)
    return home
