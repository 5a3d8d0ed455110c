"""Every worker process of this server, reached one way: ``await peers.all(call)``.

What must agree across workers (readiness, model loads and unloads, OIP statistics) goes through
here. A call is a small JSON object (``{"op": "load", "name": "fashion-mnist"}``); each worker
answers it with ``answer`` on its own state, and ``all`` returns every worker's reply. One process
(``LocalPeers``) answers alone; under ``VAE_WORKERS`` > 1 each worker holds a ``WorkerLink`` to the
supervisor (``service.workers``), which fans the call out and gathers the replies. A worker that is
not running (being replaced) replies ``{"absent": slot}``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os

from . import control, errors
from .control import ABSENT
from .errors import ServiceError
from .registry import READY

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0  # a readiness question the workers cannot answer in this long is "not ready"
SUPERVISOR_GONE = "the supervisor is gone: retry on another replica"


def not_ready(state) -> str | None:
    """Why this worker should get no traffic now, or None when it is ready."""
    if state.lifecycle.draining:
        return "shutting down"
    if not state.registry.models:
        return "no models loaded"
    if not state.registry.ready:
        return "warming up"
    return None


async def answer(state, call: dict) -> dict:
    """One worker's reply to a call; a refused load or unload replies with its error, not raises."""
    op, registry = call["op"], state.registry
    try:
        if op == "ready":
            return {"problem": not_ready(state)}
        if op == "stats":
            return {"stats": [
                runtime.stats[graph].report(f"{model}-{graph}", runtime.version)
                for model, runtime in registry.models.items() for graph in runtime.batchers
            ]}  # fmt: skip
        if op == "load":
            return {"entry": (await registry.load(call["name"])).describe()}
        if op == "unload":
            return {"entry": (await registry.unload(call["name"])).describe()}
        if op == "rescan":  # the supervisor's poll or SIGHUP: every worker follows the folder together
            await registry.rescan()
            return {"serving": {name: e.version for name, e in registry.entries.items() if e.state == READY}}
        if op == "drain":  # the supervisor's SIGTERM, as a call: a worker that got SIGTERM too drains once
            if not state.lifecycle.draining:
                state.lifecycle.begin_drain()
            return {}
    except ServiceError as exc:
        return {"error": type(exc).__name__, "message": exc.message}
    raise ValueError(f"unknown call {op!r}")


def raise_errors(replies: list[dict]) -> list[dict]:
    """The present workers' replies; the first worker's error raised again as the same domain error."""
    present = [r for r in replies if ABSENT not in r]
    for reply in present:
        if "error" in reply:
            raise getattr(errors, reply["error"])(reply["message"])
    return present


async def cluster_not_ready(state) -> str | None:
    """Why the server (every worker) should get no traffic now, or None when every worker is ready."""
    if problem := not_ready(state):  # this worker's own state first: no round trip while draining
        return problem
    try:
        replies = await asyncio.wait_for(state.peers.all({"op": "ready"}), READY_TIMEOUT_S)
    except TimeoutError:
        return f"the workers did not answer within {READY_TIMEOUT_S:g} s"
    except errors.ServiceUnavailable as exc:
        return exc.message
    for reply in replies:
        if ABSENT in reply:
            return f"worker {reply[ABSENT]} is starting"
        if reply["problem"]:
            return reply["problem"]
    return None


class LocalPeers:
    """One process: the call is answered here."""

    first = True  # the process that counts what happens once per server (model loads)
    owns_repository = True  # it rescans the folder itself (poll mode, SIGHUP)

    def __init__(self) -> None:
        self.state = None

    async def start(self, state) -> None:
        self.state = state

    async def stop(self) -> None:
        pass

    async def all(self, call: dict) -> list[dict]:
        return [await answer(self.state, call)]


class WorkerLink:
    """A worker's line to the supervisor: it answers the supervisor's calls and sends its own fan-outs.
    When the supervisor is gone (the line closes: it exited or was killed), the worker drains and
    exits, and cross-worker calls answer 503 at once.

    On joining it applies the loads and unloads every other worker has applied (the supervisor
    keeps them), so a replacement serves what the others serve before it reports ready.
    """

    owns_repository = False  # the supervisor decides when the workers rescan

    def __init__(self, path: str, slot: int) -> None:
        self.path, self.slot = path, slot
        self.first = slot == 0
        self.state = None
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._gone = False  # the supervisor closed the control connection (it exited or was killed)

    async def start(self, state) -> None:
        self.state = state
        reader, self._writer = await asyncio.open_unix_connection(self.path, limit=2**24)
        self._writer.write(control.message(control.HELLO, [self.slot, os.getpid()]))
        for call in control.read(await reader.readline()).body:  # the replay
            reply = await answer(state, call)
            log.info("worker %d joined: %s %s -> %s", self.slot, call["op"], call["name"], reply)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def stop(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._writer.close()

    async def all(self, call: dict) -> list[dict]:
        if self._gone:
            raise errors.ServiceUnavailable(SUPERVISOR_GONE)
        ident = next(self._ids)
        future = self._pending[ident] = asyncio.get_running_loop().create_future()
        self._writer.write(control.message(control.ALL, call, ident))
        try:
            return await future
        finally:
            self._pending.pop(ident, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            message = control.read(line)
            if message.kind == control.CALL:
                task = asyncio.create_task(self._answer(message.ident, message.body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif (future := self._pending.get(message.ident)) is not None and not future.done():
                future.set_result(message.body)
        self._gone = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(errors.ServiceUnavailable(SUPERVISOR_GONE))
        if not self.state.lifecycle.draining:  # an orphan holds the port from a restarted server: drain, exit
            log.error("worker %d: the supervisor closed its control connection; draining", self.slot)
            self.state.lifecycle.begin_drain()

    async def _answer(self, ident: int, call: dict) -> None:
        try:
            reply = await answer(self.state, call)
        except Exception as exc:  # a failed call still answers, so the caller never waits forever
            log.exception("worker %d: call %s failed", self.slot, call)
            reply = {"error": "ServiceUnavailable", "message": f"worker {self.slot}: {exc}"}
        self._writer.write(control.message(control.REPLY, reply, ident))
