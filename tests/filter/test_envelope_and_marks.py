"""Issue 14 item 5: addresses that are not UTF-8, forged marks, the EHLO name in Received."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

import pytest

from filter import headers
from filter.config import Config, PolicyConfig, ServerConfig
from filter.marks import OWN_PREFIXES, SPAM_PREFIXES, Marker, spam_headers
from filter.message import Message
from filter.server import Handler, start_server
from filter.service import Filter
from tests.filter.test_pipeline import RAW, make, message


class Recorder:
    """Records each message and accepts it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle(self, msg: Message) -> str:
        """Accept."""
        self.messages.append(msg)
        return "250 2.0.0 Ok"


async def _talk(lines: Sequence[bytes]) -> tuple[list[bytes], list[Message]]:
    """Send each command line and read its reply, one at a time; the replies and messages."""
    service = Recorder()
    handler = Handler(cast(Filter, service), max_connections=4)
    srv = await start_server(
        handler, "127.0.0.1", 0, hostname="filter.test", data_size_limit=10_000, idle_timeout=10
    )
    answers: list[bytes] = []
    try:
        port = cast(asyncio.Server, srv).sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            await reader.readline()  # greeting
            for line in lines:
                writer.write(line)
                reply = await reader.readline()
                while reply[3:4] == b"-":
                    reply = await reader.readline()
                answers.append(reply)
        writer.close()
    finally:
        srv.close()
    return answers, service.messages


DATA = [b"DATA\r\n", b"Subject: x\r\n\r\nhi\r\n.\r\n"]


