"""What every route needs, built once per app and passed explicitly to the routers."""

from __future__ import annotations

from dataclasses import dataclass

from lorafleet.runtime.server.config import ServerConfig
from lorafleet.runtime.server.generation import GenerationService
from lorafleet.runtime.server.metrics import ServerMetrics
from lorafleet.runtime.server.state import AdmissionGate, EngineHolder


@dataclass(frozen=True)
class ServerContext:
    config: ServerConfig
    holder: EngineHolder
    gate: AdmissionGate
    metrics: ServerMetrics
    service: GenerationService

    @classmethod
    def create(cls, config: ServerConfig) -> ServerContext:
        holder = EngineHolder()
        gate = AdmissionGate(config.max_concurrent_requests)
        metrics = ServerMetrics(holder, gate)
        return cls(config, holder, gate, metrics, GenerationService(holder, gate, metrics))
