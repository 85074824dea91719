"""The shared config kit: one Address syntax, the shared tables, errors naming the key."""

from __future__ import annotations

import pytest

from mailgate import config as confkit
from mailgate.config import Address, ConfigError, parse_imap_url
from mailgate.errors import MailgateError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:10024", Address(host="127.0.0.1", port=10024)),
        ("localhost:783", Address(host="localhost", port=783)),
        ("[::1]:10025", Address(host="::1", port=10025)),
        ("::1:10025", Address(host="::1", port=10025)),  # accepted before the core; still is
        ("unix:/run/clamav/clamd.ctl", Address(path="/run/clamav/clamd.ctl")),
        # Postfix writes relay hosts in brackets; configs written that way always worked.
        ("[127.0.0.1]:10025", Address(host="127.0.0.1", port=10025)),
        ("[mail.example.com]:25", Address(host="mail.example.com", port=25)),
    ],
)
def test_address_forms(text: str, expected: Address) -> None:
    """host:port, [v6]:port and unix:/path parse into one type."""
    assert expected == Address.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        "host:0",
        "host:65536",
        "host:x",
        ":25",
        "unix:relative",
        "[]:25",
        "[[::1]]:25",
        "[:1]:25",
    ],
)
def test_bad_addresses_name_the_key(text: str) -> None:
    """A bad address is a ConfigError that names the key it came from."""
    with pytest.raises(ConfigError, match=r"^clamd\.address: "):
        confkit.address("clamd.address", text)


def test_unix_paths_refused_where_only_tcp_makes_sense() -> None:
    """hostport refuses unix: paths (a listener that must be TCP)."""
    with pytest.raises(ConfigError, match="must be host:port"):
        confkit.hostport("server.listen", "unix:/tmp/x")


def test_listen_keys_take_bracketed_hosts() -> None:
    """[metrics] listen = "[127.0.0.1]:9101" loads, as it did before the core."""
    assert "[127.0.0.1]:9101" == confkit.listen("metrics.listen", "[127.0.0.1]:9101")
    assert ("127.0.0.1", 9101) == confkit.split_listen("[127.0.0.1]:9101")


@pytest.mark.parametrize("text", ["127.0.0.1:10024", "[::1]:25", "unix:/tmp/s"])
def test_address_writes_back_its_form(text: str) -> None:
    """str() gives the written form back (IPv6 in brackets)."""
    assert text == str(Address.parse(text))


def test_split_listen_handles_v6_brackets() -> None:
    """The metrics endpoint's host:port splits with brackets removed."""
    assert ("::1", 9101) == confkit.split_listen("[::1]:9101")


def test_one_error_root() -> None:
    """ConfigError is a MailgateError (and still a ValueError for old callers)."""
    assert issubclass(ConfigError, MailgateError)
    assert issubclass(ConfigError, ValueError)


def test_imap_url_forms() -> None:
    """Both daemons read the IMAP URL the same way: default ports by scheme."""
    assert 993 == parse_imap_url("imaps://imap.example.com").port
    assert "imap" == parse_imap_url("imap://[::1]").scheme
    with pytest.raises(ConfigError, match=r"learn\.imap_url"):
        confkit.imap_url("learn.imap_url", "http://x")


@pytest.mark.parametrize(
    "url",
    ["imaps://bob:s3cretpw@imap.example.com", "imaps://:s3cretpw@imap.example.com",
     "ftp://bob:s3cretpw@imap.example.com", "imaps://bob:s3cretpw@imap.example.com:99999"],
)  # fmt: skip
def test_an_imap_url_error_never_quotes_a_password(url: str) -> None:
    """A user or password in the IMAP URL is refused, and the message hides them."""
    with pytest.raises(ConfigError) as caught:
        parse_imap_url(url)
    assert "s3cretpw" not in str(caught.value)
    assert "***@imap.example.com" in str(caught.value)
