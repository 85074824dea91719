"""FilterSMTP over real sockets: its shortcuts answer exactly as aiosmtpd's own code does."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import logging
import random
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import aiosmtpd
import pytest
from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from filter import aiosmtpd_shortcuts
from filter.aiosmtpd_shortcuts import SHORTCUT_VERSIONS, ShortcutSMTP, shortcuts_for
from filter.message import Message
from filter.server import FilterSMTP, Handler, start_server
from filter.service import Filter

from .test_smtp_in import HOSTILE, PLAIN

SIZE_LIMIT = 4000


class FakeService:
    """Records each message and accepts it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle(self, msg: Message) -> str:
        """Accept."""
        self.messages.append(msg)
        return f"250 2.0.0 Ok, got {len(msg.data)} bytes"


async def _session(chunks: Sequence[bytes], *, shortcuts: bool) -> tuple[bytes, list[Message]]:
    """Send ``chunks`` (pipelined, as they come) to a fresh server; everything it answered."""
    saved = ShortcutSMTP.shortcuts
    ShortcutSMTP.shortcuts = shortcuts  # the class attribute FilterSMTP inherits
    service = FakeService()
    handler = Handler(cast(Filter, service), max_connections=10)
    srv = await start_server(
        handler, "127.0.0.1", 0, hostname="filter.test", data_size_limit=SIZE_LIMIT,
        idle_timeout=10,
    )  # fmt: skip
    try:
        port = cast(asyncio.Server, srv).sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0)
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
    finally:
        srv.close()
        ShortcutSMTP.shortcuts = saved
    return answer, service.messages


Transcript = tuple[bytes, list[Message]]


def _both(chunks: Sequence[bytes]) -> tuple[Transcript, Transcript]:
    """(with shortcuts, with aiosmtpd's code) for the same client bytes."""
    return asyncio.run(_session(chunks, shortcuts=True)), asyncio.run(
        _session(chunks, shortcuts=False)
    )


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut the client's bytes at random places (segments as they may arrive)."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 8))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _body(lines: Sequence[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b".\r\n"


def test_a_whole_transaction_is_answered_like_aiosmtpd() -> None:
    """EHLO, XFORWARD, MAIL with parameters, two RCPTs, DATA with dots, QUIT: same bytes back."""
    script = (
        b"EHLO client.test\r\nXFORWARD NAME=mx.test ADDR=192.0.2.1\r\n"
        b"MAIL FROM:<a@example.test> SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n"
        + _body([b"Subject: x", b"", b"..leading dot", b"."*3, b"end"])
        + b"QUIT\r\n"
    )  # fmt: skip
    fast, slow = _both([script])
    assert slow == fast
    answer, messages = fast
    assert answer.count(b"\r\n250-") >= 4  # the EHLO reply, every line of it
    assert [b"Subject: x\r\n\r\n.leading dot\r\n..\r\nend\r\n"] == [m.data for m in messages]
    assert messages[0].dot_lines  # the re-injection must stuff those dots again
    assert ("b@example.test", "c@example.test") == messages[0].rcpt_tos
    assert {"NAME": "mx.test", "ADDR": "192.0.2.1"} == messages[0].xforward


def test_the_null_sender_reaches_the_pipeline_as_empty() -> None:
    """MAIL FROM:<> (a bounce) is the empty sender, not "<>", so it is re-injected as <>."""
    script = b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n" + _body([b"x"])
    answer, messages = asyncio.run(_session([script + b"QUIT\r\n"], shortcuts=True))
    assert [""] == [m.mail_from for m in messages]
    assert b"250 2.0.0 Ok, got 3 bytes\r\n" in answer


def test_one_command_at_a_time_like_smtp_source() -> None:
    """HELO, then each command in its own segment: same replies."""
    script = [
        b"HELO vm\r\n", b"MAIL FROM:<a@example.test>\r\n", b"RCPT TO:<b@example.test>\r\n",
        b"DATA\r\n", _body([b"1" + b"X" * 77] * 45), b"QUIT\r\n",
    ]  # fmt: skip
    fast, slow = _both(script)
    assert slow == fast
    assert 1 == len(fast[1])
    assert not fast[1][0].dot_lines  # no line started with a dot: nothing to look for
    assert slow[1][0].dot_lines  # aiosmtpd's own loop cannot tell: assume there were


