"""The server's fast paths give aiosmtpd's own results: MAIL/RCPT paths and the DATA stream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from filter.smtp_in import DataDecoder, DataState, _lines_within, parse_path

LINE_LIMIT = SMTP.line_length_limit


@pytest.fixture(scope="module")
def aiosmtpd_parser() -> Iterator[SMTP]:
    """A plain aiosmtpd SMTP object, for its own ``_getaddr``."""
    loop = asyncio.new_event_loop()
    try:
        yield SMTP(object(), hostname="reference.test", loop=loop)
    finally:
        loop.close()


def reference(parser: SMTP, arg: str) -> tuple[str | None, str | None]:
    """What aiosmtpd answers for ``arg``."""
    return parser._getaddr(arg)


# -- paths ----------------------------------------------------------------------------------

PLAIN = [
    "<a@example.test>",
    "<first.last+tag@sub.example.test>",
    "<A!#$%&'*+/=^_`{|}~?-z@x-y.example>",
    "<a@b> SIZE=1234 BODY=8BITMIME",
    "<a@b>SIZE=1",
    "<a@b>\t \tSMTPUTF8",
    "<a@b>\r\nX",
    "<a@b> <c@d>",
]

HOSTILE = [
    "",
    "<>",
    "<> SIZE=1",
    "<>x",
    "a@b",
    "a@b SIZE=1",
    "<a@b",
    "a@b>",
    "<<a@b>>",
    "< a@b>",
    "<a@b >",
    "<a @b>",
    "<a@ b>",
    "<@r1,@r2:a@b>",
    "<@r1:a@b>",
    '<"a b"@c>',
    '<"a\\"b"@c>',
    '<"a\r\nb"@c>',
    "<a..b@c>",
    "<.a@c>",
    "<a.@c>",
    "<a@b.>",
    "<a@.b>",
    "<a@b..c>",
    "<a@b@c>",
    "<a@>",
    "<@b>",
    "<a@[192.0.2.1]>",
    "<a@[IPv6:2001:db8::1]>",
    "<a\x00b@c>",
    "<a@b\x00>",
    "<a@b>\x00",
    "<a\r\nb@c>",
    "<a@b>\r\n",
    "<é@example.test>",
    "<a@exämple.test>",
    "<a@b>\u00a0SIZE=1",
    "<a@b> \u3000SIZE=1",
    "<=?utf-8?q?x?=@b>",
    "<a=?utf-8?q?x?=@b>",
    "<a@=?utf-8?q?x?=>",
    "<a@b> (comment) SIZE=1",
    "<a@b>(comment)",
    "<a@b> (unclosed",
    "(c)<a@b>",
    "<a(c)@b>",
    "<a@b(c)>",
    "<a\\@b@c>",
    "<a@b,c@d>",
    "<a;b@c>",
    "<a:b@c>",
    "<a@b:c>",
    "<a@b>>",
    "<a@b><",
    "\t<a@b>",
]


@pytest.mark.parametrize("arg", PLAIN)
def test_plain_paths_take_the_fast_path_with_aiosmtpds_result(
    aiosmtpd_parser: SMTP, arg: str
) -> None:
    """``<local@domain>`` with or without parameters is parsed here, as aiosmtpd would."""
    assert reference(aiosmtpd_parser, arg) == parse_path(arg)


@pytest.mark.parametrize("arg", HOSTILE)
def test_unusual_paths_are_left_to_aiosmtpd_or_agree(aiosmtpd_parser: SMTP, arg: str) -> None:
    """Quotes, routes, literals, comments, controls, non-ASCII: aiosmtpd's answer or none."""
    found = parse_path(arg)
    assert found is None or reference(aiosmtpd_parser, arg) == found


@pytest.mark.parametrize(
    "arg", ["<>", "<@r:a@b>", '<"q"@b>', "<a@[1.2.3.4]>", "<é@b>", "a@b", "<a@b> (c)"]
)
def test_what_the_fast_path_declines(arg: str) -> None:
    """The null path, routes, quotes, literals, UTF-8, bare paths, comments: aiosmtpd's job."""
    assert parse_path(arg) is None


