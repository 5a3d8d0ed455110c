"""SIGTERM at arbitrary moments: every request the server received gets an HTTP answer.

Clients are raw sockets on 127.0.0.1, so a connection closed without an answer is counted as
exactly that (no client library retries or hides it). Each scenario has its own server and ends
within its grace period.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import numpy as np
import pytest

from .conftest import ROOT, start_server

NO_ANSWER = None


def images(n: int, seed: int = 0) -> list:
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(float).tolist()


def request_bytes(path: str, body: dict | None = None, keep_alive: bool = False) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict] | None:
    """(status, headers) of one whole response, or None if the connection ended first."""
    try:
        status_line = await reader.readline()
        if not status_line:
            return NO_ANSWER
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin1").partition(":")
            headers[name.strip().lower()] = value.strip()
        await reader.readexactly(int(headers.get("content-length", 0)))
        return int(status_line.split()[1]), headers
    except (asyncio.IncompleteReadError, ConnectionError):
        return NO_ANSWER


async def one_request(
    port: int,
    data: bytes,
    sent: asyncio.Event | None = None,
    pause_at: int | None = None,
    resume: asyncio.Event | None = None,
) -> int | None:
    """Send ``data`` on a new connection (optionally stopping at byte ``pause_at`` until ``resume``)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "refused"  # never connected: nothing was received, so nothing is owed
    try:
        if pause_at is None:
            writer.write(data)
        else:
            writer.write(data[:pause_at])
            await writer.drain()
            if sent is not None:
                sent.set()
            await resume.wait()
            writer.write(data[pause_at:])
        await writer.drain()
    except ConnectionError:
        pass  # the answer may still be readable
    answer = await read_response(reader)
    writer.close()
    return NO_ANSWER if answer is None else answer[0]


@pytest.fixture
def drain_server(tmp_path):
    """Default settings, a 30 s grace: the service as it ships."""
    server, url = start_server(ROOT / "models", tmp_path / "server.log")
    yield server
    server.stop()


def finish(server) -> str:
    assert server.process.wait(timeout=60) == 0
    return server.log_path.read_text()


@pytest.mark.slow
def test_sigterm_right_after_300_heavy_requests_are_sent(drain_server):
    """The failure seen in the field: 300 clients send /elbo (8 images, K=256); SIGTERM follows at once."""
    body = request_bytes("/elbo", {"inputs": images(8), "samples": 256, "seed": 0})

    async def scenario():
        calls = [asyncio.create_task(one_request(drain_server.port, body)) for _ in range(300)]
        await asyncio.sleep(0.3)
        drain_server.signal(signal.SIGTERM)
        return await asyncio.gather(*calls)

    answers = asyncio.run(scenario())
    assert answers.count(NO_ANSWER) == 0, answers
    assert set(answers) <= {200, 503, 504} and 200 in answers  # 504: still queued at its deadline (a slow machine)
    assert "drained: every request received was answered" in finish(drain_server)


def test_sigterm_while_large_bodies_are_still_uploading(drain_server):
    body = request_bytes("/elbo", {"inputs": images(64), "samples": 4})  # about 200 KB each

    async def scenario():
        resume = asyncio.Event()
        sent = [asyncio.Event() for _ in range(20)]
        calls = [asyncio.create_task(one_request(drain_server.port, body, s, len(body) // 2, resume)) for s in sent]
        await asyncio.gather(*(s.wait() for s in sent))  # every client is halfway through its body
        drain_server.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        resume.set()
        return await asyncio.gather(*calls)

    answers = asyncio.run(scenario())
    assert answers.count(NO_ANSWER) == 0, answers
    assert set(answers) <= {200, 503}
    finish(drain_server)


def test_keep_alive_connections_sending_a_second_request_during_the_drain_get_answers(drain_server):
    first = request_bytes("/sample", {"n": 1, "seed": 1}, keep_alive=True)
    second = request_bytes("/sample", {"n": 1, "seed": 2}, keep_alive=True)

    async def scenario():
        connections = [await asyncio.open_connection("127.0.0.1", drain_server.port) for _ in range(20)]
        firsts = []
        for reader, writer in connections:
            writer.write(first)
            await writer.drain()
            firsts.append(await read_response(reader))
        drain_server.signal(signal.SIGTERM)
        await asyncio.sleep(0.05)
        for _, writer in connections:  # idle keep-alive connections, used again during the drain
            writer.write(second)
            await writer.drain()
        seconds = [await read_response(reader) for reader, _ in connections]
        for _, writer in connections:
            writer.close()
        return firsts, seconds

    firsts, seconds = asyncio.run(scenario())
    assert [f[0] for f in firsts] == [200] * 20
    assert seconds.count(NO_ANSWER) == 0
    assert {s[0] for s in seconds} == {503}
    assert all(s[1]["connection"] == "close" and s[1]["retry-after"] == "1" for s in seconds)
    finish(drain_server)


@pytest.mark.slow
def test_a_request_that_outlives_the_grace_period_is_cut_off_and_logged(tmp_path):
    """Its client never finishes sending: at the end of the grace it is cut off (a 503 where the
    answer can still be written), the process exits, and the log says how many."""
    server, _ = start_server(ROOT / "models", tmp_path / "server.log", shutdown_grace_s=1)
    try:
        slow = request_bytes("/sample", {"n": 1})

        async def scenario():
            resume = asyncio.Event()
            sent = asyncio.Event()
            call = asyncio.create_task(one_request(server.port, slow, sent, len(slow) - 5, resume))  # never finishes
            await sent.wait()
            server.signal(signal.SIGTERM)
            signalled = time.monotonic()
            exit_code = await asyncio.to_thread(server.process.wait, 30)
            exited_after = time.monotonic() - signalled
            resume.set()
            return await asyncio.wait_for(call, timeout=30), exit_code, exited_after

        answer, exit_code, exited_after = asyncio.run(scenario())
        assert answer in (503, NO_ANSWER) and exit_code == 0
        assert 1 <= exited_after < 4  # the grace, then the cut: not the full request's wait
        log = server.log_path.read_text()
    finally:
        server.stop()
    assert "grace of 1 s over: 1 connections cut off with requests unanswered" in log
