"""mail-filter's configuration: the shipped file, key naming in errors, exit code 78."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from filter import app, cli
from filter.config import Config, ConfigError, PolicyConfig, from_mapping, load
from filter.verdicts import Category, Destiny

CONF = Path(__file__).resolve().parents[2] / "conf" / "filter.toml"


def test_shipped_config_loads() -> None:
    """conf/filter.toml is valid and matches the defaults."""
    assert Config() == load(CONF)


def test_shipped_config_documents_every_key() -> None:
    """Every key the code knows appears in conf/filter.toml, and nothing else."""
    text = CONF.read_text()
    documented = set(re.findall(r"^(\w+) = ", text, re.M))
    documented |= set(re.findall(r"^\[\w+\.(\w+)\]", text, re.M))  # sub-tables
    cfg = Config()
    known = {f.name for section in fields(cfg) for f in fields(getattr(cfg, section.name))}
    assert known == documented


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": {"listen": "10024"}}, "server.listen"),
        ({"clamd": {"address": "unix:relative"}}, "clamd.address"),
        ({"spamd": {"timeout": 0}}, "spamd.timeout"),
        ({"policy": {"tag2_level": "high"}}, "policy.tag2_level"),
        ({"reinject": {"bogus": 1}}, "reinject.bogus"),
        ({"learn": {"run_timeout": 0}}, "learn.run_timeout"),
        ({"learn": {"max_response": 1000}}, "learn.max_response"),  # under 1 MiB
        ({"state": {"url": "http://redis"}}, "state.url"),
        ({"state": {"timeout": 0}}, "state.timeout"),
        ({"state": {"sentinels": ["redis"]}}, "state.sentinels"),
    ],
)
def test_bad_values_name_their_key(raw: dict[str, dict[str, object]], key: str) -> None:
    """Each mistake is reported with the key that holds it."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        from_mapping(raw)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    """check-config exits 0 on the shipped file and 78 on a bad one."""
    assert 0 == cli.main(["check-config", str(CONF)])
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_connections = 0\n")
    assert 78 == cli.main(["check-config", str(bad)])
    assert 78 == cli.main(["serve", "--config", str(bad)])


def test_message_size_above_what_clamd_takes_is_refused(tmp_path: Path) -> None:
    """max_message_size over clamd.max_stream is a config error naming both keys."""
    bad = tmp_path / "f.toml"
    bad.write_text("[server]\nmax_message_size = 2000\n[clamd]\nmax_stream = 1000\n")
    with pytest.raises(ConfigError, match=r"server.max_message_size .* clamd.max_stream"):
        app.load_config(bad, {})


def test_destinies_and_quarantine_are_read_into_enums() -> None:
    """The strings on disk stay as they were; the loaded values are the enums policy compares."""
    policy = from_mapping(
        {"policy": {"spam_destiny": "reject", "quarantine": ["spam", "bad_header"]}}
    ).policy
    assert Destiny.REJECT is policy.spam_destiny
    assert (Category.SPAM, Category.BAD_HEADER) == policy.quarantine
    assert Destiny.DISCARD is policy.destiny(Category.VIRUS)
    assert "reject" == str(policy.spam_destiny)


def test_a_bad_destiny_names_the_key() -> None:
    """An unknown destiny is a ConfigError naming policy.<category>_destiny and the choices."""
    with pytest.raises(ConfigError, match=r"policy.spam_destiny: must be one of pass, discard"):
        from_mapping({"policy": {"spam_destiny": "drop"}})


def test_destinies_built_in_code_from_strings_still_compare() -> None:
    """A PolicyConfig made with plain strings holds the enums the pipeline compares by identity."""
    from filter.verdicts import Category, Destiny

    policy = PolicyConfig(spam_destiny="pass", quarantine=("spam",))  # type: ignore[arg-type]
    assert Destiny.PASS is policy.spam_destiny
    assert (Category.SPAM,) == policy.quarantine


def _state_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "f.toml"
    path.write_text(f'[state]\nurl = "redis://127.0.0.1:6379/0"\n{body}')
    return path


def test_shared_state_needs_a_secret_file(tmp_path: Path) -> None:
    """[state] url without secret_file is refused, naming state.secret_file (exit 78)."""
    path = _state_file(tmp_path, "")
    with pytest.raises(ConfigError, match=r"state\.secret_file: required"):
        app.load_config(path, {})
    assert 78 == cli.main(["check-config", str(path)])
    assert 78 == cli.main(["learn", "--config", str(path)])


@pytest.mark.parametrize(
    ("content", "mode", "why"),
    [
        (b"k" * 40, 0o600, "does not look random"),
        (bytes(range(16)), 0o600, "at least 32"),
        (bytes(range(40)), 0o644, "readable by its owner only"),
    ],
    ids=["repetitive", "short", "group-readable"],
)
def test_a_weak_or_readable_secret_is_refused(
    tmp_path: Path, content: bytes, mode: int, why: str
) -> None:
    """A short, repetitive or group-readable secret_file stops mail-filter from starting."""
    secret = tmp_path / "state.key"
    secret.write_bytes(content)
    secret.chmod(mode)
    path = _state_file(tmp_path, f'secret_file = "{secret}"\n')
    with pytest.raises(ConfigError, match=why):
        app.load_config(path, {})


def test_a_good_secret_loads(tmp_path: Path) -> None:
    """32 random bytes, mode 0600: the [state] section is accepted as written."""
    secret = tmp_path / "state.key"
    secret.write_bytes(bytes(range(32)))
    secret.chmod(0o600)
    cfg = app.load_config(_state_file(tmp_path, f'secret_file = "{secret}"\n'), {})
    assert (True, secret) == (cfg.state.enabled, cfg.state.secret_file)