@pytest.mark.parametrize(
    ("mail", "rcpt", "refused_at"),
    [
        (b"MAIL FROM:<a\xff@example.net>\r\n", b"RCPT TO:<b@example.com>\r\n", 1),
        (b"MAIL FROM:<a@example.net>\r\n", b"RCPT TO:<b\xc3@example.com>\r\n", 2),
        (b"MAIL FROM:<a\xed\xa0\x80@example.net> SMTPUTF8\r\n", b"RCPT TO:<b@x.test>\r\n", 1),
    ],
)
async def test_an_address_that_is_not_utf8_is_refused_at_once_with_one_log_line(
    mail: bytes, rcpt: bytes, refused_at: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Invalid UTF-8 in MAIL FROM or RCPT TO: 553 there (not 250, then 451 at DATA), one line."""
    caplog.set_level(logging.INFO, logger="filter.server")
    answers, messages = await _talk([b"EHLO client.test\r\n", mail, rcpt, *DATA[:1]])
    assert answers[refused_at].startswith(b"553 5.1.")
    assert b"not valid UTF-8" in answers[refused_at]
    assert answers[3].startswith(b"503")  # nothing to send DATA for
    assert [] == messages
    lines = [r.getMessage() for r in caplog.records if r.name == "filter.server"]
    assert 1 == len(lines)
    assert "peer=127.0.0.1" in lines[0]
    assert "\\x" in lines[0]  # the bad bytes escaped, never raw


async def test_utf8_addresses_with_smtputf8_still_pass() -> None:
    """A valid UTF-8 address (SMTPUTF8) is accepted and reaches the pipeline unchanged."""
    answers, messages = await _talk(
        [
            b"EHLO client.test\r\n",
            "MAIL FROM:<j\u00f6rg@example.net> SMTPUTF8\r\n".encode(),
            "RCPT TO:<\u00e9l\u00e8ve@example.com>\r\n".encode(),
            *DATA,
        ]
    )
    assert [b"250", b"250", b"250", b"354", b"250"] == [a[:3] for a in answers]
    assert ("\u00e9l\u00e8ve@example.com",) == messages[0].rcpt_tos
    assert "j\u00f6rg@example.net" == messages[0].mail_from


FORGED = (
    b"X-Spam-Flag: NO\r\nX-Spam-Report: all fine\r\nX-Spam-Checker-Version: SA 9\r\n"
    b"x-spam-status: No\r\nX-Spam-Score:\r\n -5\r\nX-Virus-Scanned: by ClamAV, clean\r\n"
    b"X-Virus-Status: Clean\r\nX-Quarantine-ID: <forged>\r\nX-Quarantine-Id: <again>\r\n"
)


async def test_every_field_of_our_families_is_removed_before_ours_are_added() -> None:
    """Forged X-Spam-*, X-Virus-* and X-Quarantine-ID, any case, folded: none survives."""
    f, _, _, fwd = make()
    assert (await f.handle(message(FORGED + RAW))).startswith("250")
    out = fwd.sent[0].data
    head = headers.split(out)[0]
    for forged in (b"forged", b"again", b"ClamAV", b"all fine", b"SA 9", b"-5"):
        assert forged not in head
    assert [b"x-virus-scanned"] == [
        headers.field_name(x) for x in headers.fields(head) if b"virus" in headers.field_name(x)
    ]
    assert out.endswith(RAW)


async def test_forged_spam_fields_are_kept_when_the_policy_says_so() -> None:
    """remove_existing_spam_headers = false keeps X-Spam-* (X-Virus-* always goes)."""
    policy = PolicyConfig(remove_existing_spam_headers=False)
    f, _, _, fwd = make(Config(server=ServerConfig(hostname="gw.test"), policy=policy))
    await f.handle(message(FORGED + RAW))
    out = fwd.sent[0].data
    assert b"X-Spam-Report: all fine" in out
    assert b"ClamAV" not in out
    assert b"forged" not in out


def test_every_field_the_marks_add_is_one_they_remove() -> None:
    """Whatever Marker writes (but Received and Subject) matches a prefix removed on entry."""
    marker = Marker(PolicyConfig(), "gw.test")
    fields = (*spam_headers(7.0, ["A"], 6.31, 2.0, 6.31), ("X-Spam-Skipped", "big"))
    marked = marker.mark(message(), "id1", fields, "***SPAM*** ", "qid1")
    added = {headers.field_name(x) for x in headers.fields(headers.split(marked)[0])}
    added -= {headers.field_name(x) for x in headers.fields(headers.split(RAW)[0])}
    assert {b"x-virus-scanned", b"x-quarantine-id", b"x-spam-flag"} <= added
    assert set() == {n for n in added if not n.startswith(OWN_PREFIXES + SPAM_PREFIXES)}


@pytest.mark.parametrize(
    "helo", ["evil\rX-Spam-Flag: NO", "a\nb", "a\r\nb", "nul\0x", "bell\x07\x1b[31m", "c1\x85"]
)
def test_control_characters_in_the_ehlo_name_never_reach_received(helo: str) -> None:
    """CR, LF, NUL and other controls in the EHLO name become '?' in our Received line."""
    marker = Marker(PolicyConfig(), "gw.test")
    msg = Message("a@x", ("b@y",), RAW, helo=helo, peer="127.0.0.1")
    received = headers.fields(headers.split(marker.mark(msg, "id1"))[0])[0]
    assert received.startswith(b"Received: from ")
    assert received.endswith(b"\r\n")
    body = received[:-2].replace(b"\r\n\t", b" ")  # our own folding only
    assert all(32 <= c < 127 for c in body), body
    assert b"?" in body


async def test_a_helo_with_a_lone_cr_through_the_server_is_cleaned() -> None:
    """The issue's case over a socket: EHLO with a lone CR, then Received without it."""
    f, _, _, fwd = make()
    answers, messages = await _talk(
        [
            b"EHLO evil\rX-Injected: 1\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<b@example.com>\r\n",
            *DATA,
        ]
    )
    assert b"250" == answers[-1][:3]
    assert (await f.handle(messages[0])).startswith("250")
    head = headers.split(fwd.sent[0].data)[0]
    assert b"\rX-Injected" not in head
    assert b"x-injected" not in [headers.field_name(x) for x in headers.fields(head)]
    assert b"from evil?X-Injected: 1 ([" in head
