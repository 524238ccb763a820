"""A real HTTP server on 127.0.0.1 for download tests: Range requests, and injected faults."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Files:
    content: dict[str, bytes] = field(default_factory=dict)  # URL path → body
    cut_once: dict[str, int] = field(default_factory=dict)  # URL path → bytes sent before the connection drops, once
    fail_once: dict[str, int] = field(default_factory=dict)  # URL path → HTTP status answered once
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


def _handler(files: Files) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            files.requests.append((self.path, self.headers.get("Range")))
            if self.path in files.fail_once:
                status = files.fail_once.pop(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = files.content.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            part = body[start:]
            self.send_header("Content-Length", str(len(part)))
            self.end_headers()
            cut = files.cut_once.pop(self.path, None)
            self.wfile.write(part if cut is None else part[:cut])
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True

    return Handler


@contextmanager
def serve(files: Files) -> Iterator[str]:
    """Serve ``files`` on a free port; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