_PIECES = st.sampled_from(
    [
        "a", "Z", "0", "-", "+", "=", "?", "_", ".", "..", "@", "<", ">", " ", "\t", "\r", "\n",
        "\r\n", "\x00", "\x7f", '"', "\\", "(", ")", "[", "]", ",", ":", ";", "é", "\u00a0",
        "=?", "?=", "example", "test", "SIZE=1", "BODY=8BITMIME", "<a@b>", "<>", "\udcff",
    ]
)  # fmt: skip


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECES, max_size=12).map("".join))
@example("<a@b>")
def test_paths_from_random_pieces_agree_with_aiosmtpd(aiosmtpd_parser: SMTP, arg: str) -> None:
    """Whenever the fast path answers, for any mix of specials, it is aiosmtpd's answer."""
    found = parse_path(arg)
    if found is not None:
        assert reference(aiosmtpd_parser, arg) == found


_ATOM = st.text("abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=6)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_ATOM, min_size=1, max_size=3).map(".".join),
    st.lists(_ATOM, min_size=1, max_size=3).map(".".join),
    st.sampled_from(["", " ", "  \t", "\t", " (x) ", "\r\n", "\u00a0"]),
    st.sampled_from(["", "SIZE=1", "BODY=8BITMIME SMTPUTF8", "x y"]),
)
def test_well_formed_paths_agree_with_aiosmtpd(
    aiosmtpd_parser: SMTP, local: str, domain: str, gap: str, params: str
) -> None:
    """Generated dot-atom paths with parameters: the fast path answers and agrees."""
    arg = f"<{local}@{domain}>{gap}{params}"
    found = parse_path(arg)
    if "=?" not in arg and "(" not in gap:
        assert found is not None
    if found is not None:
        assert reference(aiosmtpd_parser, arg) == found


# -- DATA -------------------------------------------------------------------------------------


def aiosmtpd_data(
    stream: bytes, size_limit: int | None, chunks: list[int]
) -> tuple[str, bytes, int]:
    """aiosmtpd 1.4's DATA loop, verbatim in substance, over a StreamReader.

    Returns (state name, content, bytes left after the end line); content only
    in state NOMINAL.
    """

    async def run() -> tuple[str, bytes, int]:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        pos = 0
        for size in chunks:
            reader.feed_data(stream[pos : pos + size])
            pos += size
        reader.feed_data(stream[pos:])
        reader.feed_eof()
        data: list[bytearray] = []
        num_bytes = 0
        fragments: list[bytes] = []
        state = "NOMINAL"
        while True:
            try:
                line = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as e:
                if state == "NOMINAL":
                    state = "TOO_LONG"
                data *= 0
                line = await reader.read(e.consumed)
            if not fragments and line == b".\r\n":
                break
            num_bytes += len(line)
            if state == "NOMINAL" and size_limit and num_bytes > size_limit:
                state = "TOO_MUCH"
                data *= 0
            fragments.append(line)
            if line.endswith(b"\r\n"):
                if state == "NOMINAL":
                    joined = bytearray().join(fragments)
                    if len(joined) > LINE_LIMIT:
                        state = "TOO_LONG"
                        data *= 0
                    else:
                        data.append(joined)
                fragments *= 0
        for text in data:
            if text.startswith(b"."):
                del text[0]
        content = bytes(bytearray().join(data)) if state == "NOMINAL" else b""
        return state, content, len(await reader.read())

    return asyncio.run(run())


def decode(stream: bytes, size_limit: int | None, chunks: list[int]) -> tuple[str, bytes, int]:
    """Our decoder over the same stream arriving in the same chunks, as the shortcuts drive it.

    Returns (state name, content, bytes left after the end line).
    """
    decoder = DataDecoder(size_limit, LINE_LIMIT)
    buffer = bytearray()
    cuts = iter([*chunks, len(stream)])
    pos = 0

    def arrive() -> None:
        nonlocal pos
        size = next(cuts)
        buffer.extend(stream[pos : pos + size])
        pos = min(pos + size, len(stream))

    while not decoder.done:
        if decoder.at_line_start:
            complete, dotted = decoder.scan(buffer)
            if complete:
                block = bytes(buffer[:complete])
                del buffer[:complete]
                decoder.feed_lines(block, dotted=dotted)
                continue
        # asyncio's readuntil: a line, or a LimitOverrunError once the limit is passed.
        while True:
            end = buffer.find(b"\r\n")
            if end > LINE_LIMIT or (end < 0 and len(buffer) - 1 > LINE_LIMIT):
                consumed = end if end >= 0 else len(buffer) - 1
                piece = bytes(buffer[:consumed])
                del buffer[:consumed]
                decoder.feed_piece(piece, overrun=True)
                break
            if end >= 0:
                piece = bytes(buffer[: end + 2])
                del buffer[: end + 2]
                decoder.feed_piece(piece)
                break
            arrive()
    content = decoder.content() if decoder.state is DataState.NOMINAL else b""
    return decoder.state.name, content, len(buffer) + len(stream) - pos


