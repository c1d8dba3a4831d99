"""lorafleet's control plane: an HF Inference Endpoints v2-compatible API that stores endpoints
(SQLite or PostgreSQL) and keeps runtime replicas running through a launcher.

Entry points: `lorafleet.controlplane.cli.main` (CLI), `lorafleet.controlplane.app.create_app`
(ASGI app), `lorafleet.controlplane.endpoints.service.EndpointService` (service layer)."""
