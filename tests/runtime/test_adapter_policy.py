"""A request's adapter id is a name the replica registered or, if allowed, a Hub repo id; never a path.

Written as the attacks: a tenant's client names another tenant's adapter folder (absolute, with
`../`, with `~`, relative to the replica's working directory), probes which paths exist from the
error text, sends megabyte-long ids, and floods the store with ids that fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lorafleet.runtime.adapters.policy import MAX_ADAPTER_ID_LENGTH, is_hub_repo_id, shown
from lorafleet.runtime.engine import AdapterLoadError, Engine, GenerationRequest, SamplingParams

from tests.fixtures import standard_adapters, tiny_model
from tests.runtime.hub_cache import put_in_hub_cache

PROMPT = "The adapter answers the question"


@pytest.fixture(scope="module")
def adapters() -> dict[str, Path]:
    return standard_adapters(tiny_model("mistral"))


@pytest.fixture(scope="module", params=[False, True], ids=["hub-off", "hub-on"])
def engine(request, adapters):  # type: ignore[no-untyped-def]
    engine = Engine.from_pretrained(
        tiny_model("mistral"),
        adapters={"qv": str(adapters["r8-qv"])},
        allow_hub_adapters=request.param,
        progress=lambda _: None,
    )
    engine.register_adapter("mlp", str(adapters["r8-mlp-patterns"]))
    with engine:
        yield engine


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _refusal(engine: Engine, adapter_id: str) -> str:
    with pytest.raises(AdapterLoadError) as caught:
        engine.prepare(GenerationRequest(PROMPT, adapter_id=adapter_id))
    return str(caught.value)


def test_path_ids_get_one_message_whether_or_not_the_path_exists(
    engine, adapters, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tenant-b").mkdir()
    existing = adapters["r16-all"]
    relative_existing = os.path.relpath(existing, tmp_path)  # "../../.cache/...": it exists
    os.symlink(existing, tmp_path / "tenant-b" / "lora")
    attacks = [
        str(existing),
        str(tmp_path / "missing"),
        relative_existing,
        "../" + Path(relative_existing).name + "-missing",
        "~/adapter",
        "~",
        "./tenant-b/lora",
        "tenant-b/../tenant-b/lora",
        "tenant-b/lora/",
        "/etc/passwd",
        "",
    ]
    loads = engine.stats().adapter_loads
    messages = {_refusal(engine, attack).replace(shown(attack), "<id>") for attack in attacks}
    assert len(messages) == 1, messages  # nothing in the text depends on the filesystem
    assert "registered" in messages.pop()
    assert engine.stats().adapter_loads == loads and "r16-all" not in engine.loaded_adapters()


def test_a_relative_folder_named_like_a_hub_repo_is_never_read(
    engine, adapters, tmp_path, monkeypatch, offline_hub
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme").mkdir()
    os.symlink(adapters["r16-all"], tmp_path / "acme" / "lora")
    message = _refusal(engine, "acme/lora")
    if engine.config.args.allow_hub_adapters:  # a Hub id: the Hub cache is asked, not ./acme/lora
        assert "not downloadable from the Hub" in message
    else:
        assert "is not served here" in message


def test_registered_names_are_served_and_load_on_first_use(engine) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=2)
    results = engine.generate([GenerationRequest(PROMPT, params, adapter_id=a) for a in ("qv", "mlp", None)])
    assert [len(r.tokens) for r in results] == [2, 2, 2]
    assert "mlp" in engine.loaded_adapters()


def test_hub_repo_ids_are_served_only_when_allowed(engine, adapters, offline_hub) -> None:  # type: ignore[no-untyped-def]
    put_in_hub_cache(offline_hub, "acme/sql-lora", adapters["r64-rslora"])
    request = GenerationRequest(PROMPT, SamplingParams(max_new_tokens=2), adapter_id="acme/sql-lora")
    if engine.config.args.allow_hub_adapters:
        [result] = engine.generate([request])
        assert result.adapter_id == "acme/sql-lora" and len(result.tokens) == 2
    else:
        with pytest.raises(AdapterLoadError, match="is not served here"):
            engine.prepare(request)


def test_long_ids_are_refused_before_any_work_and_never_echoed_whole(engine) -> None:  # type: ignore[no-untyped-def]
    engine.register_adapter("x" * (MAX_ADAPTER_ID_LENGTH + 1), "unused")
    for adapter_id in ("x" * (MAX_ADAPTER_ID_LENGTH + 1), "org/" + "a" * 1_000_000):
        message = _refusal(engine, adapter_id)
        assert len(message) < 400 and "is not served here" in message


def test_ids_that_fail_leave_nothing_in_the_store(engine, offline_hub) -> None:  # type: ignore[no-untyped-def]
    bogus = [f"nobody/adapter-{i}" for i in range(200)] + [f"/tmp/adapter-{i}" for i in range(200)]
    for adapter_id in bogus:
        with pytest.raises(AdapterLoadError):
            engine.prepare(GenerationRequest(PROMPT, adapter_id=adapter_id))
    assert not set(engine.adapters.store.cached_ids()) & set(bogus)
    assert not engine.adapters.store.is_registered("nobody/adapter-0")


@pytest.mark.parametrize(
    ("adapter_id", "is_hub"),
    [
        ("predibase/magicoder", True),
        ("a/b", True),
        ("Org-1/name_2.v3", True),
        ("org/.hidden", False),
        ("org/..", False),
        ("org/a..b", False),
        ("/org/name", False),
        (".org/name", False),
        ("~org/name", False),
        ("org/name/file", False),
        ("org\\name", False),
        ("org/name\n", False),
        ("name", False),
        ("org/näme", False),
        ("org/" + "a" * 300, False),
    ],
)
def test_hub_repo_ids_are_org_slash_name_and_nothing_path_like(adapter_id, is_hub) -> None:  # type: ignore[no-untyped-def]
    assert is_hub_repo_id(adapter_id) is is_hub
