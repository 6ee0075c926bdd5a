"""The downstream client's framing rules (the wire behaviour is covered by the
integration tests against the real Postfix)."""

from __future__ import annotations

import pytest

from appliance.smtp.client import ServerReply, check_argument, dot_stuff
from appliance.smtp.downstream import reply_from


@pytest.mark.parametrize(("content", "stuffed"), [
    (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
    (b".start\r\n", b"..start\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
    (b"no final line end", b"no final line end\r\n"),
    (b"", b""),
])
def test_dot_stuffing(content, stuffed):
    assert dot_stuff(content) == stuffed


def test_control_characters_never_reach_a_command():
    with pytest.raises(ValueError):
        check_argument("a@b.example\r\nRCPT TO:<evil@x>")
    assert check_argument("jürgen@b.example") == "jürgen@b.example"


def test_downstream_replies_keep_their_enhanced_code():
    assert str(reply_from(ServerReply(550, ["5.1.1 <x@example.com>: Recipient unknown"]))) == (
        "550 5.1.1 <x@example.com>: Recipient unknown")
    assert str(reply_from(ServerReply(452, ["Insufficient", "system storage"]))) == (
        "452 4.0.0 Insufficient system storage")
    assert reply_from(ServerReply(999, ["nonsense"])).code == 451
