"""The control socket's messages: built and read in one place, each kind back as it went."""

import pytest

from service import control


@pytest.mark.parametrize(
    "kind, body, ident",
    [
        (control.HELLO, (1, 4242), None),
        (control.REPLAY, [{"op": "load", "name": "m"}], None),
        (control.ALL, {"op": "ready"}, 7),
        (control.REPLIES, [{"problem": None}, {control.ABSENT: 1}], 7),
        (control.CALL, {"op": "stats"}, 3),
        (control.REPLY, {"stats": []}, 3),
    ],
)
def test_each_message_reads_back_as_it_was_written(kind, body, ident):
    line = control.message(kind, list(body) if kind == control.HELLO else body, ident)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert control.read(line) == control.Message(kind, ident, body)
