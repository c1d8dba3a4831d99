"""The endpoint page's Adapters section in Chromium: the live set with readiness per adapter, the
add/replace form, Remove with a confirmation, the API's refusals shown on the page, and (with a
real replica) an added adapter turning ready without a reload."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.controlplane.dashboard.conftest import create_via_api, sign_in, signed_in_client
from tests.controlplane.live import LiveControlPlane
from tests.controlplane.replicas import endpoint, real_body, real_controlplane
from tests.fixtures import standard_adapters, tiny_model

pytestmark = pytest.mark.browser


def _rows(page):  # type: ignore[no-untyped-def]
    return page.locator("#endpoint-adapters tbody tr[data-adapter]")


def _add(page, name: str, source: str, revision: str = "") -> None:  # type: ignore[no-untyped-def]
    page.get_by_label("Adapter name", exact=True).fill(name)
    page.get_by_label("Source", exact=True).fill(source)
    page.get_by_label("Revision", exact=True).fill(revision)
    page.get_by_role("button", name="Add or replace adapter").click()


def test_adapters_section_lists_adds_refuses_and_removes(page, api_only_cp: LiveControlPlane) -> None:
    create_via_api(api_only_cp, "ep-adapters", adapters="seed=org/seed-adapter")
    sign_in(page, api_only_cp)
    page.goto(f"{api_only_cp.url}/dashboard/endpoints/ep-adapters")
    expect(_rows(page)).to_have_count(1)
    seed = page.locator('tr[data-adapter="seed"]')
    expect(seed).to_contain_text("org/seed-adapter")
    expect(seed.locator(".state")).to_have_text("pending")
    expect(seed.locator(".ready")).to_have_text("0/0")

    _add(page, "org/coder", "org/coder", "v2")
    expect(page.locator(".notice")).to_contain_text("Adapter saved")
    expect(page.locator('tr[data-adapter="org/coder"]')).to_contain_text("org/coder@v2")
    expect(_rows(page)).to_have_count(2)

    _add(page, "evil", "/etc")  # the API's refusal, on the page, nothing added
    expect(page.get_by_role("alert")).to_contain_text("LOCAL_ROOTS")
    expect(_rows(page)).to_have_count(2)

    page.once("dialog", lambda dialog: dialog.dismiss())  # a dismissed confirmation removes nothing
    page.get_by_role("button", name="Remove adapter seed").click()
    expect(_rows(page)).to_have_count(2)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Remove adapter seed").click()
    expect(page.locator(".notice")).to_contain_text("Adapter removed")
    expect(_rows(page)).to_have_count(1)
    items = httpx.get(
        f"{api_only_cp.url}/v2/endpoint/alice/ep-adapters/adapters", headers=api_only_cp.headers
    )
    assert [i["name"] for i in items.json()["items"]] == ["org/coder"]


def test_adapter_forms_need_the_session_csrf_token_and_the_own_namespace(
    api_only_cp: LiveControlPlane,
) -> None:
    create_via_api(api_only_cp, "ep-csrf", adapters="keep=org/keep")
    client, csrf = signed_in_client(api_only_cp)
    try:
        base = "/dashboard/endpoints/ep-csrf/adapters"
        assert client.post(base, data={"adapter": "x", "source": "org/x"}).status_code == 403
        assert (
            client.post(f"{base}/remove", data={"adapter": "keep", "csrf_token": "forged"}).status_code == 403
        )
        missing = client.post(
            "/dashboard/endpoints/nope/adapters/remove", data={"adapter": "keep", "csrf_token": csrf}
        )
        assert missing.status_code == 404
    finally:
        client.close()
    items = httpx.get(
        f"{api_only_cp.url}/v2/endpoint/alice/ep-csrf/adapters", headers=api_only_cp.headers
    ).json()
    assert [i["name"] for i in items["items"]] == ["keep"]


@pytest.mark.slow
def test_an_added_adapter_turns_ready_on_the_replica_without_a_reload(page) -> None:  # type: ignore[no-untyped-def]
    adapters = standard_adapters(tiny_model("mistral"))
    with real_controlplane() as cp, endpoint(cp, real_body("ep-dash")) as ep:
        ep.wait_running()
        sign_in(page, cp)
        page.goto(f"{cp.url}/dashboard/endpoints/ep-dash")
        expect(page.locator('tr[data-adapter="support"] .state')).to_have_text("ready", timeout=120_000)
        _add(page, "coder", str(adapters["r16-all"]))
        row = page.locator('tr[data-adapter="coder"]')
        expect(row.locator(".state")).to_have_text("ready", timeout=120_000)  # the partial refreshes
        expect(row.locator(".ready")).to_have_text("1/1")
        assert ep.generate(adapter_id="coder")
