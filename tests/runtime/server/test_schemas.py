"""Request bodies: TGI's and OpenAI's fields accepted as clients send them, bad values refused."""

from __future__ import annotations

import json

import pytest
from lorafleet.runtime.engine import FinishReason, GenerationResult, TokenEvent, TokenInfo
from lorafleet.runtime.server import tgi_format
from lorafleet.runtime.server.openai_format import adapter_for_model, sampling_params
from lorafleet.runtime.server.openai_schemas import ChatCompletionRequest, CompletionRequest
from lorafleet.runtime.server.schemas import CompatGenerateRequest, GenerateRequest
from lorafleet.runtime.server.sse import DONE, sse_event
from pydantic import ValidationError


def test_text_generation_clients_full_body_is_accepted():
    # What `text_generation.Client.generate` posts: every field, nulls and defaults included.
    body = {
        "inputs": "Hi",
        "stream": False,
        "parameters": {
            "best_of": None,
            "details": True,
            "do_sample": False,
            "max_new_tokens": 5,
            "repetition_penalty": None,
            "frequency_penalty": None,
            "return_full_text": False,
            "seed": None,
            "stop": [],
            "temperature": None,
            "top_k": None,
            "top_p": None,
            "truncate": None,
            "typical_p": None,
            "watermark": False,
            "decoder_input_details": False,
            "top_n_tokens": None,
            "grammar": None,
        },
    }
    request = CompatGenerateRequest.model_validate(body)
    generation = tgi_format.generation_request(request)
    assert generation.params.max_new_tokens == 5 and generation.params.do_sample is False
    assert generation.adapter_id is None and generation.params.stop == ()


def test_parameters_map_to_the_engine_with_the_same_meaning():
    body = GenerateRequest.model_validate(
        {
            "inputs": "x",
            "parameters": {
                "adapter_id": "r8",
                "temperature": 0.7,
                "top_k": 5,
                "top_p": 0.9,
                "typical_p": 0.5,
                "seed": 3,
                "stop": ["\n"],
                "top_n_tokens": 2,
                "truncate": 10,
                "repetition_penalty": 1.1,
                "frequency_penalty": 0.5,
                "decoder_input_details": True,
            },
        }
    )
    request = tgi_format.generation_request(body)
    p = request.params
    assert (request.adapter_id, request.truncate, request.decoder_input_details) == ("r8", 10, True)
    assert (p.temperature, p.top_k, p.top_p, p.typical_p, p.seed) == (0.7, 5, 0.9, 0.5, 3)
    assert (p.stop, p.top_n_tokens, p.repetition_penalty, p.frequency_penalty) == (("\n",), 2, 1.1, 0.5)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"typical_p": 0}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "up to 4 stop sequences"),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5"),
        ({"best_of": 2}, "`best_of` must be 1"),
        ({"watermark": True}, "`watermark` is not supported"),
        ({"grammar": {"type": "json", "value": {}}}, "`grammar`"),
        ({"seed": -1}, "`seed` must be >= 0"),
    ],
)
def test_out_of_range_parameters_are_refused_with_tgis_message(parameters, message):
    with pytest.raises(ValidationError, match=message):
        GenerateRequest.model_validate({"inputs": "x", "parameters": parameters})


def test_empty_inputs_are_refused():
    with pytest.raises(ValidationError, match="`inputs` cannot be empty"):
        GenerateRequest.model_validate({"inputs": ""})


def test_openai_model_names_the_adapter_and_base_aliases_name_the_base():
    assert adapter_for_model("r8-qv", "/models/base") == "r8-qv"
    for base in (None, "tgi", "dummy", "/models/base", ""):
        assert adapter_for_model(base, "/models/base") is None


def test_openai_temperature_zero_is_greedy_and_absent_temperature_samples():
    greedy = sampling_params(
        ChatCompletionRequest.model_validate(
            {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "top_p": 1.0}
        )
    )
    assert greedy.do_sample is False and greedy.temperature is None and greedy.top_p is None
    default = sampling_params(CompletionRequest.model_validate({"prompt": "hi", "stop": "x"}))
    assert default.do_sample is True and default.stop == ("x",)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": 2}, "`n` must be 1"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "`tools`"),
        ({"presence_penalty": 0.5}, "`presence_penalty`"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "text parts"),
        ({"messages": []}, "at least 1"),
    ],
)
def test_chat_features_we_lack_are_refused_by_name(body, message):
    payload = {"messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(ValidationError, match=message):
        ChatCompletionRequest.model_validate(payload)


def test_completion_prompt_accepts_one_string_or_token_ids():
    assert CompletionRequest.model_validate({"prompt": ["one"]}).prompt_input() == "one"
    assert CompletionRequest.model_validate({"prompt": [1, 2, 3]}).prompt_input() == [1, 2, 3]
    with pytest.raises(ValidationError, match="one prompt"):
        CompletionRequest.model_validate({"prompt": ["a", "b"]})


def _result(text: str, tokens: tuple[TokenInfo, ...]) -> GenerationResult:
    return GenerationResult(
        generated_text=text,
        finish_reason=FinishReason.LENGTH,
        tokens=tokens,
        prompt_tokens=(),
        top_tokens=(),
        seed=None,
        num_prompt_tokens=4,
        adapter_id=None,
    )


def test_stream_events_carry_text_and_details_only_on_the_last_one():
    body = GenerateRequest.model_validate({"inputs": "Hi", "parameters": {"return_full_text": True}})
    token = TokenInfo(id=7, text="lo", logprob=-0.5)
    first = tgi_format.stream_event(body, TokenEvent(index=1, token=token, text="lo"))
    assert first == {
        "index": 1,
        "token": {"id": 7, "text": "lo", "logprob": -0.5, "special": False},
        "generated_text": None,
        "details": None,
    }
    last_event = TokenEvent(
        index=2,
        token=token,
        text="lo",
        finish_reason=FinishReason.LENGTH,
        result=_result("lolo", (token, token)),
    )
    last = tgi_format.stream_event(body, last_event)
    assert last["generated_text"] == "Hilolo"
    assert last["details"] == {
        "finish_reason": "length",
        "generated_tokens": 2,
        "seed": None,
        "input_length": 4,
    }


def test_generate_response_has_details_only_when_asked():
    token = TokenInfo(id=7, text="lo", logprob=-0.5)
    plain = GenerateRequest.model_validate({"inputs": "Hi"})
    assert tgi_format.generate_response(plain, _result("lo", (token,))) == {"generated_text": "lo"}
    detailed = GenerateRequest.model_validate({"inputs": "Hi", "parameters": {"details": True}})
    details = tgi_format.generate_response(detailed, _result("lo", (token,)))["details"]
    assert details["tokens"] == [{"id": 7, "text": "lo", "logprob": -0.5, "special": False}]
    assert details["prefill"] == [] and details["generated_tokens"] == 1


def test_sse_framing_uses_data_with_a_space_and_done_with_a_space():
    assert sse_event({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert json.loads(sse_event({"x": 1})[len(b"data:") :]) == {"x": 1}
    assert DONE == b"data: [DONE]\n\n"