_LINES = st.sampled_from(
    [
        b"", b".", b"..", b"...", b".x", b"x.", b"Subject: hi", b"\r", b"\n", b"\r\r", b"a\nb",
        b"\x00", b"\xff\xfe", b". ", b"x" * 997, b"x" * 998, b"x" * 999, b"x" * 1000, b"." * 1000,
        b"y" * 1001, b"z" * 1002, b"w" * 2500, b"." + b"v" * 998,
    ]
)  # fmt: skip


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_LINES, max_size=14),
    st.sampled_from([None, 0, 1, 50, 1000, 2000, 5000]),
    st.lists(st.integers(1, 3000), max_size=6),
    st.sampled_from([b"", b"QUIT\r\n", b".\r\n", b"MAIL FROM:<a@b>\r\n"]),
)
@example([b"x" * 999, b"." * 5], None, [1, 1], b"")
def test_data_decoder_agrees_with_aiosmtpd_loop(
    lines: list[bytes], size_limit: int | None, chunks: list[int], after: bytes
) -> None:
    """Any lines, limits and arrival pattern: same verdict and content, same bytes left over."""
    stream = b"".join(line + b"\r\n" for line in lines) + b".\r\n" + after
    assert aiosmtpd_data(stream, size_limit, chunks) == decode(stream, size_limit, chunks)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.lists(st.integers(1, 1500), max_size=4))
def test_data_decoder_agrees_on_raw_bytes(raw: bytes, chunks: list[int]) -> None:
    """Arbitrary bytes with CR, LF and dots anywhere, then the end line: aiosmtpd's verdict."""
    stream = raw + b"\r\n.\r\n"
    assert aiosmtpd_data(stream, 2000, chunks) == decode(stream, 2000, chunks)


def test_dot_stuffing_is_undone_across_blocks() -> None:
    """A leading dot is removed from every line, at a block's start and inside it."""
    decoder = DataDecoder(None, LINE_LIMIT)
    decoder.feed_lines(b"..a\r\nb\r\n..\r\n")
    decoder.feed_lines(b".c\r\n.\r\n")
    assert decoder.done
    assert b".a\r\nb\r\n.\r\nc\r\n" == decoder.content()


def test_complete_stops_at_the_end_line() -> None:
    """Only bytes up to the end line are taken; pipelined commands stay in the buffer."""
    assert 3 == DataDecoder.scan(b".\r\nQUIT\r\n")[0]
    assert 8 == DataDecoder.scan(b"abc\r\n.\r\nQUIT\r\n")[0]
    assert 5 == DataDecoder.scan(b"abc\r\n.\r")[0]
    assert 0 == DataDecoder.scan(b"no line end yet")[0]


@pytest.mark.parametrize(
    ("lines", "limit", "state"),
    [
        ([b"x" * 999], None, "NOMINAL"),
        ([b"x" * 1000], None, "TOO_LONG"),
        ([b"x" * 5000], None, "TOO_LONG"),
        ([b"x" * 100] * 10, 500, "TOO_MUCH"),
        ([b"x" * 100, b"y" * 1000], 150, "TOO_MUCH"),
        ([b"x" * 100, b"y" * 1002], 150, "TOO_LONG"),
    ],
)
def test_limits_are_reported_like_aiosmtpd(
    lines: list[bytes], limit: int | None, state: str
) -> None:
    """Over-long lines and too much data: the first limit broken wins, in aiosmtpd's order."""
    stream = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
    assert state == decode(stream, limit, [len(stream)])[0]
    assert state == aiosmtpd_data(stream, limit, [len(stream)])[0]


