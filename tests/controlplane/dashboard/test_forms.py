"""The create form → the HF v2 create body; only the form's syntax is checked here."""

from __future__ import annotations

import pytest
from lorafleet.controlplane.dashboard.forms import (
    EndpointForm,
    FormError,
    build_create_payload,
    parse_adapters,
    parse_key_values,
)
from lorafleet.controlplane.endpoints.schemas import EndpointCreate


def _form(**overrides: str) -> EndpointForm:
    values = {"name": "multi-lora", "repository": "mistralai/Mistral-7B-v0.1", "vendor": "aws",
              "region": "us-east-1", "instance_type": "nvidia-l4", "instance_size": "x1",
              "min_replica": "1", "max_replica": "1"}
    return EndpointForm(**{**values, **overrides})


def test_seed_article_form_becomes_the_body_huggingface_hub_sends() -> None:
    form = _form(adapters="predibase/customer_support\nmagicoder=predibase/magicoder\n",
                 env="MAX_INPUT_LENGTH=1024\nMAX_TOTAL_TOKENS=1512", secrets="HF_TOKEN=hf_abc")
    payload = build_create_payload(form, accelerator="gpu")
    assert payload["name"] == "multi-lora"
    assert payload["provider"] == {"vendor": "aws", "region": "us-east-1"}
    assert payload["compute"] == {"accelerator": "gpu", "instanceType": "nvidia-l4", "instanceSize": "x1",
                                  "scaling": {"minReplica": 1, "maxReplica": 1}}
    assert payload["model"]["repository"] == "mistralai/Mistral-7B-v0.1"
    adapters = "predibase/customer_support,magicoder=predibase/magicoder"
    assert payload["model"]["env"] == {"MAX_INPUT_LENGTH": "1024", "MAX_TOTAL_TOKENS": "1512",
                                       "LORA_ADAPTERS": adapters}
    assert payload["model"]["secrets"] == {"HF_TOKEN": "hf_abc"}
    EndpointCreate.model_validate(payload)  # the REST API's own schema accepts it


def test_no_adapters_and_no_env_send_no_env() -> None:
    payload = build_create_payload(_form(), accelerator="cpu")
    assert "env" not in payload["model"]
    assert "secrets" not in payload["model"]


def test_key_value_lines_skip_blanks_and_comments_and_keep_equals_in_values() -> None:
    assert parse_key_values("# comment\n\n A = 1 \nB=x=y\n", label="Env") == {"A": "1", "B": "x=y"}


@pytest.mark.parametrize("text, fragment",
                         [("JUSTAKEY", "line 1"), ("A=1\n=2", "line 2"), ("A=1\nA=2", "set twice")])
def test_bad_key_value_line_is_named_in_the_error(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_key_values(text, label="Environment variables")


def test_adapter_line_with_a_comma_is_refused() -> None:
    with pytest.raises(ValueError, match="one adapter per line"):
        parse_adapters("a,b")


def test_adapter_lines_trim_spaces_around_names_and_paths() -> None:
    assert parse_adapters("  x = /models/x \n\n/models/y\n") == ["x=/models/x", "/models/y"]


def test_unreadable_fields_are_all_reported_at_once() -> None:
    form = _form(min_replica="one", max_replica="", env="NOEQUALS", secrets="S")
    with pytest.raises(FormError) as caught:
        build_create_payload(form, accelerator="gpu")
    assert set(caught.value.errors) == {"min_replica", "max_replica", "env", "secrets"}
    assert "Min replicas must be a whole number" in caught.value.errors["min_replica"]


def test_lora_adapters_given_twice_is_refused_on_the_adapters_field() -> None:
    form = _form(adapters="a=/x", env="LORA_ADAPTERS=b")
    with pytest.raises(FormError) as caught:
        build_create_payload(form, accelerator="gpu")
    assert "LORA_ADAPTERS" in caught.value.errors["adapters"]


def test_form_keeps_every_value_verbatim_for_redisplay() -> None:
    posted = {"name": " My Name ", "adapters": "a=/x\n", "env": "K=V", "min_replica": "abc",
              "csrf_token": "t"}
    form = EndpointForm.from_form(posted)
    assert form.name == " My Name "
    assert form.adapters == "a=/x\n"
    assert form.min_replica == "abc"
    assert form.instance_size == ""  # a posted form is taken as posted; the default is for new forms
