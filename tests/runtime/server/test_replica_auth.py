"""A replica with an API key (`API_KEY`, as the control plane starts it) serves only its key holder.

Written as the attacks: someone who reaches the replica's port without the key, with a wrong
one, with another scheme, or on a route that does not exist; and the key leaking through
`/info`, `/metrics`, an error or the log. The real clients work with the key.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import UnknownError as HubUnknownError
from text_generation import Client as TGIClient
from text_generation.errors import UnknownError

PROMPT = "The adapter answers the question"
ROUTES = [
    ("GET", "/info", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/models", None),
    ("GET", "/", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/no-such-route", None),
    ("POST", "/generate", {"inputs": PROMPT, "parameters": {"max_new_tokens": 1}}),
    ("POST", "/generate_stream", {"inputs": PROMPT, "parameters": {"max_new_tokens": 1}}),
    ("POST", "/", {"inputs": PROMPT, "parameters": {"max_new_tokens": 1}}),
    ("POST", "/tokenize", {"inputs": PROMPT}),
    ("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
]
WRONG_HEADERS = [
    {},
    {"Authorization": "Bearer not-the-key"},
    {"Authorization": "Bearer"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"X-Api-Key": "whatever"},
]


def _call(server, method: str, path: str, body: object, headers: dict[str, str]) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_but_the_probes_refuses_a_missing_or_wrong_key(
    secured_server, method, path, body
) -> None:  # type: ignore[no-untyped-def]
    for headers in WRONG_HEADERS:
        response = _call(secured_server, method, path, body, headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["error_type"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    wrong_key = {"Authorization": f"Bearer {secured_server.api_key}x"}
    assert _call(secured_server, method, path, body, wrong_key).status_code == 401
    answered = _call(secured_server, method, path, body, secured_server.headers)
    assert answered.status_code == (404 if path == "/no-such-route" else 200), answered.text


def test_the_health_probes_answer_without_a_key(secured_server) -> None:  # type: ignore[no-untyped-def]
    for path in ("/health", "/ping"):
        response = httpx.get(f"{secured_server.url}{path}", timeout=30)
        assert response.status_code == 200 and response.json() == {}


def test_huggingface_hub_inference_client_works_with_the_key_and_fails_without(secured_server) -> None:  # type: ignore[no-untyped-def]
    client = InferenceClient(secured_server.url, token=secured_server.api_key)
    assert client.text_generation(PROMPT, max_new_tokens=3, adapter_id="r8-qv")
    chat = client.chat_completion([{"role": "user", "content": "hi"}], max_tokens=3)
    assert chat.choices[0].message.content is not None
    with pytest.raises(HubUnknownError, match="Unauthorized") as caught:
        InferenceClient(secured_server.url, token="not-the-key").text_generation(PROMPT, max_new_tokens=1)
    assert caught.value.__cause__.response.status_code == 401  # type: ignore[union-attr]


def test_openai_client_works_with_the_key_and_fails_without(secured_server) -> None:  # type: ignore[no-untyped-def]
    base_url = f"{secured_server.url}/v1"
    client = openai.OpenAI(base_url=base_url, api_key=secured_server.api_key, max_retries=0, timeout=60)
    chat = client.chat.completions.create(
        model="r16-all", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0
    )
    assert chat.model == "r16-all" and chat.usage is not None and chat.usage.completion_tokens == 3
    assert [m.id for m in client.models.list()][0]
    stranger = openai.OpenAI(base_url=base_url, api_key="not-the-key", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        stranger.completions.create(model="tgi", prompt=PROMPT, max_tokens=1)


def test_text_generation_client_works_with_the_key_and_fails_without(secured_server) -> None:  # type: ignore[no-untyped-def]
    client = TGIClient(secured_server.url, headers=secured_server.headers, timeout=60)
    response = client.generate(PROMPT, max_new_tokens=3)
    assert response.details.generated_tokens == 3
    streamed = list(client.generate_stream(PROMPT, max_new_tokens=3))
    assert streamed[-1].details is not None
    with pytest.raises(UnknownError, match="Unauthorized"):
        TGIClient(secured_server.url, timeout=60).generate(PROMPT, max_new_tokens=1)


def test_the_key_appears_in_no_answer_and_no_log(secured_server) -> None:  # type: ignore[no-untyped-def]
    key, headers = secured_server.api_key, secured_server.headers
    answers = [
        httpx.get(f"{secured_server.url}/info", headers=headers, timeout=30).text,
        httpx.get(f"{secured_server.url}/metrics", headers=headers, timeout=30).text,
        httpx.get(
            f"{secured_server.url}/info", headers={"Authorization": f"Bearer {key[:-1]}"}, timeout=30
        ).text,
        httpx.post(f"{secured_server.url}/generate", json={"inputs": ""}, headers=headers, timeout=30).text,
    ]
    assert all(key not in answer for answer in answers)
    logs = secured_server.log_file.read_text() + secured_server.log()
    assert "GET /info" in logs  # the access log is there...
    assert key not in logs  # ...and the key is not
    assert "no --api-key" not in logs  # a keyed replica does not call itself open
