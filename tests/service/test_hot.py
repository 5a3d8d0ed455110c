"""The hot routes' plain-ASGI front, without a server: matching, the Call, and how failures answer."""

import asyncio
import json
import logging

import pytest
from fastapi.exceptions import RequestValidationError

from service.answer import Answer
from service.errors import ClientGone, TooLarge
from service.hot import OIP_INFER, OIP_VERSION_INFER, Call, HotRoutes, oip_infer_params


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/v2/models/fashion-mnist-decoder/infer", (OIP_INFER, {"name": "fashion-mnist-decoder"})),
        ("/v2/models/m/versions/3/infer", (OIP_VERSION_INFER, {"name": "m", "version": "3"})),
        ("/v2/models//infer", None),
        ("/v2/models/m/versions//infer", None),
        ("/v2/models/m/other/3/infer", None),
        ("/v2/models/m/ready", None),
        ("/sample", None),
    ],
)
def test_oip_infer_paths_are_matched_with_their_template(path, expected):
    assert oip_infer_params(path) == expected


def scope(path="/sample", method="POST", headers=(), query=b""):
    return {"type": "http", "method": method, "path": path, "headers": list(headers), "query_string": query}


def messages(*items):
    queue = list(items)

    async def receive():
        return queue.pop(0)

    return receive


def test_a_call_reads_headers_query_and_a_body_in_chunks():
    headers = [(b"Content-Type", b"application/json"), (b"x-api-key", b"first"), (b"x-api-key", b"second")]
    receive = messages(
        {"type": "http.request", "body": b'{"n"', "more_body": True},
        {"type": "http.request", "body": b": 2}", "more_body": False},
    )
    call = Call(scope(headers=headers, query=b"seed=3&format=png&empty="), receive, state=None)
    assert call.headers == {"content-type": "application/json", "x-api-key": "first"}
    assert call.query_params == {"seed": "3", "format": "png", "empty": ""}
    assert asyncio.run(call.body()) == b'{"n": 2}'


def test_a_client_that_leaves_while_its_body_arrives_is_gone():
    receive = messages({"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        asyncio.run(Call(scope(), receive, state=None).body())


class Recorder:
    def __init__(self):
        self.sent, self.fallback_scopes = [], []

    async def send(self, message):
        self.sent.append(message)

    async def fallback(self, scope, receive, send):
        self.fallback_scopes.append(scope)

    def answer(self) -> tuple[int, dict, bytes]:
        start, body = self.sent
        return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body["body"]


def serve(handler_for_sample, request_scope, oip=None) -> Recorder:
    recorder = Recorder()

    async def unused(call):
        raise AssertionError("not this route")

    front = HotRoutes(recorder.fallback, "state", {"/sample": handler_for_sample}, oip or unused)
    asyncio.run(front(request_scope, messages({"type": "http.request", "body": b""}), recorder.send))
    return recorder


def test_post_on_a_hot_path_reaches_its_handler_and_everything_else_goes_to_fastapi():
    async def sample(call):
        assert call.state == "state" and call.params == {}
        return Answer(b'{"ok":true}', headers={"X-Seed": "7"})

    hot = serve(sample, request_scope := scope())
    status, headers, body = hot.answer()
    assert (status, body) == (200, b'{"ok":true}') and request_scope["route"].path == "/sample"
    assert headers == {"content-length": "11", "content-type": "application/json", "x-seed": "7"}
    for other in (scope(method="GET"), scope(path="/models"), scope(path="/v2/models/m/ready")):
        recorder = serve(sample, other)
        assert recorder.sent == [] and recorder.fallback_scopes == [other]


def test_oip_infer_gets_its_path_parameters():
    async def infer(call):
        return Answer(json.dumps(call.params).encode())

    recorder = serve(None, request_scope := scope(path="/v2/models/m/versions/2/infer"), oip=infer)
    assert json.loads(recorder.answer()[2]) == {"name": "m", "version": "2"}
    assert request_scope["route"].path == "/v2/models/{name}/versions/{version}/infer"


def test_failures_are_rendered_for_the_surface_they_came_in_on(caplog):
    async def too_large(call):
        raise TooLarge("n: 5000 samples is over this server's limit of 1024", ("body", "n"))

    status, _, body = serve(too_large, scope()).answer()
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["body", "n"]

    async def invalid(call):
        raise RequestValidationError([{"loc": ("body", "n"), "msg": "Input should be a valid integer", "type": "x"}])

    status, _, body = serve(invalid, scope()).answer()
    assert status == 422 and json.loads(body)["detail"][0]["msg"] == "Input should be a valid integer"
    status, _, body = serve(None, scope(path="/v2/models/m/infer"), oip=too_large).answer()
    assert status == 400 and "limit of 1024" in json.loads(body)["error"]

    async def broken(call):
        raise ZeroDivisionError("a bug")

    with caplog.at_level(logging.ERROR, logger="service.hot"):
        status, _, body = serve(broken, scope()).answer()
    assert status == 500 and json.loads(body) == {"detail": "internal server error"}
    assert "ZeroDivisionError" in caplog.text  # the traceback is logged, never sent

    async def gone(call):
        raise ClientGone()

    assert serve(gone, scope()).answer()[0] == 499
