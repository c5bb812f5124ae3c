"""A small OpenAI-compatible chat server on loopback that answers, stalls or fails: the upstream tier's peer."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OpenAiPeer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1: replies with ``content`` after ``delay_s``,
    or with HTTP ``status``; keeps every request body and its Authorization header."""

    def __init__(self) -> None:
        self.content, self.delay_s, self.status = "We open at nine.", 0.0, 200
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self._stop = threading.Event()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                peer.requests.append(body)
                peer.auth.append(self.headers.get("Authorization"))
                if peer._stop.wait(peer.delay_s):
                    return
                if peer.status != 200:
                    data = b'{"error": {"message": "overloaded"}}'
                else:
                    data = json.dumps({"id": "1", "object": "chat.completion", "created": 0, "model": body["model"],
                                       "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                           "role": "assistant", "content": peer.content}}]}).encode()
                self.send_response(peer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
