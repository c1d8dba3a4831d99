"""Fixtures: a migrated database (SQLite always, PostgreSQL when LORAFLEET_TEST_DATABASE_URL is
set; a fresh database per test session), and the real app served over HTTP on a free port."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from lorafleet.controlplane.app import create_app
from lorafleet.controlplane.auth.service import create_token
from lorafleet.controlplane.db import Database, migrate
from lorafleet.controlplane.models import Base
from lorafleet.controlplane.settings import Settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.controlplane.live import free_port
from tests.fixtures import fixtures_dir

HERE = Path(__file__).parent
SEED_CATALOG = Path(__file__).resolve().parents[2] / "controlplane" / "catalog" / "seed-names.json"
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("LORAFLEET_TEST_DATABASE_URL") else [])


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db-template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated with `alembic upgrade head`."""
    admin_url = os.environ.get("LORAFLEET_TEST_DATABASE_URL")
    if not admin_url:
        pytest.skip("LORAFLEET_TEST_DATABASE_URL is not set")
    name = f"lorafleet_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty database: a copy of the SQLite template, or the session's PostgreSQL
    database truncated before the test."""
    if request.param == "sqlite":
        path = tmp_path / "controlplane.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as connection:
        tables = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    yield url


@dataclass
class Server:
    url: str
    app: object
    settings: Settings
    token: str
    namespace: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def new_token(self, namespace: str) -> str:
        with self.app.state.database.session() as session:  # type: ignore[attr-defined]
            return create_token(session, namespace=namespace)[1]

    @property
    def database(self) -> Database:
        return self.app.state.database  # type: ignore[attr-defined]


def serve_app(settings: Settings) -> Iterator[tuple[str, object]]:
    """Runs `create_app(settings)` with uvicorn in a thread on a free port until the test ends
    (endpoints' URLs name that port, as `lorafleet controlplane serve` makes them)."""
    port = free_port()
    if "public_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"public_url": f"http://127.0.0.1:{port}"})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    """Settings for an in-process control plane; replicas (if the reconciler is on) are the real
    runtime unless `runtime_command` says otherwise."""
    values: dict[str, object] = {
        "home": tmp_path / "home",
        "database_url": database_url,
        "secret_key": "test-secret-key",
        "catalog": SEED_CATALOG,
        "reconcile_interval_s": 0.2,
        "backoff_base_s": 0.1,
        "backoff_max_s": 0.5,
        "health_timeout_s": 1.0,
        "local_roots": str(fixtures_dir()),
        "replica_env": {"HF_HUB_OFFLINE": "1"},
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Server]:
    """The API over real HTTP, reconciler off (endpoints stay as the API leaves them)."""
    settings = make_settings(tmp_path, database_url, reconciler_enabled=False)
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        yield server


def endpoint_body(name: str = "ep-one", **model: object) -> dict[str, object]:
    """A create body as huggingface_hub 2.x sends it, on the catalog's CPU instance."""
    return {
        "name": name,
        "type": "protected",
        "compute": {
            "accelerator": "cpu",
            "instanceType": "intel-icl",
            "instanceSize": "x2",
            "scaling": {"minReplica": 1, "maxReplica": 1, "scaleToZeroTimeout": None},
        },
        "model": {
            "framework": "pytorch",
            "repository": "org/base-model",
            "revision": None,
            "image": {"huggingface": {}},
            **model,
        },
        "provider": {"vendor": "aws", "region": "us-east-1"},
    }
