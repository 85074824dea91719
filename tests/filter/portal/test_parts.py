"""The portal's pure parts: sessions, next= paths, saslimap's replies, previews, the chart."""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import pytest

from filter.portal import chart
from filter.portal.auth import Verdict, reply_verdict
from filter.portal.preview import html_text, preview
from filter.portal.redirects import local_path
from filter.portal.sessions import MAX_PER_LOGIN, Sessions, same
from filter.qstore import DayCount
from tests.clock import FakeClock

SECRET = b"k" * 16 + bytes(range(16))


def _sessions(clock: FakeClock, max_sessions: int = 10) -> Sessions:
    return Sessions(SECRET, idle=100, max_age=1000, max_sessions=max_sessions, clock=clock)


# Sessions


def test_a_session_is_found_by_its_signed_cookie_only() -> None:
    """The cookie value names the session; the bare id or another key's signature does not."""
    table = _sessions(FakeClock())
    session, cookie = table.create("alice@example.com", "alice@example.com", admin=False)
    assert session is table.lookup(cookie)
    assert table.lookup(session.id) is None
    other = Sessions(b"z" * 32, idle=100, max_age=1000, max_sessions=10)
    _, foreign = other.create("alice@example.com", "alice@example.com", admin=False)
    assert table.lookup(foreign) is None


def test_every_login_gets_a_fresh_id_and_token() -> None:
    """Two sessions for the same user share neither id nor CSRF token."""
    table = _sessions(FakeClock())
    a, _ = table.create("alice", "alice@example.com", admin=False)
    b, _ = table.create("alice", "alice@example.com", admin=False)
    assert a.id != b.id
    assert a.csrf != b.csrf


def test_ended_sessions_are_gone() -> None:
    """end() removes the row: its cookie finds nothing afterwards."""
    table = _sessions(FakeClock())
    session, cookie = table.create("alice", "alice@example.com", admin=False)
    table.end(session)
    assert table.lookup(cookie) is None


def test_one_user_logging_in_again_and_again_ends_only_their_own_sessions() -> None:
    """A thousand logins by one user end that user's oldest sessions, never another's."""
    clock = FakeClock()
    table = _sessions(clock, max_sessions=100)
    _, admin = table.create("admin@x", "admin@x", admin=True)
    cookies = [table.create("mallory@x", "mallory@x", admin=False)[1] for _ in range(1000)]
    assert table.lookup(admin) is not None
    assert MAX_PER_LOGIN + 1 == len(table)
    assert table.lookup(cookies[-1]) is not None
    assert table.lookup(cookies[0]) is None


def test_the_table_is_bounded_least_recently_used_first() -> None:
    """At max_sessions, the session unused longest goes."""
    clock = FakeClock()
    table = _sessions(clock, max_sessions=2)
    _, first = table.create("a", "a@x", admin=False)
    _, second = table.create("b", "b@x", admin=False)
    clock.advance(1)
    assert table.lookup(first) is not None  # first is now the most recently used
    table.create("c", "c@x", admin=False)
    assert table.lookup(second) is None
    assert table.lookup(first) is not None
    assert 2 == len(table)


def test_the_pre_login_token_binds_the_login_form_to_its_cookie() -> None:
    """The login form's token is derived from the pre-login cookie's random value."""
    table = _sessions(FakeClock())
    one, two = table.new_pre(), table.new_pre()
    value_one, value_two = table.pre_value(one), table.pre_value(two)
    assert value_one is not None
    assert value_two is not None
    assert table.login_csrf(value_one) != table.login_csrf(value_two)
    assert table.pre_value(value_one) is None  # unsigned
    assert table.lookup(one) is None  # a pre-login value is never a session


def test_tokens_compare_equal_only_when_equal() -> None:
    """same() is equality (in constant time), for any text."""
    assert same("abc", "abc")
    assert not same("abc", "abd")
    assert not same("abc", "")
    assert not same("\u00e9", "e")


# next=


@pytest.mark.parametrize(
    "target",
    ["/messages", "/messages/20261201-1?x=1", "/admin?sender=a%40b", "/", "/%0a"],
)
def test_local_paths_pass(target: str) -> None:
    """A plain path on this site is kept as it is."""
    assert target == local_path(target)


@pytest.mark.parametrize(
    "target",
    [
        "", "//evil.example", "/\\evil.example", "\\\\evil.example", "https://evil.example",
        "http:/evil.example", "javascript:alert(1)", "evil.example/", "/a\r\nb", "/a\nb",
        "/\tx", "/\x00", "/\u2028", "/x/\\y", "x" * 2000, "/" + "a" * 2000,
    ],
)  # fmt: skip
def test_anything_else_is_the_start_page(target: str) -> None:
    """Other hosts, schemes, backslashes and control characters never pass."""
    assert "/home" == local_path(target, "/home")


# saslimap's replies


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (b"OK", Verdict.OK),
        (b"NO authentication failed", Verdict.WRONG),
        (b"NO", Verdict.WRONG),
        (b"NO temporary failure: IMAP server unreachable", Verdict.UNAVAILABLE),
        (b"", Verdict.WRONG),
    ],
)
def test_replies_map_to_three_verdicts(reply: bytes, verdict: Verdict) -> None:
    """OK is OK; saslimap's "NO temporary failure" is unavailable; any other NO is wrong."""
    assert verdict == reply_verdict(reply)


