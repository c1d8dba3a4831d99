"""The hardware choices come from the catalog and narrow each other (vendor → region → instance
type); the seed article's aws / us-east-1 names work through the form when a catalog maps them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.controlplane.dashboard.conftest import sign_in
from tests.controlplane.live import LiveControlPlane, live_controlplane

pytestmark = pytest.mark.browser

INTEL = {"accelerator": "cpu", "architecture": "Intel"}
CATALOG = {"vendors": [
    {"name": "local", "regions": [{"name": "local", "label": "This host", "computes": "detect"}]},
    {"name": "aws", "regions": [
        {"name": "us-east-1", "label": "N. Virginia", "computes": [
            {"instanceType": "nvidia-l4", "instanceSize": "x1", "accelerator": "gpu", "numAccelerators": 1,
             "gpuModel": "nvidia-l4-not-on-this-host", "architecture": "Nvidia L4"},
            {**INTEL, "instanceType": "intel-icl", "instanceSize": "x2"}]},
        {"name": "eu-west-1", "label": "Ireland", "computes": [
            {**INTEL, "instanceType": "intel-spr", "instanceSize": "x4"}]}]},
]}


@pytest.fixture(scope="module")
def catalog_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveControlPlane]:
    path: Path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    path.write_text(json.dumps(CATALOG))
    with live_controlplane(catalog=path, env={"LORAFLEET_RECONCILER_ENABLED": "false"}) as cp:
        yield cp


def _choosable(page, select_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    script = "s => [...s.options].filter(o => !o.disabled).map(o => o.value)"
    return page.eval_on_selector(f"#{select_id}", script)


def test_vendor_and_region_narrow_the_instance_types(page, catalog_cp) -> None:
    sign_in(page, catalog_cp)
    page.goto(f"{catalog_cp.url}/dashboard/new")
    vendor, region = page.get_by_label("Vendor", exact=True), page.get_by_label("Region", exact=True)
    instance_type = page.get_by_label("Instance type", exact=True)
    vendor.select_option("aws")
    assert _choosable(page, "region") == ["us-east-1", "eu-west-1"]
    expect(region).to_have_value("us-east-1")
    assert _choosable(page, "instance_type") == ["nvidia-l4", "intel-icl"]
    region.select_option("eu-west-1")
    assert _choosable(page, "instance_type") == ["intel-spr"]
    expect(instance_type).to_have_value("intel-spr")
    vendor.select_option("local")
    assert _choosable(page, "region") == ["local"]
    assert "cpu" in _choosable(page, "instance_type")
    expect(instance_type).to_have_value("cpu")


def test_seed_article_hardware_names_create_through_the_form(page, catalog_cp) -> None:
    sign_in(page, catalog_cp)
    page.goto(f"{catalog_cp.url}/dashboard/new")
    page.get_by_label("Endpoint name", exact=True).fill("mistral-7b-multi-lora")
    page.get_by_label("Base model", exact=True).fill("mistralai/Mistral-7B-v0.1")
    page.get_by_label("Vendor", exact=True).select_option("aws")
    page.get_by_label("Region", exact=True).select_option("us-east-1")
    page.get_by_label("Instance type", exact=True).select_option("intel-icl")
    page.get_by_label("Instance size", exact=True).fill("x2")
    page.get_by_text("Advanced configuration").click()
    page.get_by_label("Environment variables", exact=True).fill(
        "LORA_ADAPTERS=predibase/customer_support,predibase/magicoder\nMAX_BATCH_PREFILL_TOKENS=2048")
    page.get_by_role("button", name="Create endpoint").click()
    expect(page.get_by_role("heading", name="mistral-7b-multi-lora")).to_be_visible()
    url = f"{catalog_cp.url}/v2/endpoint/alice/mistral-7b-multi-lora"
    raw = httpx.get(url, headers=catalog_cp.headers).json()
    assert raw["provider"] == {"vendor": "aws", "region": "us-east-1"}
    compute = raw["compute"]
    assert compute["accelerator"] == "cpu"  # from the catalog entry the user picked
    assert (compute["instanceType"], compute["instanceSize"]) == ("intel-icl", "x2")
    assert raw["model"]["env"]["LORA_ADAPTERS"] == "predibase/customer_support,predibase/magicoder"
    expect(page.locator(".spec")).to_contain_text("predibase/magicoder")


def test_hardware_this_host_cannot_provide_is_refused_next_to_the_size(page, catalog_cp) -> None:
    sign_in(page, catalog_cp)
    page.goto(f"{catalog_cp.url}/dashboard/new")
    page.get_by_label("Endpoint name", exact=True).fill("needs-a-gpu")
    page.get_by_label("Base model", exact=True).fill("mistralai/Mistral-7B-v0.1")
    page.get_by_label("Vendor", exact=True).select_option("aws")
    page.get_by_label("Instance type", exact=True).select_option("nvidia-l4")
    page.get_by_role("button", name="Create endpoint").click()
    expect(page.locator("#instance_size-error")).to_contain_text("needs 1 nvidia-l4-not-on-this-host GPU(s)")
    expect(page.get_by_label("Instance type", exact=True)).to_have_value("nvidia-l4")
    expect(page.get_by_label("Vendor", exact=True)).to_have_value("aws")
