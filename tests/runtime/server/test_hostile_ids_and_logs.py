"""Floods of bogus adapter ids and of long URLs leave a replica's memory, metrics and log bounded.

Written as the attacks of the issue, against a real replica with a rotated log file
(`LOG_FILE`, `LOG_MAX_BYTES` = 64 KiB): 200 distinct adapter ids of 200 KB each (paths, Hub-like
ids, garbage), and 300 requests whose URLs carry 50 KB of query string.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from lorafleet.runtime.adapters.policy import shown

from tests.runtime.server.conftest import SECURED_LOG_MAX_BYTES

MAX_RECORD_BYTES = 4 * 8_000  # the runtime caps a record at 8,000 characters (UTF-8: at most 4 bytes each)
ID_BYTES = 200_000


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def _log_files(server) -> list[Path]:  # type: ignore[no-untyped-def]
    return sorted(server.log_file.parent.glob(server.log_file.name + "*"))


def _bogus_id(i: int) -> str:
    marker = f"BOGUS{i:04d}"
    shapes = [f"/srv/tenants/{marker}/", f"../{marker}/", f"org/{marker}", f"~{marker}/", marker]
    return (shapes[i % len(shapes)] + marker * (ID_BYTES // len(marker)))[:ID_BYTES]


def _post_bogus(client: httpx.Client, i: int) -> httpx.Response:
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 1, "adapter_id": _bogus_id(i)}}
    return client.post("/generate", json=body)


def test_path_adapter_ids_get_one_422_whether_or_not_the_path_exists(
    secured_server, adapters, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    existing = str(adapters["r16-all"])  # an adapter folder on the replica's host: another tenant's, say
    attacks = [
        existing,
        existing + "-missing",
        os.path.relpath(existing),
        "../" + os.path.basename(existing),
        "~/" + os.path.basename(existing),
        str(tmp_path),
        "/etc/passwd",
    ]
    messages: dict[str, set[str]] = {"tgi": set(), "openai": set()}
    with httpx.Client(base_url=secured_server.url, headers=secured_server.headers, timeout=60) as client:
        for attack in attacks:
            tgi = client.post("/generate", json={"inputs": "hi", "parameters": {"adapter_id": attack}})
            openai = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "model": attack})
            for route, response in (("tgi", tgi), ("openai", openai)):
                assert response.status_code == 422 and response.json()["error_type"] == "validation"
                messages[route].add(response.json()["error"].replace(shown(attack), "<id>"))
    assert [len(m) for m in messages.values()] == [1, 1], messages  # nothing depends on the filesystem
    assert "registered" in messages["tgi"].pop()


def test_200_distinct_bogus_adapter_ids_leave_memory_metrics_and_log_flat(secured_server) -> None:  # type: ignore[no-untyped-def]
    pid = secured_server.process.pid
    with httpx.Client(base_url=secured_server.url, headers=secured_server.headers, timeout=60) as client:
        for i in range(20):  # warm-up: allocator pools, first-use paths
            _post_bogus(client, 10_000 + i)
        rss_before = _rss_kib(pid)
        failures_before = secured_server.metric("lorafleet_request_failures_total", 'error_type="validation"')
        answers = [_post_bogus(client, i) for i in range(200)]
        rss_grown_kib = _rss_kib(pid) - rss_before
        metrics = client.get("/metrics").text
        models = client.get("/v1/models").json()["data"]
    assert {a.status_code for a in answers} == {422}
    assert all(a.json()["error_type"] == "validation" and len(a.content) < 1_000 for a in answers)
    # 200 ids x 200 KB = 40 MB went in; keeping any per-id state would show here
    assert rss_grown_kib < 20_000, rss_grown_kib
    assert "BOGUS" not in metrics and all("BOGUS" not in m["id"] for m in models)
    failures = secured_server.metric("lorafleet_request_failures_total", 'error_type="validation"')
    assert failures == failures_before + 200  # counted, under one label
    logged = "".join(f.read_text(errors="replace") for f in _log_files(secured_server))
    assert "BOGUS" not in logged  # ids reach neither the log nor any error it records


def test_a_flood_of_long_urls_rotates_the_log_and_keeps_each_file_under_its_bound(secured_server) -> None:  # type: ignore[no-untyped-def]
    query = "q=" + "A" * 50_000
    with httpx.Client(base_url=secured_server.url, timeout=60) as client:
        for _ in range(300):  # /health needs no key: anyone who reaches the port can do this
            assert client.get(f"/health?{query}").status_code == 200
    files = _log_files(secured_server)
    assert [f.name for f in files] == ["replica.log", "replica.log.1"]  # rotated, one backup
    for f in files:
        assert f.stat().st_size <= SECURED_LOG_MAX_BYTES + MAX_RECORD_BYTES, (f, f.stat().st_size)
        text = f.read_text()
        assert "A" * 1_001 not in text  # each access line quotes at most 1,000 characters of its URL
    assert "GET /health?q=AAAA" in files[0].read_text()  # the lines are still there, capped
