"""An OTLP/HTTP endpoint that accepts traces and keeps nothing: where the traced peers send their
spans, so the figures include exporting them (as to a collector on the same host)."""

from __future__ import annotations

import http.server
import threading


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_sink() -> http.server.ThreadingHTTPServer:
    """A sink on a free 127.0.0.1 port, served by a daemon thread; ``shutdown()`` stops it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True, name="otlp-sink").start()
    return server