@pytest.mark.parametrize("path", [*PLAIN, *HOSTILE])
def test_every_path_is_answered_like_aiosmtpd(path: str) -> None:
    """Each plain and hostile path in MAIL FROM and RCPT TO: same replies, same envelope."""
    raw = path.encode("utf-8", "surrogateescape")
    script = (
        b"EHLO c\r\nMAIL FROM:" + raw + b"\r\nMAIL FROM:<s@example.test>\r\n"
        b"RCPT TO:" + raw + b"\r\nRCPT TO:<r@example.test>\r\nDATA\r\n" + _body([b"x"])
        + b"QUIT\r\n"
    )  # fmt: skip
    fast, slow = _both([script])
    assert slow == fast


def test_data_limits_are_answered_like_aiosmtpd() -> None:
    """Over-long lines and too much data: aiosmtpd's 500 and 552, then the session goes on."""
    for body in ([b"x" * 1000], [b"y" * 3000], [b"z" * 900] * 6, [b"w" * 900] * 4 + [b"v" * 2000]):
        script = (
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + _body(body)
            + b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + _body([b"ok"]) + b"QUIT\r\n"
        )  # fmt: skip
        rng = random.Random(len(script))
        fast, slow = _both(_split(script, rng))
        assert slow == fast
        assert [b"ok\r\n"] == [m.data for m in fast[1]]


_COMMANDS = st.sampled_from(
    [
        b"HELO c", b"EHLO c", b"EHLO", b"NOOP", b"RSET", b"HELP", b"HELP MAIL", b"VRFY <a@b>",
        b"MAIL FROM:<a@b>", b"MAIL FROM:<a@b> SIZE=99999", b"MAIL FROM:<a@b> SMTPUTF8",
        b"MAIL FROM:<>", b"MAIL FROM:a@b", b"MAIL FROM:<a@b> BODY=BINARY", b"MAIL TO:<a@b>",
        b"RCPT TO:<c@d>", b"RCPT TO:<c@d> NOTIFY=NEVER", b"RCPT TO:<@r:c@d>", b"RCPT TO:<c@d",
        b"XFORWARD NAME=x", b"XFORWARD BOGUS=1", b"STARTTLS", b"AUTH PLAIN", b"bogus", b"",
        b"DATA x", b"\xff\xfe", b"MAIL FROM:<\xc3\xa9@b>",
    ]
)  # fmt: skip
# Lines as a client sends them: dot-stuffed, so never a lone ".".
_DATA_LINES = st.lists(
    st.sampled_from(
        [b"", b"..", b"...", b".x", b"x", b"\r", b"a\nb", b"\x00", b"x" * 999, b"x" * 1000]
    ),
    max_size=8,
)  # fmt: skip


# A transaction that always reaches 354, so its body is read as data, never as commands.
_TRANSACTION = _DATA_LINES.map(
    lambda lines: b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + _body(lines)
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_COMMANDS, _TRANSACTION), max_size=10), st.randoms())
def test_random_sessions_are_answered_like_aiosmtpd(
    commands: list[bytes], rng: random.Random
) -> None:
    """Random pipelined sessions cut into random segments: same bytes back, same messages."""
    # Five unknown commands make aiosmtpd hang up with our data unread: a reset
    # whose timing would make the transcripts differ by chance.
    assume(commands.count(b"bogus") < 4)
    script = b"".join(c if c.endswith(b".\r\n") else c + b"\r\n" for c in commands) + b"QUIT\r\n"
    chunks = _split(script, rng)
    fast, slow = _both(chunks)
    assert slow == fast


