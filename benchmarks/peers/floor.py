"""Peer: the raw-ASGI floor. A bare ASGI callable answering ``/sample`` with a constant body of a
real answer's size, on uvicorn with N worker processes: no framework, no model, no work. What
uvicorn itself costs here is the ceiling any ASGI server of N processes can reach.
Usage: ``python -m benchmarks.peers.floor PORT WORKERS``.
"""

from __future__ import annotations

import sys

import uvicorn

from .hello import sample_answer

BODY = sample_answer()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY if scope["path"] == "/sample" else b"{}"})


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    uvicorn.run("benchmarks.peers.floor:app", host="127.0.0.1", port=port, workers=workers, log_level="warning",
                access_log=False)  # fmt: skip
