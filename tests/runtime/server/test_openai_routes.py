"""OpenAI routes driven by the `openai` client and `InferenceClient.chat_completion`."""

from __future__ import annotations

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from lorafleet.runtime.engine import GenerationRequest, SamplingParams

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat_oracle(engine, adapter_id: str | None, max_new_tokens: int = 8):  # type: ignore[no-untyped-def]
    prompt = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    request = GenerationRequest(
        prompt, SamplingParams(max_new_tokens=max_new_tokens), adapter_id=adapter_id, add_special_tokens=False
    )
    return engine.generate([request])[0]


def test_chat_prompt_is_the_templates_tokens_as_transformers_tokenizes_them(model_dir, engine):
    import transformers

    reference = transformers.AutoTokenizer.from_pretrained(model_dir)
    expected_ids = reference.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    prompt = engine.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert engine.tokenizer.encode(prompt, add_special_tokens=False) == list(expected_ids)


@pytest.mark.parametrize("model", ["tgi", "r8-qv", "r64-rslora"])
def test_openai_chat_uses_the_adapter_named_by_model(client, engine, model):
    adapter_id = None if model == "tgi" else model
    completion = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0)
    expected = chat_oracle(engine, adapter_id)
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.generated_text
    assert choice.finish_reason == ("length" if expected.finish_reason.value == "length" else "stop")
    assert completion.usage.prompt_tokens == expected.num_prompt_tokens
    assert completion.usage.completion_tokens == len(expected.tokens)
    assert completion.model == model


def test_openai_chat_stream_concatenates_and_ends_with_done(client, engine):
    stream = client.chat.completions.create(
        model="r16-all",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = chat_oracle(engine, "r16-all")
    assert text == expected.generated_text
    assert chunks[-1].usage.completion_tokens == len(expected.tokens)
    assert len({c.id for c in chunks}) == 1
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1


def test_raw_openai_stream_terminates_with_done_and_a_space(server):
    body = {"model": "tgi", "messages": MESSAGES, "max_tokens": 3, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_openai_completions_with_adapter_and_echo(client, engine):
    prompt = "Once upon a time"
    completion = client.completions.create(
        model="r8-mlp-patterns", prompt=prompt, max_tokens=6, temperature=0
    )
    [expected] = engine.generate(
        [GenerationRequest(prompt, SamplingParams(max_new_tokens=6), adapter_id="r8-mlp-patterns")]
    )
    assert completion.choices[0].text == expected.generated_text
    echoed = client.completions.create(
        model="r8-mlp-patterns", prompt=prompt, max_tokens=6, temperature=0, echo=True
    )
    assert echoed.choices[0].text == prompt + expected.generated_text
    streamed = client.completions.create(
        model="r8-mlp-patterns", prompt=prompt, max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected.generated_text


def test_chat_logprobs_report_each_tokens_logprob_and_alternatives(client, engine):
    completion = client.chat.completions.create(
        model="tgi", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    expected = chat_oracle(engine, None, 4)
    content = completion.choices[0].logprobs.content
    assert [pytest.approx(c.logprob, abs=1e-3) for c in content] == [t.logprob for t in expected.tokens]
    assert all(len(c.top_logprobs) == 3 for c in content)


def test_inference_client_chat_completion_with_adapter_and_stream(server, engine):
    hf = InferenceClient(server.url)
    out = hf.chat_completion(MESSAGES, model="r8-qv", max_tokens=8, temperature=0)
    expected = chat_oracle(engine, "r8-qv")
    assert out.choices[0].message.content == expected.generated_text
    base = hf.chat_completion(MESSAGES, max_tokens=8, temperature=0)  # sends model="dummy": the base
    assert base.choices[0].message.content == chat_oracle(engine, None).generated_text
    chunks = list(hf.chat_completion(MESSAGES, model="r8-qv", max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.generated_text


def test_chat_body_on_the_root_route_is_served_for_old_huggingface_hub(server, engine):
    body = {
        "model": "tgi",
        "messages": MESSAGES,
        "max_tokens": 8,
        "temperature": 0,
        "stream": False,
        "frequency_penalty": None,
        "logit_bias": None,
        "logprobs": None,
        "n": None,
        "seed": None,
    }
    answer = httpx.post(f"{server.url}/", json=body, timeout=60).json()
    assert answer["choices"][0]["message"]["content"] == chat_oracle(engine, None).generated_text


def test_models_lists_the_base_and_loaded_adapters(client, model_dir, adapters):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == str(model_dir)
    assert set(adapters) <= set(ids[1:])


def test_openai_unknown_adapter_is_a_422_with_the_adapter_named(client):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model="no-such-adapter", messages=MESSAGES, max_tokens=2)
    # TGI's error body (`error` is a string, so `huggingface_hub` can read it); openai keeps it as `.body`.
    assert "no-such-adapter" in raised.value.body
