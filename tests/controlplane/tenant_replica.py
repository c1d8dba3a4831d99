"""A replica command standing for a tenant's code that got to run inside a replica (tests only).

The isolation tests run it as `LORAFLEET_RUNTIME_COMMAND` under the real process launcher and its
real sandbox: what it can reach is what a hostile tenant's input could reach. It speaks the
replica contract the control plane relies on (`PORT`, `HOSTNAME`; every route but `/health` needs
`Authorization: Bearer $API_KEY`; it logs to `LOG_FILE`) and answers, behind the key, the
questions an attacker would ask:

* `GET /open?path=P`: can P be opened for reading? `{"opened": bool, "error": str}`
* `GET /write?path=P`: can P be created? same shape
* `GET /listdir?path=P`: the names in folder P, or the error
* `GET /environs`: every process environment it can read, `{pid: {name: value}}`
* `GET /whoami`: uid, gid, groups, pid and its own environment
* `GET /seen`: `{"refused": [...], "served": [...]}`: requests refused (with the Authorization
  header they carried) and served (to see who sent what)
* `GET /metrics`: a Prometheus queue gauge, as the runtime serves it (probed by the control plane)
* `POST /generate`: `{"generated_text": ...}`, as the runtime answers (Try it)
"""

from __future__ import annotations

import http.server
import json
import os
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

API_KEY = os.environ.get("API_KEY", "")
REFUSED: list[str] = []  # "METHOD path Authorization-header" of refused requests
SERVED: list[str] = []  # "METHOD path" of requests that carried the key
LOCK = threading.Lock()


def attempt(action, path: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    try:
        action(path)
        return {"path": path, "opened": True, "error": ""}
    except OSError as e:
        return {"path": path, "opened": False, "error": type(e).__name__}


def environs() -> dict[str, dict[str, str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            items = (i.decode(errors="replace") for i in raw.split(b"\0") if b"=" in i)
            found[entry] = dict(i.split("=", 1) for i in items)
    return found


def answers(route: str, query: dict[str, list[str]]) -> object:
    path = query.get("path", [""])[0]
    if route == "/open":
        return attempt(lambda p: open(p, "rb").close(), path)
    if route == "/write":
        return attempt(lambda p: open(p, "wb").close(), path)
    if route == "/listdir":
        try:
            return {"path": path, "names": sorted(os.listdir(path)), "error": ""}
        except OSError as e:
            return {"path": path, "names": [], "error": type(e).__name__}
    if route == "/environs":
        return environs()
    if route == "/whoami":
        return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "pid": os.getpid(),
                "environ": dict(os.environ)}
    if route == "/seen":
        with LOCK:
            return {"refused": list(REFUSED), "served": list(SERVED)}
    return None


class Handler(http.server.BaseHTTPRequestHandler):
    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if API_KEY and header == f"Bearer {API_KEY}":
            with LOCK:
                SERVED.append(f"{self.command} {urlparse(self.path).path}")
            return True
        with LOCK:
            REFUSED.append(f"{self.command} {self.path} {header}")
        self._json(401, {"error": "missing or wrong API key", "error_type": "unauthorized"})
        return False

    def _json(self, status: int, body: object, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        if url.path == "/health":
            return self._json(200, {"status": "ok"})
        if not self._authorised():
            return None
        if url.path == "/metrics":
            return self._json(200, "lorafleet_queue_size 0.0\n", "text/plain")
        body = answers(url.path, parse_qs(url.query))
        return self._json(404, {"error": "no such route"}) if body is None else self._json(200, body)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if not self._authorised():
            return None
        adapter = request.get("parameters", {}).get("adapter_id") or "base"
        return self._json(200, {"generated_text": f"{adapter} says: {request.get('inputs', '')}"})

    def log_message(self, *args: object) -> None:
        with open(os.environ["LOG_FILE"], "a") as log:  # as the runtime: its own log file
            log.write("request " + (str(args[0]) if args else "") + "\n")


if __name__ == "__main__":
    print("tenant replica listening on", os.environ["HOSTNAME"], os.environ["PORT"], flush=True)
    server = http.server.ThreadingHTTPServer((os.environ["HOSTNAME"], int(os.environ["PORT"])), Handler)
    sys.exit(server.serve_forever())
