"""Configuration loading: the shipped file, key naming in errors, flags, exit code 78."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from saslimap import cli
from saslimap.config import Config, ConfigError, from_mapping, load, override, parse_imap_url

CONF = Path(__file__).resolve().parents[2] / "conf" / "saslimap.toml"


def test_shipped_config_loads() -> None:
    """conf/saslimap.toml is valid."""
    cfg = load(CONF)
    assert "imaps://imap.example.com" == cfg.imap.url


def test_shipped_config_documents_every_key() -> None:
    """Every key the code knows appears in conf/saslimap.toml, and nothing else."""
    text = CONF.read_text()
    documented = set(re.findall(r"^(\w+) = ", text, re.M))
    cfg = Config()
    known = {f.name for section in fields(cfg) for f in fields(getattr(cfg, section.name))}
    assert known == documented


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": {"sockett": "/x"}}, "server.sockett"),
        ({"server": {"socket": "relative"}}, "server.socket"),
        ({"server": {"socket_mode": "999"}}, "server.socket_mode"),
        ({"server": {"read_timeout": "5"}}, "server.read_timeout"),
        ({"server": {"max_connections": 0}}, "server.max_connections"),
        ({"server": {"on_backend_error": "ok"}}, "server.on_backend_error"),
        ({"imap": {"url": "http://x"}}, "imap.url"),
        ({"imap": {"url": "imaps://"}}, "imap.url"),
        ({"imap": {"mechanism": "cram"}}, "imap.mechanism"),
        ({"users": {"allowed_domains": "example.com"}}, "users.allowed_domains"),
        ({"users": {"allowed_domains": ["a@b"]}}, "users.allowed_domains[0]"),
        ({"users": {"lowercase": 1}}, "users.lowercase"),
        ({"bogus": {}}, "bogus"),
    ],
)
def test_bad_values_name_their_key(raw: dict[str, dict[str, object]], key: str) -> None:
    """Each mistake is reported with the key that holds it."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        from_mapping(raw)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("imaps://mail.example.com", "imaps://mail.example.com:993"),
        ("imap://mail.example.com", "imap://mail.example.com:143"),
        ("imap+plaintext://127.0.0.1:1143", "imap+plaintext://127.0.0.1:1143"),
        ("IMAPS://[::1]:10993", "imaps://[::1]:10993"),
    ],
)
def test_imap_urls(url: str, expected: str) -> None:
    """The three schemes get their default ports."""
    assert expected == str(parse_imap_url(url))


def test_flags_override_the_file() -> None:
    """A flag replaces the file's value, with the same validation."""
    cfg = override(load(CONF), "imap.url", "imap://other.example.com")
    assert "imap://other.example.com" == cfg.imap.url
    with pytest.raises(ConfigError, match=r"imap\.url"):
        override(cfg, "imap.url", "ftp://x")


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config exits 0 on the shipped file and 78 naming the key on a bad one."""
    assert 0 == cli.main(["check-config", str(CONF)])
    bad = tmp_path / "bad.toml"
    bad.write_text('[imap]\nurl = "imaps://x"\nconnect_timeout = -1\n')
    assert 78 == cli.main(["check-config", str(bad)])
    assert "imap.connect_timeout" in capsys.readouterr().err


def test_serve_with_bad_config_exits_78(tmp_path: Path) -> None:
    """The daemon refuses to start on a bad config, with EX_CONFIG."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_field_length = 3\n")
    assert 78 == cli.main(["serve", "--config", str(bad)])


def test_serve_without_imap_url_exits_78(tmp_path: Path) -> None:
    """No IMAP server configured is a configuration error."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert 78 == cli.main(["serve", "--config", str(empty)])
