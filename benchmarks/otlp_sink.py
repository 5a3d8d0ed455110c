"""An OTLP/HTTP endpoint on 127.0.0.1 that accepts traces: where the traced peers send their spans,
so the figures include exporting them (as to a collector on the same host). It keeps nothing,
unless given a list to keep each export's body in (the tests decode them)."""

from __future__ import annotations

import http.server
import threading


class _Sink(http.server.BaseHTTPRequestHandler):
    kept: list[bytes] | None = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.kept is not None and self.path == "/v1/traces":
            self.kept.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_sink(kept: list[bytes] | None = None) -> http.server.ThreadingHTTPServer:
    """A sink on a free 127.0.0.1 port, served by a daemon thread (``shutdown()`` and
    ``server_close()`` stop it); with ``kept``, each export's body is appended to it."""
    handler = type("Sink", (_Sink,), {"kept": kept})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="otlp-sink").start()
    return server
