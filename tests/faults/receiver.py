"""A webhook target for the fault suite: a stdlib HTTP server that notes every delivery."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver(ThreadingHTTPServer):
    """Answers 200 to every POST and remembers (delivery id, message id) of each."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.deliveries: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def gateway_ids(self) -> set[int]:
        with self.lock:
            return {gateway_id for _delivery, gateway_id in self.deliveries}

    def repeats(self) -> int:
        """Deliveries received more than once (at least once allows them)."""
        with self.lock:
            counts = Counter(delivery for delivery, _gateway_id in self.deliveries)
        return sum(n - 1 for n in counts.values())


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with self.server.lock:
            self.server.deliveries.append((body["delivery_id"], int(body["gateway_id"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
