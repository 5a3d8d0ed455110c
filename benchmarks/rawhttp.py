"""A load generator's HTTP/1.1 client: one prebuilt request per connection, asyncio streams, nothing else.

The overload and burst runs share the machine's two cores with the server. httpx spends several
milliseconds of Python per request; hundreds of them at once delay the requests it sends and the
answers it reads by seconds, which it then reports as the server's latency. This client sends
bytes built once and reads the status line, the headers and a Content-Length body: a few tens of
microseconds a request, so what it measures is the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    request: bytes  # the whole request, headers and body


def post_request(url: str, body: bytes, headers: dict[str, str]) -> Target:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {path} HTTP/1.1", f"host: {parts.netloc}", f"content-length: {len(body)}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return Target(parts.hostname or "127.0.0.1", parts.port or 80, head + body)


async def send(target: Target, timeout_s: float = 60) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one request on a connection of its own."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), timeout_s)
    try:
        writer.write(target.request)
        status_line = await asyncio.wait_for(reader.readline(), timeout_s)
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body
    finally:
        writer.close()
