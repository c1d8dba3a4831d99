"""A real HTTP server on a free localhost port that answers from a script and records requests.

It stands in for third-party behaviour the real control plane never shows on demand (a proxy
dropping connections, a 502 HTML page, a 429), so the SDK's error mapping and retries are
tested on real sockets and real `httpx` responses.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str -> text; None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """`server.script("GET", "/path", Reply(...), Reply(...))` queues replies; the last one repeats."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._replies: dict[tuple[str, str], deque[Reply]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), daemon=True)

    def script(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self._replies[(method, path)] = deque(replies)

    def reset(self) -> None:
        """Forgets every script and recorded request (one server serves a whole test module)."""
        with self._lock:
            self._replies.clear()
            self.requests.clear()

    def _next_reply(self, method: str, path: str) -> Reply:
        with self._lock:
            queue = self._replies.get((method, path.split("?")[0]))
            if not queue:
                return Reply(404, {"error": f"no script for {method} {path}"})
            return queue.popleft() if len(queue) > 1 else queue[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append(Recorded(self.command, self.path, headers, body))
                reply = server._next_reply(self.command, self.path)
                if reply.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if isinstance(reply.body, (dict, list)):
                    payload, ctype = json.dumps(reply.body).encode(), "application/json"
                else:
                    payload, ctype = (reply.body or "").encode(), "text/plain; charset=utf-8"
                self.send_response(reply.status)
                self.send_header("content-type", reply.headers.get("content-type", ctype))
                for key, value in reply.headers.items():
                    if key.lower() != "content-type":
                        self.send_header(key, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        return Handler

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def endpoint_json(
    name: str = "ep", state: str = "pending", url: str | None = None, message: str = ""
) -> dict:
    """An endpoint description shaped like the contract's `MOCK_RUNNING` fixture."""
    status: dict[str, Any] = {
        "createdAt": "2024-07-18T12:41:53.263078506Z",
        "updatedAt": "2024-07-18T12:42:00.5Z",
        "state": state,
        "message": message,
        "readyReplica": 1 if state == "running" else 0,
        "targetReplica": 1,
    }
    if url is not None:
        status["url"] = url
    return {
        "name": name,
        "type": "protected",
        "accountId": None,
        "healthRoute": "/health",
        "provider": {"vendor": "local", "region": "local"},
        "compute": {"accelerator": "cpu", "instanceType": "cpu", "instanceSize": "x1",
                    "scaling": {"minReplica": 1, "maxReplica": 1}},
        "model": {"repository": "/models/m", "revision": None, "task": "text-generation",
                  "framework": "pytorch", "image": {"huggingface": {}}},
        "status": status,
    }  # fmt: skip
