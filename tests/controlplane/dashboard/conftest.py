"""Fixtures for the dashboard tests: Debian's Chromium driven by Playwright, live control planes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.controlplane.live import LiveControlPlane, live_controlplane

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CSRF_PATTERN = re.compile(r'name="csrf_token" value="([^"]+)"')
# Two shared CPU cores under several test suites: give page loads more than Playwright's 5 s.
expect.set_options(timeout=30_000)


# Package scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while it is open, which would break every later test that calls asyncio.run().
@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run `make setup` (it installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    """A fresh browser context (no cookies) per test, at a laptop's size."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def api_only_cp() -> Iterator[LiveControlPlane]:
    """A control plane that stores endpoints but starts no replicas (the reconciler is off)."""
    with live_controlplane(env={"LORAFLEET_RECONCILER_ENABLED": "false", "HF_HUB_OFFLINE": "1"}) as cp:
        yield cp


def sign_in(page, cp: LiveControlPlane) -> None:  # type: ignore[no-untyped-def]
    """Signs `page` in with the control plane's token, with the keyboard only."""
    page.goto(f"{cp.url}/dashboard")
    page.get_by_label("API token", exact=True).fill(cp.token)
    page.get_by_label("API token", exact=True).press("Enter")
    page.wait_for_url(f"{cp.url}/dashboard")


def signed_in_client(cp: LiveControlPlane) -> tuple[httpx.Client, str]:
    """An HTTP client holding a dashboard session cookie, and the CSRF token of that session."""
    client = httpx.Client(base_url=cp.url, timeout=30)
    csrf = CSRF_PATTERN.search(client.get("/dashboard/signin").text)
    assert csrf is not None
    response = client.post("/dashboard/signin", data={"token": cp.token, "csrf_token": csrf.group(1)})
    assert response.status_code == 303, response.text
    found = CSRF_PATTERN.search(client.get("/dashboard").text)
    assert found is not None
    return client, found.group(1)


def create_via_api(cp: LiveControlPlane, name: str, *, repository: str = "org/none",
                   adapters: str = "") -> dict:
    """Creates an endpoint through the REST API (the huggingface_hub body) on the local CPU."""
    model: dict = {"repository": repository, "framework": "pytorch", "image": {"huggingface": {}}}
    if adapters:
        model["env"] = {"LORA_ADAPTERS": adapters}
    body = {"name": name, "type": "protected", "provider": {"vendor": "local", "region": "local"},
            "compute": {"accelerator": "cpu", "instanceType": "cpu", "instanceSize": "x1",
                        "scaling": {"minReplica": 1, "maxReplica": 1}},
            "model": model}
    response = httpx.post(f"{cp.url}/v2/endpoint/{cp.namespace}", json=body, headers=cp.headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()
