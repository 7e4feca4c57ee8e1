"""A real HTTP server on loopback that speaks the OpenAI chat-completions protocol (for tests).

Replies are queued by the test (status, body, delay); every request is recorded with its path,
headers and JSON body. Used in-process by the LLM tests and, over the network, by the ComfyUI
server tests (the server reaches it on 127.0.0.1 like any Ollama / vLLM endpoint).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: str = ""
    delay: float = 0.0


def chat_completion(content: str) -> str:
    """The JSON body of a successful (non-streaming) chat completion with ``content``."""
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}]})


@dataclass
class FakeOpenAI:
    """The server's state: queued replies (a 500 when none is left) and recorded requests."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[FakeOpenAI]:
        fake = cls()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                reply = fake.replies.pop(0) if fake.replies else Reply(500, "no reply queued")
                time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body.encode())))
                    self.end_headers()
                    self.wfile.write(reply.body.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        fake.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield fake
        finally:
            fake.server.shutdown()
            fake.server.server_close()