def test_quick_constructor_sets_what_aiosmtpds_sets() -> None:
    """Every attribute aiosmtpd's constructor sets, with the same value (methods: same function)."""

    def described(conn: FilterSMTP) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in vars(conn).items():
            if inspect.ismethod(value):
                value = ("method", value.__func__, type(value.__self__))
            elif isinstance(value, dict):
                value = {
                    k: ("method", v.__func__, type(v.__self__)) if inspect.ismethod(v) else
                    (v.method.__func__, v.is_builtin) if hasattr(v, "is_builtin") else v
                    for k, v in value.items()
                }  # fmt: skip
            elif isinstance(value, asyncio.StreamReader):
                value = ("reader", value._limit)  # type: ignore[attr-defined]
            elif name in ("_stream_reader_wr", "_closed", "_loop"):
                value = type(value)
            out[name] = value
        return out

    async def build() -> tuple[dict[str, Any], dict[str, Any]]:
        handler = Handler(cast(Filter, FakeService()), max_connections=1)
        kwargs: dict[str, Any] = {
            "data_size_limit": 1000, "enable_SMTPUTF8": True, "decode_data": False,
            "hostname": "h.test", "ident": "mail-filter", "timeout": 7,
            "loop": asyncio.get_running_loop(),
        }  # fmt: skip
        quick = FilterSMTP(handler, **kwargs)
        # An argument the quick constructor does not take sends it to aiosmtpd's.
        full = FilterSMTP(handler, **kwargs, auth_required=False)
        return described(quick), described(full)

    assert FilterSMTP.shortcuts, "the installed aiosmtpd is not a version the shortcuts mirror"
    quick, full = asyncio.run(build())
    assert full.keys() == quick.keys()
    assert full == quick


def test_smtp_methods_table_matches_aiosmtpds() -> None:
    """The cached command table names the same commands as aiosmtpd's dir() scan."""

    async def build() -> set[str]:
        handler = Handler(cast(Filter, FakeService()), max_connections=1)
        conn = FilterSMTP(handler, hostname="h", loop=asyncio.get_running_loop())
        return set(conn._smtp_methods)

    expected = {m[5:] for m in dir(FilterSMTP) if m.startswith("smtp_")}
    assert expected == asyncio.run(build())
    assert "XFORWARD" in expected
    assert issubclass(FilterSMTP, SMTP)


async def test_connection_over_the_cap_gets_421_without_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Beyond max_connections a client gets 421 and the filter logs no traceback."""
    handler = Handler(cast(Filter, FakeService()), max_connections=1)
    srv = await start_server(
        handler, "127.0.0.1", 0, hostname="filter.test", data_size_limit=SIZE_LIMIT, idle_timeout=10
    )
    port = cast(asyncio.Server, srv).sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(5):
            first_reader, first = await asyncio.open_connection("127.0.0.1", port)
            assert (await first_reader.readline()).startswith(b"220")
            reader, second = await asyncio.open_connection("127.0.0.1", port)
            assert (await reader.read()).startswith(b"421")
        second.close()
        first.close()
        await asyncio.sleep(0.05)
    finally:
        srv.close()
    assert [] == [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- the switch, the pin and the one module of private names ----------------------------------

SRC = Path(__file__).resolve().parents[2] / "src" / "filter"


def test_shortcuts_are_on_only_for_the_exact_versions_checked() -> None:
    """An exact-version set: a patch release or series the tests never saw runs aiosmtpd's code."""
    assert aiosmtpd.__version__ in SHORTCUT_VERSIONS
    assert shortcuts_for(aiosmtpd.__version__)
    for other in ("1.4.5", "1.4.7", "1.4", "1.5.0", "2.0.0", "1.4.6.post1"):
        assert not shortcuts_for(other), other


