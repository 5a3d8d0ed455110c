"""The pure-ASGI middleware without a server: the drain's refusal and the body limit, each
rendered in the shape of the surface the request came in on (REST {"detail"}, OIP {"error"})."""

import asyncio
import json

import pytest

from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, RequestMiddleware


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _call(app, path: str, body: bytes = b"{}", headers=()):
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers), "query_string": b""}
    asyncio.run(app(scope, receive, send))
    start, body_message = sent
    return start["status"], dict(start["headers"]), json.loads(body_message["body"] or b"null")


@pytest.mark.parametrize("path, key", [("/sample", "detail"), ("/v2/models/fashion-mnist-decoder/infer", "error")])
def test_a_draining_server_refuses_new_requests_in_their_surfaces_shape(path, key):
    app = RequestMiddleware(_app, metrics=Metrics(), lifecycle=Lifecycle(draining=True))
    status, headers, body = _call(app, path)
    assert status == 503 and set(body) == {key} and "shutting down" in body[key]
    assert headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"


def test_a_draining_server_still_answers_probes():
    app = RequestMiddleware(_app, metrics=Metrics(), lifecycle=Lifecycle(draining=True))
    assert _call(app, "/health/ready")[0] == 200


@pytest.mark.parametrize("path, key", [("/encode", "detail"), ("/v2/models/fashion-mnist-decoder/infer", "error")])
@pytest.mark.parametrize("declared", [True, False])
def test_the_body_limit_answers_413_in_the_surfaces_shape(path, key, declared):
    body = b"x" * 2049
    headers = [(b"content-length", b"2049")] if declared else []
    status, _, answer = _call(BodyLimitMiddleware(_app, max_bytes=2048), path, body, headers)
    assert status == 413 and set(answer) == {key} and "2048 bytes" in answer[key]
