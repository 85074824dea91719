"""Authentication policy without sockets: validation, realms, domains, outcomes."""

from __future__ import annotations

import logging

import pytest

from saslimap.config import UsersConfig
from saslimap.service import Authenticator, Verdict, shown
from tests.fakes import FakeBackend


def make(users: UsersConfig | None = None) -> tuple[Authenticator, FakeBackend]:
    backend = FakeBackend({"alice@example.com": "right pw", "bob": "pw"})
    return Authenticator(users or UsersConfig(), backend), backend


async def test_right_password_is_ok() -> None:
    """The backend's acceptance becomes OK."""
    auth, _ = make()
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"example.com")
    assert Verdict.OK == result.verdict
    assert "alice@example.com" == result.user


async def test_wrong_password_is_no() -> None:
    """The backend's rejection becomes NO."""
    auth, _ = make()
    assert Verdict.NO == (await auth.verify(b"alice", b"wrong", b"smtp", b"example.com")).verdict


async def test_outage_is_tempfail_never_ok() -> None:
    """An unavailable backend gives TEMPFAIL with its kind."""
    auth, backend = make()
    backend.down = "timeout"
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"example.com")
    assert Verdict.TEMPFAIL == result.verdict
    assert "timeout" == result.error_kind


@pytest.mark.parametrize(
    ("login", "password"),
    [
        (b"", b"pw"),
        (b"bob", b""),
        (b"bob\x00", b"pw"),
        (b"bob", b"pw\x00"),
        (b'user "x"\r\nA2 LOGIN victim', b"pw"),
        (b"bob", b"pw\r\nA2 LOGIN victim x"),
        (b"bob\n", b"pw"),
        (b"bob", b"p\tw"),
        (b"bob", b"p\x7fw"),
        (b"bob\xff", b"pw"),
        (b"bob", b"\xc3\x28"),
    ],
)
async def test_bad_input_is_no_without_asking_imap(login: bytes, password: bytes) -> None:
    """Empty, control-character and non-UTF-8 values are refused before the backend."""
    auth, backend = make()
    result = await auth.verify(login, password, b"smtp", b"")
    assert Verdict.NO == result.verdict
    assert [] == backend.calls


async def test_control_characters_in_realm_are_refused() -> None:
    """CR/LF in the realm would end up in the IMAP user name: refused."""
    auth, backend = make()
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"example.com\r\nX")
    assert Verdict.NO == result.verdict
    assert [] == backend.calls


async def test_realm_is_joined_by_default() -> None:
    """Postfix's login + realm become login@realm, as saslauthd -r does."""
    auth, _ = make()
    assert "alice@example.com" == auth.imap_user("alice", "example.com")
    assert "bob" == auth.imap_user("bob", "")


async def test_realm_can_be_ignored_and_names_lowercased() -> None:
    """realm = ignore drops the realm; lowercase folds the whole name."""
    auth, _ = make(UsersConfig(realm="ignore", lowercase=True))
    assert "bob" == auth.imap_user("BOB", "example.com")


async def test_domain_outside_allowed_list_is_no_without_imap() -> None:
    """allowed_domains guards against relaying for foreign accounts."""
    auth, backend = make(UsersConfig(allowed_domains=("example.com",)))
    result = await auth.verify(b"mallory", b"x", b"smtp", b"evil.test")
    assert Verdict.NO == result.verdict
    assert "domain not allowed" == result.reason
    assert [] == backend.calls


async def test_bare_name_is_outside_allowed_domains() -> None:
    """With an allow-list, a name without a domain is refused too."""
    auth, backend = make(UsersConfig(allowed_domains=("example.com",)))
    assert Verdict.NO == (await auth.verify(b"bob", b"pw", b"smtp", b"")).verdict
    assert [] == backend.calls


async def test_allowed_domain_match_ignores_case() -> None:
    """Domains compare case-insensitively."""
    auth, _ = make(UsersConfig(allowed_domains=("example.com",)))
    result = await auth.verify(b"alice", b"right pw", b"smtp", b"Example.COM")
    assert "domain not allowed" != result.reason


async def test_one_log_line_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    """Each check logs one line with user, service, realm and result, never the password."""
    auth, _ = make()
    with caplog.at_level(logging.DEBUG):
        await auth.verify(b"alice", b"right pw", b"smtp", b"example.com")
    lines = [r.getMessage() for r in caplog.records]
    assert 1 == len(lines)
    assert 'user="alice@example.com" service="smtp" realm="example.com" result=ok' in lines[0]
    assert "right pw" not in caplog.text


async def test_hostile_user_name_is_escaped_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """CR/LF and quotes in a user name cannot forge log lines."""
    auth, _ = make()
    with caplog.at_level(logging.INFO):
        await auth.verify(b'x"\r\nfake line', b"pw", b"smtp", b"")
    assert "\n" not in caplog.records[0].getMessage()
    assert "x\\x22\\x0d\\x0afake line" in caplog.records[0].getMessage()


def test_shown_keeps_unicode_letters() -> None:
    """Non-ASCII letters stay readable; invisible characters are escaped."""
    assert "ünï\\u200b" == shown("ünï\u200b")
