"""Local paths are the operator's choice, not a tenant's: a spec names a base model or adapters by
path only under LORAFLEET_LOCAL_ROOTS (symlinks and `..` resolved first), and a refusal reads the
same whether the path exists or not (issue 12, "local paths")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from lorafleet.controlplane.catalog.loader import load_catalog
from lorafleet.controlplane.catalog.service import Hardware
from lorafleet.controlplane.db import Database
from lorafleet.controlplane.launchers.process import ProcessLauncher
from lorafleet.controlplane.models import Replica
from lorafleet.controlplane.reconciler import Reconciler
from lorafleet.controlplane.secretbox import SecretBox
from sqlalchemy import select

from tests.controlplane.conftest import Server, endpoint_body, make_settings, serve_app


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An operator's models folder: a model, an adapter, a symlink inside it and one leading out."""
    root = tmp_path / "models"
    (root / "base").mkdir(parents=True)
    (root / "adapter").mkdir()
    (root / "link-in").symlink_to(root / "base")
    (root / "link-out").symlink_to("/etc")
    return root


@pytest.fixture
def rooted(tmp_path: Path, database_url: str, root: Path) -> Iterator[Server]:
    settings = make_settings(tmp_path, database_url, reconciler_enabled=False, local_roots=str(root))
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        yield server


def _create(server: Server, repository: str = "org/base", **model: object) -> tuple[int, dict]:
    body = endpoint_body(**model)
    body["model"]["repository"] = repository  # type: ignore[index]
    with server.client() as client:
        response = client.post("/v2/endpoint/alice", json=body)
    return response.status_code, response.json()


def test_a_path_outside_the_roots_is_refused_alike_whether_it_exists_or_not(
    rooted: Server, root: Path
) -> None:
    outside = ["/etc", "/etc/passwd", "/nonexistent/base-model", f"{root}/../models-elsewhere",
               f"{root}/link-out", f"{root}/link-out/shadow", f"{root}/base/../../outside", "/root/.ssh"]
    messages = set()
    for source in outside:
        status, error = _create(rooted, source)
        assert status == 400 and error["field"] == "model.repository", (source, error)
        messages.add(error["error"].replace(repr(source), "<source>"))
    assert len(messages) == 1, messages  # nothing tells a path that exists from one that does not
    assert "LORAFLEET_LOCAL_ROOTS" in messages.pop()


@pytest.mark.parametrize("source", ["./base", "base/../../etc", "models/base/x", "~/.cache", "..", "C:\\x"])
def test_relative_and_home_paths_are_refused(rooted: Server, source: str) -> None:
    status, error = _create(rooted, source)
    assert status == 400 and error["field"] == "model.repository"


def test_hub_ids_and_folders_under_the_roots_are_accepted(rooted: Server, root: Path) -> None:
    adapters = f"a=predibase/magicoder@main,b={root / 'adapter'},{root / 'adapter'}"
    for index, repository in enumerate(["mistralai/Mistral-7B-v0.1", "gpt2", str(root / "base"),
                                        str(root / "link-in")]):
        status, raw = _create(rooted, repository, name=f"ep-{index}", env={"LORA_ADAPTERS": adapters})
        assert status == 200, raw


@pytest.mark.parametrize(("model", "field"), [
    ({"env": {"LORA_ADAPTERS": "ok=org/fine,a=/etc"}}, "model.env.LORA_ADAPTERS"),
    ({"env": {"LORA_ADAPTERS": "/etc/ssl"}}, "model.env.LORA_ADAPTERS"),
    ({"env": {"LORA_ADAPTERS": "a=/etc@main"}}, "model.env.LORA_ADAPTERS"),
    ({"env": {"LORA_ADAPTERS": "a=../../etc"}}, "model.env.LORA_ADAPTERS"),
    ({"env": {"MODEL_ID": "/etc"}}, "model.env.MODEL_ID"),
    ({"args": ["--model-id", "/etc"]}, "model.args"),
    ({"args": ["--lora-adapters=x=/root"]}, "model.args"),
])
def test_model_and_adapter_sources_in_env_and_flags_are_checked(
    rooted: Server, model: dict, field: str
) -> None:
    status, error = _create(rooted, **model)
    assert status == 400 and error["field"] == field, error


def test_without_roots_specs_name_hub_repos_only(tmp_path: Path, database_url: str, root: Path) -> None:
    settings = make_settings(tmp_path, database_url, reconciler_enabled=False, local_roots="")
    for url, app in serve_app(settings):
        server = Server(url, app, settings, "", "alice")
        server.token = server.new_token("alice")
        status, error = _create(server, str(root / "base"))
        assert status == 400 and "none: the operator set no LORAFLEET_LOCAL_ROOTS" in error["error"]
        assert _create(server, "org/base", name="ep-hub")[0] == 200


def test_an_update_cannot_move_the_model_out_of_the_roots(rooted: Server, root: Path) -> None:
    assert _create(rooted, str(root / "base"))[0] == 200
    with rooted.client() as client:
        moved = client.put("/v2/endpoint/alice/ep-one", json={"model": {"repository": "/etc"}})
        after = client.get("/v2/endpoint/alice/ep-one").json()
    assert moved.status_code == 400 and after["model"]["repository"] == str(root / "base")


def test_roots_narrowed_after_the_spec_was_accepted_stop_its_launch(
    rooted: Server, root: Path, tmp_path: Path, database_url: str
) -> None:
    assert _create(rooted, str(root / "base"))[0] == 200
    narrowed = make_settings(tmp_path / "later", database_url, local_roots=str(tmp_path / "other"))
    launcher = ProcessLauncher.from_settings(narrowed)
    database = Database(database_url)
    reconciler = Reconciler(narrowed, database, launcher, Hardware(load_catalog(narrowed.catalog), launcher),
                            SecretBox("test-secret-key"))
    try:
        reconciler.tick()
        with rooted.client() as client:
            status = client.get("/v2/endpoint/alice/ep-one").json()["status"]
        with database.session() as session:
            assert session.scalars(select(Replica)).all() == []
    finally:
        reconciler.close()
        database.dispose()
    assert status["state"] == "pending" and "LORAFLEET_LOCAL_ROOTS" in status["message"], status
    assert not os.listdir(tmp_path / "later" / "home" / "replicas")
