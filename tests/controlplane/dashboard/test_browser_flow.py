"""The whole user flow in Chromium with a real runtime replica of the trained demo model
(`tests/fixtures/trained.py`): create an endpoint with its three adapters through the form, watch it
reach running without a reload, Try it with each adapter (each answers with its own task, as the
replica itself does), see the gateway URL, its examples and the usage per adapter, pause, resume,
delete. Takes the README screenshots on the way: into `docs/images/` with
`LORAFLEET_UPDATE_SCREENSHOTS=1`, else into the test's temporary folder (so a plain test run leaves
the checkout clean)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.controlplane.dashboard.conftest import create_via_api, sign_in, signed_in_client
from tests.controlplane.live import LiveControlPlane, live_controlplane
from tests.controlplane.replicas import EndpointView, api_key_of, wait_for
from tests.fixtures import REPO_ROOT, tiny_model
from tests.fixtures.trained import TASKS, demo_prompt, expected_answer, trained_demo

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOCS_IMAGES = REPO_ROOT / "docs" / "images"
READY_TIMEOUT_MS = 180_000  # a replica loads the tiny model in seconds; leave room for a busy CI host
GENERATE_TIMEOUT_MS = 120_000  # adapters on the CPU runtime take seconds per request
ITEMS = ["cat", "3", "dog", "7"]
PROMPT = demo_prompt(ITEMS)
MAX_NEW_TOKENS = 16


def _direct_generation(url: str, api_key: str, adapter_id: str) -> str:
    """What the replica itself answers, asked with its own key as `InferenceClient.text_generation`."""
    response = httpx.post(f"{url}/generate", headers={"Authorization": f"Bearer {api_key}"}, timeout=60,
                          json={"inputs": PROMPT, "parameters": {"adapter_id": adapter_id,
                                                                 "max_new_tokens": MAX_NEW_TOKENS}})
    assert response.status_code == 200, response.text
    return response.json()["generated_text"]


def _try_it(page, adapter_id: str) -> str:  # type: ignore[no-untyped-def]
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    page.get_by_label("Adapter", exact=True).select_option(adapter_id)
    page.get_by_label("Max new tokens", exact=True).fill(str(MAX_NEW_TOKENS))
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#try-output")).to_contain_text(f"Generated with adapter {adapter_id}",
                                                        timeout=GENERATE_TIMEOUT_MS)
    return page.locator("#try-output pre.generated").inner_text()


def _diagnosis(cp: LiveControlPlane, name: str) -> str:
    raw = httpx.get(f"{cp.url}/v2/endpoint/{cp.namespace}/{name}", headers=cp.headers).json()
    return f"endpoint: {raw.get('status')}\ncontrol plane log:\n{cp.output()[-3000:]}"


def _expect_state(page, cp: LiveControlPlane, state: str) -> None:  # type: ignore[no-untyped-def]
    try:
        expect(page.locator("#endpoint-status .status-line .state")).to_have_text(state,
                                                                                  timeout=READY_TIMEOUT_MS)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_diagnosis(cp, 'demo-multi-lora')}") from None


def test_create_watch_try_pause_resume_delete_in_the_browser(page, tmp_path: Path) -> None:
    model_dir, adapter_dirs = trained_demo()
    adapters_text = "\n".join(f"{name}={path}" for name, path in adapter_dirs.items())
    images = DOCS_IMAGES if os.environ.get("LORAFLEET_UPDATE_SCREENSHOTS") == "1" else tmp_path
    with live_controlplane(env={"HF_HUB_OFFLINE": "1", "LORAFLEET_GATEWAY_FLUSH_S": "0.5"}) as cp:
        sign_in(page, cp)
        # A second, paused endpoint, so the list shows more than one state.
        create_via_api(cp, "support-bot-v2", repository=str(tiny_model("mistral")),
                       adapters="v2=predibase/support-v2")
        paused = httpx.post(f"{cp.url}/v2/endpoint/alice/support-bot-v2/pause", headers=cp.headers)
        assert paused.status_code == 200

        page.get_by_role("link", name="Create endpoint").first.click()
        page.get_by_label("Endpoint name", exact=True).fill("demo-multi-lora")
        page.get_by_label("Base model", exact=True).fill(str(model_dir))
        page.get_by_label("Adapters", exact=True).fill(adapters_text)
        page.get_by_label("Vendor", exact=True).select_option("local")
        page.get_by_label("Region", exact=True).select_option("local")
        page.get_by_label("Instance type", exact=True).select_option("cpu")
        page.get_by_text("Advanced configuration").click()
        environment = page.get_by_label("Environment variables", exact=True)
        environment.fill("MAX_INPUT_LENGTH=256\nMAX_TOTAL_TOKENS=384")
        page.get_by_role("button", name="Create endpoint").click()
        expect(page.get_by_role("heading", name="demo-multi-lora")).to_be_visible()

        # The list refreshes in place: a marker set on the page survives the state change.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Endpoints").click()
        page.evaluate("window.__noReload = true")
        row = page.locator('tr[data-name="demo-multi-lora"]')
        try:
            expect(row.locator(".state")).to_have_text("running", timeout=READY_TIMEOUT_MS)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{_diagnosis(cp, 'demo-multi-lora')}") from None
        expect(row.locator(".replicas")).to_have_text("1/1")
        assert page.evaluate("window.__noReload === true")
        url = row.locator('td[data-label="URL"] code').inner_text()
        assert url == f"{cp.url}/endpoints/alice/demo-multi-lora"  # the gateway's stable URL
        images.mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1280, "height": 400})  # full_page grows it to the content
        page.screenshot(path=str(images / "dashboard-list.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 860})

        row.get_by_role("link", name="demo-multi-lora").click()
        _expect_state(page, cp, "running")
        expect(page.locator("#gateway-url")).to_have_text(url)
        expect(page.locator("#example-curl")).to_contain_text(f"curl {url}/generate")
        expect(page.locator("#example-openai")).to_contain_text(f'base_url="{url}/v1"')
        (replica_url,) = EndpointView(cp, "demo-multi-lora").replica_urls().values()
        outputs = {name: _try_it(page, name) for name in TASKS}
        for name, text in outputs.items():
            assert text == _direct_generation(replica_url, api_key_of(cp, replica_url), name)
            assert text.strip() == expected_answer(name, ITEMS)  # each adapter does its own task
        # The replica's own refusal reaches the user, e.g. an adapter the endpoint does not serve.
        client, csrf = signed_in_client(cp)
        try:
            refused = client.post("/dashboard/endpoints/demo-multi-lora/try",
                                  headers={"accept": "application/json"},
                                  data={"csrf_token": csrf, "prompt": "Hi", "adapter_id": "not-loaded"})
        finally:
            client.close()
        assert refused.status_code == 502
        assert "The endpoint answered HTTP 4" in refused.json()["error"]
        for name in TASKS:  # a little more traffic through the URL, as clients would send
            for _ in range(2):
                assert _direct_generation(url, cp.token, name).strip() == expected_answer(name, ITEMS)
        usage = page.locator("table.usage")
        for name in TASKS:  # Try it and the clients above, metered per adapter
            expect(usage.locator("tr", has_text=name).locator("td").first).to_have_text("3",
                                                                                         timeout=30_000)
        expect(page.locator(".timeline")).to_contain_text("created")
        expect(page.locator(".logs")).to_be_visible()
        expect(page.locator(".logs")).not_to_contain_text("GET /health")  # probes are left out
        page.locator("#try-output").scroll_into_view_if_needed()
        page.screenshot(path=str(images / "dashboard-endpoint.png"), full_page=True)

        assert (images / "dashboard-list.png").stat().st_size > 10_000

        page.get_by_role("button", name="Pause").click()
        expect(page.get_by_text("Endpoint paused.")).to_be_visible()
        _expect_state(page, cp, "paused")
        page.get_by_role("button", name="Resume").click()
        _expect_state(page, cp, "running")
        wait_for(lambda: httpx.get(f"{url}/health", headers=cp.headers).status_code == 200, 60, "the gateway")
        assert _try_it(page, "reverse") == outputs["reverse"]

        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete").click()
        expect(page.get_by_text("Endpoint deleted.")).to_be_visible()
        expect(page.locator('tr[data-name="demo-multi-lora"]')).to_have_count(0)
        gone = httpx.get(f"{cp.url}/v2/endpoint/alice/demo-multi-lora", headers=cp.headers)
        assert gone.status_code == 404