def test_pyproject_pins_aiosmtpd_to_the_versions_checked() -> None:
    """pyproject.toml allows exactly the aiosmtpd versions the shortcuts were compared against."""
    with (SRC.parents[1] / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    pins = [d for d in deps if d.startswith("aiosmtpd")]
    assert [f"aiosmtpd=={v}" for v in sorted(SHORTCUT_VERSIONS)] == pins


def test_with_the_switch_off_aiosmtpds_own_code_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shortcuts off by the class attribute: no shortcut is called, and the session still works."""

    def broken(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a shortcut ran with the switch off")

    monkeypatch.setattr(aiosmtpd_shortcuts, "parse_path", broken)
    monkeypatch.setattr(aiosmtpd_shortcuts, "DataDecoder", broken)
    monkeypatch.setattr(aiosmtpd_shortcuts, "_tables", broken)
    monkeypatch.setattr(aiosmtpd_shortcuts, "_quick_init", broken)
    script = (
        b"EHLO client.test\r\nXFORWARD NAME=mx.test ADDR=192.0.2.1\r\n"
        b"MAIL FROM:<a@example.test> SIZE=100\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
        + _body([b"Subject: x", b"", b"..dot"]) + b"RSET\r\nQUIT\r\n"
    )  # fmt: skip
    answer, messages = asyncio.run(_session([script], shortcuts=False))
    assert b"250-XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT\r\n" in answer
    assert b"250 2.0.0 Ok, got 20 bytes\r\n" in answer
    assert [b"Subject: x\r\n\r\n.dot\r\n"] == [m.data for m in messages]
    assert {"NAME": "mx.test", "ADDR": "192.0.2.1"} == messages[0].xforward
    assert messages[0].dot_lines  # aiosmtpd's loop cannot tell: the re-injection looks
    assert answer.endswith(b"250 OK\r\n221 Bye\r\n")


def _private_names() -> set[str]:
    """Every private name aiosmtpd.smtp and asyncio's streams define or set on their objects."""
    names: set[str] = set()
    for module in (aiosmtpd_smtp, asyncio.streams):
        source = inspect.getsource(module)
        names |= set(re.findall(r"\.(_[A-Za-z]\w*)", source))
        names |= {n for n in vars(module) if n.startswith("_")}
    for cls in (SMTP, asyncio.StreamReader, asyncio.StreamReaderProtocol, asyncio.StreamWriter):
        names |= {n for n in dir(cls) if n.startswith("_")}
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def _attributes(path: Path) -> set[str]:
    """Names a module uses as attributes (``x.name``, ``getattr(x, "name")``, overrides)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
    return names


def test_no_other_filter_module_touches_aiosmtpd_or_asyncio_private_names() -> None:
    """Only filter/aiosmtpd_shortcuts.py uses a private name of aiosmtpd or asyncio's streams."""
    private = _private_names()
    assert {"_getaddr", "_buffer", "_reader", "_set_rset_state"} <= private
    used = {
        path.name: sorted(_attributes(path) & private)
        for path in sorted(SRC.glob("*.py"))
        if path.name != "aiosmtpd_shortcuts.py"
    }
    assert {} == {name: names for name, names in used.items() if names}


def test_the_shortcuts_docstring_lists_every_private_name_it_touches() -> None:
    """Each private aiosmtpd or asyncio name the shortcuts module uses is named in its docstring."""
    doc = aiosmtpd_shortcuts.__doc__ or ""
    listed = set(re.findall(r"``(?:\w+\.)?(_\w+)``", doc))
    used = _attributes(SRC / "aiosmtpd_shortcuts.py") & _private_names()
    assert {"_buffer", "_AuthMechAttr", "_set_rset_state"} <= used
    assert set() == used - listed


class _ClosedServer:
    """The listening server's close(), all the drain calls on it."""

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("deadline", "waited"), [(0.0, False), (0.2, True)])
async def test_drain_timeout_zero_does_not_wait(deadline: float, waited: bool) -> None:
    """server.drain_timeout = 0 drops unanswered messages at once (Postfix retries them)."""
    from filter.server import Handler, SmtpListener

    handler = Handler(cast(Any, None), 1)
    handler.busy = 1
    handler.idle.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await SmtpListener(cast(Any, _ClosedServer()), handler).drain(deadline)
    assert waited == (loop.time() - started >= 0.15)
