"""Control-plane settings: the ONLY module that reads the environment (prefix `LORAFLEET_`)."""

from __future__ import annotations

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
    startup_timeout_s: float = Field(900.0, gt=0, description="a replica not healthy by then failed")
    max_restarts: int = Field(4, ge=0, description="consecutive crashes before `failed`")
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    scale_down_cooldown_s: float = Field(60.0, ge=0)
    reconciler_enabled: bool = Field(True, description="false: serve the API only")
    log_tail_lines: int = Field(40, ge=1, description="log lines in a failed endpoint's message")

    @field_validator("launcher")
    @classmethod
    def _known_launcher(cls, value: str) -> str:
        if value not in ("process", "ray"):
            raise ValueError(f"LORAFLEET_LAUNCHER must be 'process' or 'ray', got {value!r}")
        return value

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
