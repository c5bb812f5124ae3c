"""A static file server on loopback for update repositories (`appliance bench update` and the update tests):
HTTP Range, bytes counted per path, and faults to inject (a connection cut after N bytes, endless data past a
file's end, slow bytes, a file served with other content)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    cut_after: int | None = None  # close the connection after this many body bytes (once per request)
    cut_paths: str = ""  # only for URL paths containing this
    endless: str = ""  # URL paths containing this get extra bytes after the file
    replace: dict[str, bytes] = field(default_factory=dict)  # URL path -> content served instead
    delay_s: float = 0.0  # per 64 KiB chunk


class RepoServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RepoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wire_bytes(self, part: str = "") -> int:
        with self._lock:
            return sum(n for p, n in self.sent.items() if part in p)

    def reset_counts(self) -> None:
        with self._lock:
            self.sent.clear()
            self.requests.clear()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        faults = self.faults
        with self._lock:
            self.requests.append((path, handler.headers.get("Range")))
        if path in faults.replace:
            data = faults.replace[path]
        else:
            local = (self.root / path.lstrip("/")).resolve()
            if not local.is_relative_to(self.root.resolve()) or not local.is_file():
                handler.send_error(404)
                return
            data = local.read_bytes()
        start, status = 0, 200
        wanted = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if wanted and int(wanted.group(1)) < len(data):
            start, status = int(wanted.group(1)), 206
        body = data[start:]
        if faults.endless and faults.endless in path:
            body += b"\0" * (4 << 20)
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        limit = faults.cut_after if faults.cut_after is not None and faults.cut_paths in path else None
        sent = 0
        try:
            for at in range(0, len(body), 1 << 16):
                chunk = body[at:at + (1 << 16)]
                if limit is not None and sent + len(chunk) > limit:
                    chunk = chunk[:limit - sent]
                handler.wfile.write(chunk)
                sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
                if faults.delay_s:
                    time.sleep(faults.delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self.sent[path] = self.sent.get(path, 0) + sent
        if limit is not None and sent >= limit:
            handler.close_connection = True
