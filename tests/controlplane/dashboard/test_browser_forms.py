"""The dashboard in headless Chromium against a real control plane that launches nothing:
sign-in, refused forms that keep their input, sessions, CSRF, phone width, no-JS delete."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.controlplane.dashboard.conftest import create_via_api, sign_in, signed_in_client

pytestmark = pytest.mark.browser

LABELS = ["Endpoint name", "Base model", "Adapters", "Vendor", "Region", "Instance type", "Instance size",
          "Min replicas", "Max replicas", "Environment variables", "Secrets"]


def test_wrong_token_is_refused_and_keyboard_sign_in_reaches_the_list(page, api_only_cp) -> None:
    page.goto(f"{api_only_cp.url}/dashboard")
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard/signin")
    token = page.get_by_label("API token", exact=True)
    expect(token).to_be_focused()  # keyboard users start typing at once
    token.fill("lf_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".field-error")).to_contain_text("invalid or revoked token")
    sign_in(page, api_only_cp)
    expect(page.get_by_role("heading", name="Endpoints")).to_be_visible()
    expect(page.locator(".namespace")).to_have_text(api_only_cp.namespace)
    cookie = next(c for c in page.context.cookies() if c["name"] == "lorafleet_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert api_only_cp.token not in cookie["value"]


def test_create_form_has_every_label_bound_to_its_input(page, api_only_cp) -> None:
    sign_in(page, api_only_cp)
    page.get_by_role("link", name="Create endpoint").first.click()
    page.get_by_text("Advanced configuration").click()
    for label in LABELS:
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    expect(page.get_by_label("Instance size", exact=True)).to_have_value("x1")
    expect(page.get_by_label("Min replicas", exact=True)).to_have_value("1")
    expect(page.get_by_label("Max replicas", exact=True)).to_have_value("1")
    expect(page.get_by_label("Instance type", exact=True)).to_have_value("cpu")  # from this host's catalog
    expect(page.get_by_role("button", name="Create endpoint")).to_be_visible()


def _fill_create_form(page, name: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_label("Endpoint name", exact=True).fill(name)
    page.get_by_label("Base model", exact=True).fill("mistralai/Mistral-7B-v0.1")
    page.get_by_label("Adapters", exact=True).fill("support=predibase/customer_support\npredibase/magicoder")
    page.get_by_text("Advanced configuration").click()
    page.get_by_label("Environment variables", exact=True).fill("MAX_INPUT_LENGTH=1024")
    page.get_by_label("Max replicas", exact=True).fill("2")


def test_duplicate_name_shows_the_api_message_and_keeps_the_input(page, api_only_cp) -> None:
    create_via_api(api_only_cp, "taken")
    sign_in(page, api_only_cp)
    page.goto(f"{api_only_cp.url}/dashboard/new")
    _fill_create_form(page, "taken")
    page.get_by_role("button", name="Create endpoint").click()
    name = page.get_by_label("Endpoint name", exact=True)
    expect(page.locator("#name-error")).to_have_text("Endpoint 'taken' already exists in namespace 'alice'")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(name).to_have_value("taken")
    expect(page.get_by_label("Adapters", exact=True)).to_have_value(
        "support=predibase/customer_support\npredibase/magicoder")
    expect(page.get_by_label("Environment variables", exact=True)).to_have_value("MAX_INPUT_LENGTH=1024")
    expect(page.get_by_label("Max replicas", exact=True)).to_have_value("2")
    # Fixing the one field is enough: the rest was kept.
    name.fill("not-taken")
    page.get_by_role("button", name="Create endpoint").click()
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard/endpoints/not-taken?did=created")
    raw = httpx.get(f"{api_only_cp.url}/v2/endpoint/alice/not-taken", headers=api_only_cp.headers).json()
    assert raw["model"]["env"] == {"MAX_INPUT_LENGTH": "1024",
                                   "LORA_ADAPTERS": "support=predibase/customer_support,predibase/magicoder"}
    assert raw["compute"]["scaling"] == {"minReplica": 1, "maxReplica": 2, "scaleToZeroTimeout": None}


def test_unknown_instance_type_shows_the_catalog_error_next_to_it(page, api_only_cp) -> None:
    sign_in(page, api_only_cp)
    page.goto(f"{api_only_cp.url}/dashboard/new")
    _fill_create_form(page, "odd-hardware")
    # A stale page or a hand-made request can name hardware the catalog does not have.
    page.eval_on_selector("#instance_type", """select => {
        const option = new Option("nvidia-z9", "nvidia-z9", true, true);
        option.dataset.vendor = "local"; option.dataset.region = "local";
        select.add(option); select.value = "nvidia-z9"; }""")
    page.get_by_role("button", name="Create endpoint").click()
    expect(page.locator("#instance_type-error")).to_contain_text("unknown instance type 'nvidia-z9'")
    expect(page.locator("#instance_type-error")).to_contain_text("available instance types: cpu")
    expect(page.get_by_label("Instance type", exact=True)).to_have_value("nvidia-z9")
    expect(page.get_by_label("Endpoint name", exact=True)).to_have_value("odd-hardware")
    response = httpx.get(f"{api_only_cp.url}/v2/endpoint/alice/odd-hardware", headers=api_only_cp.headers)
    assert response.status_code == 404  # nothing was created


def test_bad_lines_are_named_next_to_their_field(page, api_only_cp) -> None:
    sign_in(page, api_only_cp)
    page.goto(f"{api_only_cp.url}/dashboard/new")
    _fill_create_form(page, "bad-lines")
    page.get_by_label("Environment variables", exact=True).fill("MAX_INPUT_LENGTH=1024\nJUSTAWORD")
    page.get_by_label("Min replicas", exact=True).fill("three")
    page.get_by_role("button", name="Create endpoint").click()
    expect(page.locator("#env-error")).to_contain_text("line 2 must look like KEY=VALUE")
    expect(page.locator("#min_replica-error")).to_contain_text("Min replicas must be a whole number")
    expect(page.get_by_label("Min replicas", exact=True)).to_have_value("three")


def test_post_without_session_cookie_or_with_wrong_csrf_token_is_refused(api_only_cp) -> None:
    create_via_api(api_only_cp, "guarded")
    client, csrf = signed_in_client(api_only_cp)
    try:
        wrong = client.post("/dashboard/endpoints/guarded/pause", data={"csrf_token": csrf[:-2] + "xx"})
        assert wrong.status_code == 403
        missing = client.post("/dashboard/endpoints/guarded/pause", data={})
        assert missing.status_code == 403
        pause_url = f"{api_only_cp.url}/dashboard/endpoints/guarded/pause"
        no_cookie = httpx.post(pause_url, data={"csrf_token": csrf})
        assert no_cookie.status_code == 403
        forged = httpx.post(pause_url, data={"csrf_token": csrf},
                            cookies={"lorafleet_session": "gAAAAAforged"})
        assert forged.status_code == 403
        page_without_cookie = httpx.get(f"{api_only_cp.url}/dashboard/endpoints/guarded")
        assert page_without_cookie.status_code == 303
        location = page_without_cookie.headers["location"]
        assert location == "/dashboard/signin?next=%2Fdashboard%2Fendpoints%2Fguarded"
        partial_without_cookie = httpx.get(f"{api_only_cp.url}/dashboard/partials/endpoints")
        assert partial_without_cookie.status_code == 401
        state = httpx.get(f"{api_only_cp.url}/v2/endpoint/alice/guarded", headers=api_only_cp.headers)
        assert state.json()["status"]["state"] != "paused"  # none of the refused posts acted
        accepted = client.post("/dashboard/endpoints/guarded/pause", data={"csrf_token": csrf})
        assert accepted.status_code == 303
    finally:
        client.close()


def test_wrong_csrf_token_in_the_page_is_refused_in_the_browser(page, api_only_cp) -> None:
    create_via_api(api_only_cp, "tampered")
    sign_in(page, api_only_cp)
    page.goto(f"{api_only_cp.url}/dashboard/endpoints/tampered")
    page.eval_on_selector_all('input[name="csrf_token"]', "inputs => inputs.forEach(i => i.value = 'x')")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("heading", name="Request refused")).to_be_visible()
    expect(page.get_by_text("security token is missing or stale")).to_be_visible()


def test_sign_out_ends_the_session(page, api_only_cp) -> None:
    sign_in(page, api_only_cp)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard/signin")
    page.goto(f"{api_only_cp.url}/dashboard")
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard/signin")


def test_revoked_token_ends_its_dashboard_session(page, api_only_cp) -> None:
    token = api_only_cp.create_token("bob")
    page.goto(f"{api_only_cp.url}/dashboard/signin")
    page.get_by_label("API token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".namespace")).to_have_text("bob")
    api_only_cp.cli("revoke-token", "--prefix", token[:10])
    page.goto(f"{api_only_cp.url}/dashboard")
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard/signin")


def test_list_fits_a_phone_screen(browser, api_only_cp) -> None:
    create_via_api(api_only_cp, "phone-view", adapters="a=org/x,b=org/y")
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        sign_in(page, api_only_cp)
        expect(page.get_by_role("link", name="phone-view")).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        page.goto(f"{api_only_cp.url}/dashboard/new")
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    finally:
        context.close()


def test_delete_without_javascript_asks_on_a_confirmation_page(browser, api_only_cp) -> None:
    create_via_api(api_only_cp, "no-js")
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, api_only_cp)
        page.goto(f"{api_only_cp.url}/dashboard/endpoints/no-js")
        page.get_by_role("button", name="Delete").click()
        expect(page.get_by_role("heading", name="Delete endpoint no-js?")).to_be_visible()
        page.get_by_role("button", name="Delete").click()
        expect(page.get_by_text("Endpoint deleted.")).to_be_visible()
        gone = httpx.get(f"{api_only_cp.url}/v2/endpoint/alice/no-js", headers=api_only_cp.headers)
        assert gone.status_code == 404
    finally:
        context.close()


def test_scale_to_zero_resume_and_try_it_without_a_replica(page, api_only_cp) -> None:
    create_via_api(api_only_cp, "idle", adapters="a=org/x")
    sign_in(page, api_only_cp)
    page.get_by_role("link", name="idle").click()
    page.get_by_role("button", name="Scale to zero").click()
    expect(page.get_by_text("Endpoint scaled to zero.")).to_be_visible()
    expect(page.locator("#endpoint-status .status-line .state")).to_have_text("scaledToZero")
    expect(page.locator(".timeline")).to_contain_text("scaled-to-zero")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#endpoint-status .status-line .state")).to_have_text("pending")
    page.get_by_label("Prompt", exact=True).fill("Hello")
    page.get_by_label("Adapter", exact=True).select_option("a")
    page.get_by_role("button", name="Generate").click()
    # Through the gateway like any client: no ready replica yet, so a 503 that says so.
    expect(page.locator("#try-output [role=alert]")).to_contain_text("The endpoint answered HTTP 503")
    expect(page.locator("#try-output [role=alert]")).to_contain_text("Endpoint alice/idle")


def test_another_namespace_endpoint_is_not_found(page, api_only_cp) -> None:
    create_via_api(api_only_cp, "alices-secret")
    token = api_only_cp.create_token("carol")
    page.goto(f"{api_only_cp.url}/dashboard/signin")
    page.get_by_label("API token", exact=True).fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".namespace")).to_have_text("carol")
    expect(page.get_by_text("No endpoints yet.")).to_be_visible()
    response = page.goto(f"{api_only_cp.url}/dashboard/endpoints/alices-secret")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Endpoint not found")).to_be_visible()


def test_pages_forbid_framing_and_foreign_scripts_and_are_not_cached(api_only_cp) -> None:
    client, _ = signed_in_client(api_only_cp)
    try:
        for path in ("/dashboard", "/dashboard/new", "/dashboard/signin"):
            response = client.get(path, follow_redirects=True)
            assert response.status_code == 200
            policy = response.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["cache-control"] == "no-store"
        # Signed in already: the sign-in page sends the browser on to the list.
        assert client.get("/dashboard/signin").headers["location"] == "/dashboard"
        assert client.get("/dashboard/static/dashboard.css").status_code == 200
    finally:
        client.close()


def test_sign_in_returns_to_the_page_that_asked_for_it(page, api_only_cp) -> None:
    create_via_api(api_only_cp, "deep-link")
    page.goto(f"{api_only_cp.url}/dashboard/endpoints/deep-link")
    page.get_by_label("API token", exact=True).fill(api_only_cp.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard/endpoints/deep-link")
    page.context.clear_cookies()
    page.goto(f"{api_only_cp.url}/dashboard/signin?next=https://evil.example/")  # never leaves the site
    page.get_by_label("API token", exact=True).fill(api_only_cp.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard")


def test_create_form_is_usable_with_the_keyboard(page, api_only_cp) -> None:
    sign_in(page, api_only_cp)
    page.goto(f"{api_only_cp.url}/dashboard/new")
    page.get_by_label("Endpoint name", exact=True).focus()
    page.keyboard.type("keyboard-only")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Base model", exact=True)).to_be_focused()
    page.keyboard.type("mistralai/Mistral-7B-v0.1")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Adapters", exact=True)).to_be_focused()
    page.keyboard.type("a=org/adapter-a")
    page.get_by_text("Advanced configuration").focus()
    page.keyboard.press("Enter")  # <details> opens from the keyboard
    expect(page.get_by_label("Environment variables", exact=True)).to_be_visible()
    page.get_by_role("button", name="Create endpoint").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard/endpoints/keyboard-only?did=created")


def test_session_survives_a_control_plane_restart(page, api_only_cp) -> None:
    sign_in(page, api_only_cp)
    api_only_cp.restart()
    page.reload()
    expect(page).to_have_url(f"{api_only_cp.url}/dashboard")
    expect(page.locator(".namespace")).to_have_text(api_only_cp.namespace)
