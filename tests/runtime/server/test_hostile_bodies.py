"""Hostile request bodies cost a replica bounded memory and never stall it.

Written as the attacks, against a real replica with its API key: a 24 MB body (declared, and
chunked so no length is declared), a long `/tokenize` while the control plane probes
`/health`, a prompt far over `max_input_tokens` (with and without `truncate`), text the
tokenizer cannot read, and NaN/inf sampling parameters on every route.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from lorafleet.runtime.tokenizer import Tokenizer

PROMPT = "The adapter answers the question"
BODY_BYTES = 24_000_000
PAYLOAD_LIMIT = 2_000_000  # the runtime's default


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def _connect(server):  # type: ignore[no-untyped-def]
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _head(server, extra: str) -> bytes:  # type: ignore[no-untyped-def]
    return (
        f"POST /generate HTTP/1.1\r\nHost: replica\r\nAuthorization: Bearer {server.api_key}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _read_response(sock: socket.socket, received: bytes = b"") -> tuple[bytes, dict]:  # type: ignore[type-arg]
    """The status line and JSON body of one response (read by its Content-Length: the replica
    keeps the connection open and discards whatever body is still coming)."""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k == b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b"\r\n")[0], json.loads(body)


def test_a_declared_24mb_body_is_refused_within_a_second_before_it_is_sent(secured_server) -> None:  # type: ignore[no-untyped-def]
    with _connect(secured_server) as sock:
        sock.sendall(_head(secured_server, f"Content-Length: {BODY_BYTES}\r\n"))
        started = time.monotonic()
        status, error = _read_response(sock)  # no body byte was sent: nothing was waited for
        elapsed = time.monotonic() - started
    assert status.startswith(b"HTTP/1.1 413"), status
    assert error["error_type"] == "payload_too_large" and "--payload-limit" in error["error"]
    assert elapsed < 1.0  # the bound; it is answered as soon as the headers are parsed


def test_a_chunked_24mb_body_is_refused_within_a_second_without_being_read(secured_server) -> None:  # type: ignore[no-untyped-def]
    warm = {"inputs": "warm", "parameters": {"max_new_tokens": 2}}  # the peak RSS below is after serving
    httpx.post(f"{secured_server.url}/generate", json=warm, headers=secured_server.headers, timeout=60)
    peak_before = _peak_rss_kib(secured_server.process.pid)
    frame = _chunk(b"x" * 65536)
    sent, answer, pending = 0, b"", _chunk(b'{"inputs": "')
    with _connect(secured_server) as sock:
        sock.sendall(_head(secured_server, "Transfer-Encoding: chunked\r\n"))
        started = time.monotonic()
        sock.setblocking(False)
        while sent < BODY_BYTES and not answer:  # send as fast as the replica reads; stop at its answer
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if not readable and not writable:
                pytest.fail("the replica neither read nor answered for 30 s")
            if readable:
                answer = sock.recv(65536)
            elif writable:
                done = sock.send(pending)
                sent, pending = sent + done, pending[done:] or frame
        elapsed = time.monotonic() - started
        sock.settimeout(30)  # bounds a hang only
        status, error = _read_response(sock, answer)
    assert status.startswith(b"HTTP/1.1 413") and error["error_type"] == "payload_too_large", status
    assert sent < BODY_BYTES // 2  # the replica stopped reading and hung up long before the end
    assert elapsed < 1.0  # the bound
    grown_kib = _peak_rss_kib(secured_server.process.pid) - peak_before
    assert grown_kib < 3 * PAYLOAD_LIMIT // 1024, grown_kib  # never the 24 MB
    after = httpx.post(
        f"{secured_server.url}/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 2}},
        headers=secured_server.headers,
        timeout=60,
    )
    assert after.status_code == 200  # and it keeps serving


def _tokenize_while_probing(server, text: str) -> tuple[int, httpx.Response]:  # type: ignore[no-untyped-def]
    """Posts `text` to /tokenize and probes /health until it is answered; returns how many probes
    were answered while /tokenize was still running, and its response."""
    done, result = threading.Event(), {}

    def tokenize() -> None:
        result["response"] = httpx.post(
            f"{server.url}/tokenize", json={"inputs": text}, headers=server.headers, timeout=120
        )
        done.set()

    worker = threading.Thread(target=tokenize)
    worker.start()
    answered_meanwhile = 0
    while not done.is_set():
        health = httpx.get(f"{server.url}/health", timeout=1.0)  # the bound, as a deadline
        assert health.status_code == 200
        answered_meanwhile += not done.is_set()
    worker.join()
    return answered_meanwhile, result["response"]


def test_a_long_tokenize_leaves_health_answering_within_a_second(secured_server, model_dir) -> None:  # type: ignore[no-untyped-def]
    text = ("The quick brown fox 12345 jumps, héllo wörld! 日本語 " * 4000)[:100_000]
    for _ in range(3):  # a bigger input when tokenizing ended before /health could be asked
        answered_meanwhile, response = _tokenize_while_probing(secured_server, text)
        if answered_meanwhile:
            break
        text *= 2
    else:
        pytest.fail("/tokenize always finished before /health could be asked")
    tokens = response.json()
    assert [t["id"] for t in tokens] == Tokenizer(model_dir).encode(text)
    assert "".join(t["text"] for t in tokens[1:]) == text


def test_a_prompt_far_over_the_limit_is_refused_without_tokenizing_and_truncate_keeps_its_tail(
    secured_server, model_dir
) -> None:  # type: ignore[no-untyped-def]
    text = ("it's 1234567 e\u0301 \u1100\u1161 the   end\n" * 60_000)[: PAYLOAD_LIMIT // 2]
    url, headers = f"{secured_server.url}/generate", secured_server.headers
    refused = httpx.post(url, json={"inputs": text}, headers=headers, timeout=60)
    assert refused.status_code == 422 and "`inputs` tokens must be at most" in refused.json()["error"]
    assert "Given: more than" in refused.json()["error"]  # decided before the tokenizer ran
    parameters = {"max_new_tokens": 1, "truncate": 40, "decoder_input_details": True}
    kept = httpx.post(url, json={"inputs": text, "parameters": parameters}, headers=headers, timeout=60)
    assert kept.status_code == 200, kept.text
    prefill = [t["id"] for t in kept.json()["details"]["prefill"]]
    assert prefill == Tokenizer(model_dir).encode(text)[-40:]


@pytest.mark.parametrize("path", ["/generate", "/tokenize", "/v1/completions"])
def test_text_with_a_lone_surrogate_is_422(secured_server, path) -> None:  # type: ignore[no-untyped-def]
    field = "prompt" if path.startswith("/v1") else "inputs"
    body = f'{{"{field}": "abc \\ud800 def"}}'.encode()
    headers = {**secured_server.headers, "Content-Type": "application/json"}
    response = httpx.post(f"{secured_server.url}{path}", content=body, headers=headers, timeout=60)
    assert response.status_code == 422 and response.json()["error_type"] == "validation", response.text
    assert "surrogate" in response.json()["error"]


NON_FINITE = ["NaN", '"NaN"', "Infinity", '"inf"', "-Infinity", "1e999"]
TGI_FLOATS = ["temperature", "top_p", "typical_p", "repetition_penalty", "frequency_penalty"]
OPENAI_FLOATS = ["temperature", "top_p", "frequency_penalty", "presence_penalty", "repetition_penalty"]


@pytest.mark.parametrize("value", NON_FINITE)
def test_nan_and_inf_parameters_are_422_on_every_route(secured_server, value) -> None:  # type: ignore[no-untyped-def]
    headers = {**secured_server.headers, "Content-Type": "application/json"}
    cases = [
        (path, f'{{"inputs": "hi", "parameters": {{"{name}": {value}}}}}', name)
        for path in ("/generate", "/generate_stream", "/")
        for name in TGI_FLOATS
    ] + [
        (path, f'{{{prompt}, "max_tokens": 2, "{name}": {value}}}', name)
        for path, prompt in (
            ("/v1/completions", '"prompt": "hi"'),
            ("/v1/chat/completions", '"messages": [{"role": "user", "content": "hi"}]'),
        )
        for name in OPENAI_FLOATS
    ]
    for path, body, name in cases:
        response = httpx.post(f"{secured_server.url}{path}", content=body, headers=headers, timeout=60)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["error_type"] == "validation" and name in response.json()["error"], body
