"""Small HTTP servers on loopback addresses for egress tests: files, redirects, slow answers, counted hits."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Served:
    """A running server: its base URL (`http://host:port`) and the paths it was asked for."""

    url: str
    hits: list[str] = field(default_factory=list)


@contextlib.contextmanager
def http_server(
    host: str = "127.0.0.1",
    *,
    files: dict[str, bytes] | None = None,
    redirects: dict[str, str] | None = None,
    delay_s: float = 0.0,
    drip_s: float = 0.0,
    length: bool = True,
) -> Iterator[Served]:
    """Serve `files` by path (query ignored), answer 302 for `redirects` (path → Location).

    `delay_s` waits before answering; `drip_s` waits between 64 KiB chunks of the body; `length=False`
    sends no Content-Length (the body ends when the connection closes).
    """
    files, redirects = files or {}, redirects or {}
    served = Served(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            served.hits.append(self.path)
            path = urlsplit(self.path).path
            if path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[path])
                self.end_headers()
                return
            time.sleep(delay_s)
            data = files.get(path)
            if data is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            if length:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for start in range(0, len(data), 65536):
                    self.wfile.write(data[start : start + 65536])
                    self.wfile.flush()
                    time.sleep(drip_s)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    served.url = f"http://{host}:{server.server_port}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