def _longest_by_split(block: bytes) -> int:
    """The line-length measure the fast check replaces: longest CRLF line, CRLF counted."""
    return max(map(len, block.split(b"\r\n")[:-1])) + 2


@settings(max_examples=800)
@given(
    st.lists(
        st.one_of(
            st.integers(0, 1200).map(lambda n: b"x" * n),
            st.sampled_from([b"\r", b"\n", b"a\rb", b"\n\n", b"\r\r", b"."]),
        ),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from([2, 3, 10, 80, 998, 1001, 1002]),
)
def test_line_length_check_agrees_with_splitting(lines: list[bytes], limit: int) -> None:
    """The backward-search line check answers exactly as splitting at every CRLF would."""
    block = b"".join(line + b"\r\n" for line in lines)
    assert (_longest_by_split(block) <= limit) == _lines_within(block, limit)


def test_scan_flags_dot_stuffed_lines() -> None:
    """scan() says whether a line after the first starts with a dot, up to what it takes."""
    assert (8, False) == DataDecoder.scan(b"abc\r\n.\r\nQUIT\r\n")
    assert (14, True) == DataDecoder.scan(b"a\r\n..b\r\nc\r\n.\r\n")
    assert (9, False) == DataDecoder.scan(b".ab\r\ncd\r\n")  # the first line is feed_lines' job
    assert (7, True) == DataDecoder.scan(b"a\r\n.b\r\n.")
    assert (3, False) == DataDecoder.scan(b"a\r\n.\r")
    assert (0, False) == DataDecoder.scan(b"no line end yet")


def test_a_block_said_clean_is_kept_as_is() -> None:
    """feed_lines(dotted=False) keeps the block's bytes; only a first-line dot is removed."""
    decoder = DataDecoder(None, LINE_LIMIT)
    decoder.feed_lines(b".a\r\nb\r\n", dotted=False)
    decoder.feed_lines(b"c\r\n.\r\n", dotted=False)
    assert b"a\r\nb\r\nc\r\n" == decoder.content()


@pytest.mark.parametrize(
    ("stream", "dotted"),
    [
        (b"a\r\nb\r\n.\r\n", False),
        (b"..a\r\nb\r\n.\r\n", True),
        (b"a\r\n..b\r\n.\r\n", True),
        (b"a\n.b\r\n.\r\n", False),  # a bare LF is no line end to SMTP: not dot-stuffed
        (b"x" * 1500 + b"\r\n..b\r\n.\r\n", True),  # a dotted line after a long one
    ],
)
def test_decoder_says_whether_a_line_was_dot_stuffed(stream: bytes, dotted: bool) -> None:
    """DataDecoder.dotted, whatever the arrival pattern."""
    for chunks in ([len(stream)], [1] * len(stream), [3, 4, 5]):
        decoder = DataDecoder(None, 2000)
        buffer = bytearray()
        pos = 0
        for size in [*chunks, len(stream)]:
            buffer.extend(stream[pos : pos + size])
            pos += size
            while not decoder.done and decoder.at_line_start:
                complete, flag = decoder.scan(buffer)
                if not complete:
                    break
                block = bytes(buffer[:complete])
                del buffer[:complete]
                decoder.feed_lines(block, dotted=flag)
            while not decoder.done and b"\r\n" in buffer:
                end = buffer.index(b"\r\n") + 2
                decoder.feed_piece(bytes(buffer[:end]))
                del buffer[:end]
            if decoder.done:
                break
        assert decoder.done
        assert dotted == decoder.dotted


def test_a_dotted_line_fed_piece_by_piece_is_flagged() -> None:
    """The line-by-line path (pieces of overrunning or odd reads) records a dotted line too."""
    decoder = DataDecoder(None, LINE_LIMIT)
    decoder.feed_piece(b"plain\r\n")
    assert not decoder.dotted
    decoder.feed_piece(b"..dot\r\n")
    decoder.feed_piece(b".\r\n")
    assert decoder.done
    assert decoder.dotted
    assert b"plain\r\n.dot\r\n" == decoder.content()