# Previews


def test_plain_text_is_preferred_over_html() -> None:
    """In multipart/alternative the text part is shown, not the HTML one."""
    raw = (
        b'Content-Type: multipart/alternative; boundary="x"\r\n\r\n'
        b"--x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n"
        b"--x\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n--x--\r\n"
    )
    shown = preview(raw)
    assert "café" in shown.text
    assert not shown.from_html
    assert [] == shown.attachments


def test_html_only_becomes_text_with_links_spelled_out() -> None:
    """Tags go, scripts and styles go, links are followed by their target."""
    text = html_text(
        "<style>p{}</style><script>x()</script><p>Hello&nbsp;<b>you</b></p>"
        '<a href="https://e.example/">click</a><img src="t.gif" alt="logo">'
    )
    assert "Hello you\nclick <https://e.example/>[image: logo]" == text


def test_attachments_are_listed_with_decoded_names_and_sizes() -> None:
    """RFC 2047 names are decoded; a base64 body's size is its decoded size."""
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nhello\r\n'
        b'--b\r\nContent-Type: application/pdf; name="=?utf-8?q?R=C3=A9sum=C3=A9.pdf?="\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nQUJDREVGR0g=\r\n--b--\r\n"
    )
    shown = preview(raw)
    assert "hello" in shown.text
    assert [("Résumé.pdf", "application/pdf", 8)] == [
        (a.name, a.type, a.size) for a in shown.attachments
    ]


def test_users_see_only_the_usual_header_fields() -> None:
    """A user's preview shows From, To, Subject...; Received and X- fields only for admins."""
    raw = (
        b"Received: from a by b\r\nX-Trace: t\r\nFrom: a@b\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n"
    )
    assert [("From", "a@b"), ("Subject", "café")] == preview(raw).fields
    assert 4 == len(preview(raw, every_field=True).fields)


def test_control_characters_and_bidi_overrides_are_shown_escaped() -> None:
    """ESC and U+202E in a subject or body appear as escapes, not as themselves."""
    raw = "Subject: a\x1b[31mb \u202eexe.pdf\r\n\r\nline\x07one\r\n".encode()
    shown = preview(raw)
    assert [("Subject", "a\\x1b[31mb \\u202eexe.pdf")] == shown.fields
    assert "line\\x07one\n" == shown.text


def test_a_deeply_nested_message_is_cut_not_crashed() -> None:
    """Thousands of nested multiparts stop at the depth limit, marked as cut."""
    raw = b""
    for n in range(2000):
        raw += f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n--b{n}\r\n'.encode()
    shown = preview(raw + b"\r\ndeep\r\n")
    assert shown.cut


@pytest.mark.parametrize("piece", [b"<a ", b"<!--"], ids=["unclosed-tags", "unclosed-comments"])
def test_an_html_part_of_unclosed_markup_previews_in_bounded_time(piece: bytes) -> None:
    """300 KB of unclosed tags or comments (well under MAX_HTML_INPUT) previews in seconds."""
    # In a child process so a quadratic parse fails the test instead of hanging it.
    code = (
        "import sys; from filter.portal.preview import preview;"
        "preview(b'Content-Type: text/html\\r\\n\\r\\n' + sys.argv[1].encode() * 100_000)"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, piece.decode()], timeout=10, capture_output=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"preview of {100_000 * len(piece)} bytes of {piece!r} took over 10 s")
    assert 0 == done.returncode, done.stderr.decode()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"text/plain; charset=idna", b"hello"),
        (b"text/plain; charset=undefined", b"hello"),
        (b"text/plain; charset=punycode", b"caf\xc3\xa9"),
        (b"text/html", b"<p>hi</p><![ <![ x"),
    ],
    ids=["idna", "undefined", "punycode-8bit", "html-marked-section"],
)
def test_a_hostile_charset_or_broken_html_is_previewed_not_crashed(
    content_type: bytes, body: bytes
) -> None:
    """A charset that cannot decode with 'replace', or '<![' garbage in HTML, still previews."""
    raw = b"Subject: x\r\nContent-Type: " + content_type + b"\r\n\r\n" + body + b"\r\n"
    shown = preview(raw)
    assert [("Subject", "x")] == shown.fields


# The chart


def test_the_chart_fills_missing_days_and_escapes_categories() -> None:
    """Every day of the window is there; an odd category name is escaped, in grey."""
    counts = [
        DayCount(date(2026, 12, 1), "spam", 3),
        DayCount(date(2026, 12, 3), "<evil>", 1),
    ]
    days = chart.days_of(counts, 5, date(2026, 12, 4))
    assert [0, 3, 0, 1, 0] == [sum(d.values()) for _, d in days]
    assert date(2026, 11, 30) == days[0][0]
    svg = chart.svg(counts, 5, date(2026, 12, 4))
    assert "&lt;evil&gt;" in svg
    assert "<evil>" not in svg
    assert chart.OTHER in svg
