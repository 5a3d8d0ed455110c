"""What the supervisor and its worker processes share, below both: the control socket's messages
and Prometheus' multiprocess directory.

The control socket carries JSON lines, each one message of a kind: a worker says ``HELLO`` (its
slot and pid) and is sent the ``REPLAY`` of the loads and unloads the others applied; it asks for
a call on every worker with ``ALL`` and gets the ``REPLIES``; the supervisor hands each worker a
``CALL`` and gets its ``REPLY``. A worker that is not running replies ``{ABSENT: slot}``. The
messages are built and read here only.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable: read when it is imported
ABSENT = "absent"  # the reply of a worker that is not running (being replaced)
HELLO, REPLAY, ALL, REPLIES, CALL, REPLY = "hello", "replay", "all", "replies", "call", "reply"
KINDS = (HELLO, REPLAY, ALL, REPLIES, CALL, REPLY)


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # one of KINDS
    ident: int | None  # what pairs an answer with its question (ALL/REPLIES, CALL/REPLY)
    body: object  # HELLO: (slot, pid); REPLAY: the calls; ALL, CALL: a call; REPLIES: a list; REPLY: a dict


def message(kind: str, body: object, ident: int | None = None) -> bytes:
    """One message as a JSON line."""
    return orjson.dumps({kind: body} if ident is None else {"id": ident, kind: body}) + b"\n"


def read(line: bytes) -> Message:
    data = orjson.loads(line)
    kind = next(k for k in KINDS if k in data)
    body = tuple(data[kind]) if kind == HELLO else data[kind]
    return Message(kind, data.get("id"), body)
