"""The IMAP check against a real Dovecot: every URL form, both mechanisms, hard passwords."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from devstack.dovecot import Dovecot
from devstack.tls import TlsFiles
from saslimap import Verdict, Verifier
from saslimap.config import Config, ImapConfig
from tests.integration.conftest import HARD, USERS

pytestmark = pytest.mark.integration


def verifier(dovecot: Dovecot, tls: TlsFiles, scheme: str, mechanism: str = "auto") -> Verifier:
    imap = ImapConfig(url=dovecot.imap_url(scheme), ca_file=tls.ca_cert, mechanism=mechanism)  # type: ignore[arg-type]
    return Verifier(Config(imap=imap))


@pytest.fixture(params=["imaps", "imap", "imap+plaintext"])
async def any_scheme(
    request: pytest.FixtureRequest, dovecot: Dovecot, tls: TlsFiles
) -> AsyncIterator[Verifier]:
    """A verifier for each URL form."""
    v = verifier(dovecot, tls, request.param)
    yield v
    v.close()


@pytest.mark.parametrize("mechanism", ["plain", "login"])
@pytest.mark.parametrize("scheme", ["imaps", "imap"])
async def test_hard_passwords_work(
    dovecot: Dovecot, tls: TlsFiles, scheme: str, mechanism: str
) -> None:
    """Every hard password authenticates, with AUTHENTICATE PLAIN and with LOGIN."""
    async with verifier(dovecot, tls, scheme, mechanism) as v:
        for user in HARD:
            result = await v.verify(user, USERS[user], "smtp")
            assert (user, Verdict.OK) == (user, result.verdict), result.reason


async def test_right_and_wrong_password(any_scheme: Verifier) -> None:
    """Right password OK, wrong NO, on every URL form."""
    assert (
        Verdict.OK == (await any_scheme.verify("alice", "alice pw", "smtp", "example.com")).verdict
    )
    assert (
        Verdict.NO == (await any_scheme.verify("alice", "alice pW", "smtp", "example.com")).verdict
    )


async def test_unknown_user_is_no(any_scheme: Verifier) -> None:
    """A user Dovecot does not know is a plain NO, not an outage."""
    assert Verdict.NO == (await any_scheme.verify("nobody@example.com", "x", "smtp")).verdict


async def test_injection_in_user_name_never_logs_in(dovecot: Dovecot, tls: TlsFiles) -> None:
    """A quote in the user name cannot smuggle a second command past LOGIN quoting."""
    async with verifier(dovecot, tls, "imap", "login") as v:
        result = await v.verify('alice@example.com" "x', "alice pw", "smtp")
        assert Verdict.NO == result.verdict


async def test_wrong_ca_is_an_outage(dovecot: Dovecot) -> None:
    """Without the internal CA the certificate does not verify: TEMPFAIL, never OK."""
    async with Verifier.from_url(dovecot.imap_url("imaps")) as v:
        result = await v.verify("alice@example.com", "alice pw", "smtp")
    assert Verdict.TEMPFAIL == result.verdict
    assert "tls" == result.error_kind
