"""A fake Baton API for the `baton` command's unit tests: a tiny HTTP server on loopback that
records each request and answers from a queue per method (the last answer repeats)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

EXECUTION: dict[str, Any] = {
    "id": "0b7f6c1e-6a8e-4c8f-9a43-2f1f7d0e9b11",
    "device_id": "demo-thermostat-1",
    "name": "set_temperature",
    "params": {"value": 24},
    "status": "PENDING",
    "created_at": "2026-11-01T12:00:00Z",
    "updated_at": "2026-11-01T12:00:00Z",
    "ttl": 30,
    "deadline": "2026-11-01T12:00:30Z",
    "result": None,
    "error": None,
}
PROBLEM = {
    "type": "about:blank",
    "status": 422,
    "title": "Invalid params",
    "detail": "the params do not match the command's schema",
    "errors": [{"field": "params.value", "reason": "must be a number"}],
}


@dataclass
class Answer:
    status: int
    body: Any
    content_type: str = "application/json"


@dataclass
class FakeApi:
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def on(self, method: str, *answers: tuple[int, Any] | Answer) -> None:
        """What the next requests of `method` get, in order; the last one repeats."""
        self.answers[method] = [a if isinstance(a, Answer) else Answer(*a) for a in answers]

    def answer(self, method: str) -> Answer:
        queue = self.answers.get(method) or [Answer(404, {"status": 404, "title": "Not Found"})]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def of(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    fake.on("POST", (201, EXECUTION))

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            fake.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "route": parts.path,
                    "query": parse_qs(parts.query),
                    "authorization": self.headers.get("Authorization"),
                    "body": json.loads(raw) if raw else None,
                }
            )
            answer = fake.answer(self.command)
            data = b"" if answer.status == 204 else json.dumps(answer.body).encode()
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_PUT(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
