"""A stand-in for `python -m lorafleet.runtime`, kept ONLY where a real runtime cannot be used.

No test uses it any more: every lifecycle test (start, env, logs, crash restart, `failed` with the
last log lines, pause/resume, rolling update, autoscaling on the real `lorafleet_queue_size`,
adoption after a control-plane restart) runs the real runtime on the tiny fixture model
(test_real_lifecycle.py, test_real_restart.py). Its one user is benchmarks/controlplane.py's
"reconciler pass at 1,000 endpoints": that needs 1,000 live replicas to probe, which real runtimes
(a model in memory and seconds of CPU each) cannot provide on one test host, so the benchmark points
all 1,000 replica handles at one process of this file. It measures the control plane's own pass
time, not the runtime's.

It speaks just enough of the runtime's process contract (env `PORT`, `GET /health` 503 until
"loaded" then 200, `/metrics` with `lorafleet_queue_size`, log lines on stdout, a non-zero exit on
failure). Behaviour knobs (env): FAKE_LOAD_S (seconds of 503 before 200), FAKE_CRASH_AFTER_S (exit 3
after that long), FAKE_FAIL_START=1 (print an error and exit 3 at once), FAKE_QUEUE_FILE (a file
whose number is the queue gauge), FAKE_ENV_DUMP (write the environment there as JSON).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            loaded = time.monotonic() - STARTED >= float(os.environ.get("FAKE_LOAD_S", "0"))
            self._send(200 if loaded else 503, b"{}")
        elif self.path == "/metrics":
            queue_file = os.environ.get("FAKE_QUEUE_FILE")
            queue = open(queue_file).read().strip() if queue_file and os.path.exists(queue_file) else "0"
            body = f"# TYPE lorafleet_queue_size gauge\nlorafleet_queue_size {queue}\n"
            self._send(200, body.encode(), "text/plain")
        else:
            self._send(200, json.dumps({"model_id": os.environ.get("MODEL_ID")}).encode())

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        adapter = (body.get("parameters") or {}).get("adapter_id")
        self._send(200, json.dumps({"generated_text": f"[{adapter}] {body.get('inputs', '')}"}).encode())

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(f"fake-runtime: {format % args}", flush=True)


def main() -> None:
    print(
        f"fake-runtime: loading {os.environ.get('MODEL_ID')} adapters={os.environ.get('LORA_ADAPTERS')}",
        flush=True,
    )
    if os.environ.get("FAKE_ENV_DUMP"):
        with open(os.environ["FAKE_ENV_DUMP"], "w") as handle:
            json.dump(dict(os.environ), handle)
    if os.environ.get("FAKE_FAIL_START") == "1":
        print("fake-runtime: error: cannot load weights from /nowhere", flush=True)
        sys.exit(3)
    crash_after = os.environ.get("FAKE_CRASH_AFTER_S")
    if crash_after:

        def crash() -> None:
            time.sleep(float(crash_after))
            print("fake-runtime: CUDA error: out of memory (simulated)", flush=True)
            os._exit(3)

        threading.Thread(target=crash, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"fake-runtime: serving on {os.environ['PORT']}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
