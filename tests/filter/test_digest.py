"""The daily digest: what it lists for whom, its text with hostile subjects and senders, its CLI.

A real directory store in a temporary directory and a fake re-injection
client; the clock is passed in (``now``).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from filter import cli, digest, release_links
from filter.digest import Item, Settings, compose, inert
from filter.qdir import DirectoryStore
from filter.quarantine import Entry, new_id
from filter.smtp_out import Delivery, Reply

SECRET = b"portal secret for the tests, 32+ bytes long"
T0 = datetime(2026, 12, 1, 8, 0).timestamp()
HOUR = 3600.0
SETTINGS = Settings(
    portal_url="https://quarantine.example.com", sender="mail-filter@gw.example.com",
    hostname="gw.example.com", secret=SECRET,
)  # fmt: skip


class Sink:
    """The re-injection client: accepts every recipient except those in ``refuse``."""

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        self.refuse = set(refuse)
        self.sent: list[tuple[str, list[str], bytes]] = []

    async def send(self, mail_from: str, recipients: Sequence[str], data: bytes) -> Delivery:
        """Record what was sent, answer 250 or 450."""
        if set(recipients) & self.refuse:
            return Delivery({r: Reply(450, "4.2.0 try later") for r in recipients})
        self.sent.append((mail_from, list(recipients), data))
        return Delivery({r: Reply(250, "2.1.5 Ok") for r in recipients}, Reply(250, "queued"))

    def digests(self) -> dict[str, EmailMessage]:
        """The last digest each recipient got, parsed."""
        return {
            rcpts[0]: email.message_from_bytes(data, _class=EmailMessage, policy=email.policy.SMTP)
            for _, rcpts, data in self.sent
        }


def body(message: EmailMessage) -> str:
    """The digest's decoded text, with its line ends (CRLF on the wire) as "\\n"."""
    text = message.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def links(message: EmailMessage) -> list[release_links.Link]:
    """The release links a digest carries, checked."""
    tokens = re.findall(r"https://quarantine\.example\.com/release/([A-Za-z0-9_-]+)", body(message))
    return [release_links.check_token(SECRET, t, T0) for t in tokens]


def hold(
    store: DirectoryStore,
    at: float,
    rcpts: Sequence[str] = ("alice@example.com",),
    category: str = "spam",
    subject: str = "hello",
    sender: str = "spammer@example.net",
) -> Entry:
    """One entry held as the filter holds one (subject set, so it is shown as given)."""
    entry = Entry(new_id() + f"{int(at) % 4096:03x}", category, "score", sender, list(rcpts), at, 9)
    entry.subject = subject
    store.add(entry, b"Subject: x\r\n\r\nbody\r\n")
    return entry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DirectoryStore]:
    """An empty directory store."""
    made = DirectoryStore(tmp_path / "q")
    yield made
    made.close()


# Making text inert

HOSTILE = [
    ("line\r\nBcc: eve@example.org", "line\\x0d\\x0aBcc: eve@example.org"),
    ("nul\x00byte", "nul\\x00byte"),
    ("esc\x1b[31mred", "esc\\x1b[31mred"),
    ("csi\x9b2J", "csi\\x9b2J"),
    ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
    ("isolate \u2066x\u2069", "isolate \\u2066x\\u2069"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("not utf-8 \udcff\udcfe", "not utf-8 \\udcff\\udcfe"),
    ("tab\there", "tab\\x09here"),
    ("Grüße, 日本語, Ελληνικά", "Grüße, 日本語, Ελληνικά"),
    ("click https://evil.example/x", "click https[:]//evil.example/x"),
    ("or WWW.evil.example", "or WWW[.]evil.example"),
]


@pytest.mark.parametrize(("given", "shown"), HOSTILE, ids=[h[1][:20] for h in HOSTILE])
def test_hostile_text_comes_out_inert(given: str, shown: str) -> None:
    """Controls, line breaks, bidi and zero-width characters escaped; letters kept; URLs broken."""
    assert shown == inert(given, 200)


def test_inert_text_is_bounded_and_reads_only_what_it_shows() -> None:
    """A 10 kB subject, and 10 MB of escapes, come out around the limit."""
    assert "x" * 200 + "..." == inert("x" * 10_000, 200)
    escaped = inert("\x00" * 10_000_000, 200)
    assert len(escaped) <= 203
    assert escaped.endswith("...")


# Composing one digest


def _entries(store: DirectoryStore) -> list[Entry]:
    """One entry per hostile subject, with a hostile sender, plus a 10 kB subject."""
    found = [
        hold(store, T0 - n, subject=s, sender=s + "@x")
        for n, (s, _) in enumerate(HOSTILE)
        if not any("\ud800" <= c <= "\udfff" for c in s)  # JSON metadata holds no lone surrogates
    ]
    found.append(hold(store, T0 - 100, subject="ü" * 10_000))
    # Bytes that are not UTF-8, as a message carries them: the store decodes them with U+FFFD.
    not_utf8 = Entry(new_id() + "abc", "spam", "score", "a@x", ["alice@example.com"], T0 - 101, 9)
    store.add(not_utf8, b"Subject: caf\xe9 \xff\xfe\r\n\r\nbody\r\n")
    found.append(not_utf8)
    return found


def _compose(entries: Sequence[Entry], more: int = 0, rcpt: str = "alice@example.com") -> bytes:
    expires = int(T0 + 7 * 86400)
    items = [Item(e, release_links.make_token(SECRET, e.id, rcpt, expires)) for e in entries]
    return compose(
        rcpt, items, more, sender=SETTINGS.sender, portal_url=SETTINGS.portal_url,
        hostname="gw.example.com", categories=("spam",), expires_at=T0 + 7 * 86400, now=T0,
    )  # fmt: skip


def test_hostile_subjects_and_senders_cannot_add_headers_or_lines(store: DirectoryStore) -> None:
    """Every field is ours; each listed message is exactly four lines; nothing raw gets through."""
    entries = _entries(store)
    raw = _compose(entries)
    message = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.SMTP)
    assert [
        "From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted",
        "X-Auto-Response-Suppress", "Content-Type", "Content-Transfer-Encoding", "MIME-Version",
    ] == list(message.keys())  # fmt: skip
    assert "alice@example.com" == message["To"]
    assert f"{len(entries)} messages held as spam for you" == message["Subject"]
    text = body(message)
    for bad in ("\r", "\x00", "\x1b", "\x9b", "\u202e", "\u2066", "\u200b", "\udcff", "\t"):
        assert bad not in text
    assert "https://evil" not in text
    subjects = [line for line in text.splitlines() if line.startswith("   Subject: ")]
    assert len(entries) == len(subjects)
    assert all(len(line) < 220 for line in subjects)
    assert "   Subject: caf\ufffd \ufffd\ufffd" in subjects
    assert [e.id for e in entries] == [link.entry_id for link in links(message)]
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_an_ascii_digest_is_7bit_with_each_link_on_one_line(store: DirectoryStore) -> None:
    """Plain text goes as 7bit: the raw message carries every link whole."""
    entries = [hold(store, T0 - n) for n in range(3)]
    raw = _compose(entries, more=2)
    assert b"Content-Transfer-Encoding: 7bit" in raw
    message = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.SMTP)
    for n, line in enumerate(body(message).splitlines()):
        if "/release/" in line:  # the whole link on one line of the raw message too
            assert line.strip().removeprefix("Release: ").encode() in raw, n
    assert 3 == raw.count(b"https://quarantine.example.com/release/")
    assert "... and 2 more, not listed here." in body(message)
    assert "All mail held for you: https://quarantine.example.com/" in body(message)


def test_a_non_ascii_digest_is_quoted_printable_and_decodes_whole(store: DirectoryStore) -> None:
    """A UTF-8 subject makes the body quoted-printable; the links decode intact."""
    entries = [hold(store, T0, subject="Grüße")]
    raw = _compose(entries)
    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    message = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.SMTP)
    assert "Subject: Grüße" in body(message)
    assert [entries[0].id] == [link.entry_id for link in links(message)]


# Runs


async def test_each_recipient_gets_one_digest_of_their_own_mail(store: DirectoryStore) -> None:
    """A digest each, listing only theirs, links naming them; shared mail in both, linkless."""
    alice = [hold(store, T0 - n * HOUR) for n in range(1, 4)]
    bob = [hold(store, T0 - 2.5 * HOUR, rcpts=("Bob@Example.com",))]
    hold(store, T0 - 5 * HOUR, rcpts=("alice@example.com", "bob@example.com"))
    sink = Sink()
    summary = await digest.run(store, sink, SETTINGS, now=T0)
    assert (2, 0, 0, 6) == (summary.sent, summary.failed, summary.skipped, summary.listed)
    got = sink.digests()
    assert ["alice@example.com", "bob@example.com"] == sorted(got)
    listed = {rcpt: [link.entry_id for link in links(message)] for rcpt, message in got.items()}
    assert [e.id for e in alice] == listed["alice@example.com"]
    assert [e.id for e in bob] == listed["bob@example.com"]
    assert all("Held for others too" in body(message) for message in got.values())
    assert {"alice@example.com"} == {link.recipient for link in links(got["alice@example.com"])}
    assert {"mail-filter@gw.example.com"} == {mail_from for mail_from, _, _ in sink.sent}


async def test_digests_go_to_the_companys_domains_only(store: DirectoryStore) -> None:
    """Mail held for an outside address (outbound spam from a compromised account) gets
    no digest, so the world is never mailed release links; inside recipients get theirs."""
    hold(store, T0 - HOUR)
    hold(store, T0 - HOUR, rcpts=("victim@elsewhere.example.net",))
    sink = Sink()
    inside = Settings(**{**SETTINGS.__dict__, "domains": ("example.com",)})
    summary = await digest.run(store, sink, inside, now=T0)
    assert (1, 1) == (summary.sent, summary.skipped)
    assert ["alice@example.com"] == sorted(sink.digests())


async def test_a_second_run_lists_only_what_is_new(store: DirectoryStore) -> None:
    """Marked entries are not listed again; mail held since is."""
    hold(store, T0 - HOUR)
    await digest.run(store, Sink(), SETTINGS, now=T0)
    again = Sink()
    assert 0 == (await digest.run(store, again, SETTINGS, now=T0 + 60)).sent
    assert [] == again.sent
    late = hold(store, T0 + 30)  # held during the first run's overlap: still listed once
    newer = hold(store, T0 + 12 * HOUR)
    later = Sink()
    await digest.run(store, later, SETTINGS, now=T0 + 24 * HOUR)
    assert sorted([late.id, newer.id]) == sorted(
        link.entry_id for link in links(later.digests()["alice@example.com"])
    )


async def test_a_failed_digest_is_sent_by_the_next_run(store: DirectoryStore) -> None:
    """Bob's digest is refused: not marked, and the next run, a day later, still lists his mail."""
    hold(store, T0 - HOUR)
    bobs = hold(store, T0 - 20 * HOUR, rcpts=("bob@example.com",))
    first = await digest.run(store, Sink(refuse=["bob@example.com"]), SETTINGS, now=T0)
    assert (1, 1) == (first.sent, first.failed)
    second = Sink()
    summary = await digest.run(store, second, SETTINGS, now=T0 + 24 * HOUR)
    assert (1, 0) == (summary.sent, summary.failed)
    assert ["bob@example.com"] == list(second.digests())
    assert [bobs.id] == [link.entry_id for link in links(second.digests()["bob@example.com"])]


async def test_the_first_run_looks_back_a_day_and_since_further(store: DirectoryStore) -> None:
    """Mail held 25 hours ago is not in a first run; --since 48 lists it."""
    old = hold(store, T0 - 25 * HOUR)
    assert 0 == (await digest.run(store, Sink(), SETTINGS, now=T0)).sent
    sink = Sink()
    await digest.run(store, sink, SETTINGS, now=T0 + 60, since_hours=48)
    assert [old.id] == [link.entry_id for link in links(sink.digests()["alice@example.com"])]


async def test_released_other_categories_and_odd_recipients_are_left_out(
    store: DirectoryStore,
) -> None:
    """Released spam, virus mail and a recipient no digest can address are not sent."""
    released = hold(store, T0 - HOUR)
    store.confirm_release(store.claim_release(released.id, digest.DIGEST_ACTOR), [], "250")
    hold(store, T0 - HOUR, category="virus")
    hold(store, T0 - HOUR, rcpts=("odd user@example.com",))
    sink = Sink()
    summary = await digest.run(store, sink, SETTINGS, now=T0)
    assert (0, 1) == (summary.sent, summary.skipped)
    assert [] == sink.sent


async def test_max_items_lists_the_newest_and_counts_the_rest(store: DirectoryStore) -> None:
    """Five held, two listed (newest first), "3 more", and all five marked."""
    held = [hold(store, T0 - n * HOUR) for n in range(1, 6)]
    sink = Sink()
    settings = Settings(**{**SETTINGS.__dict__, "max_items": 2})
    await digest.run(store, sink, settings, now=T0)
    message = sink.digests()["alice@example.com"]
    assert [held[0].id, held[1].id] == [link.entry_id for link in links(message)]
    assert "5 messages held as spam for you" == message["Subject"]
    assert "... and 3 more, not listed here." in body(message)
    assert {e.id for e in held} == store.digest_marks("alice@example.com", [e.id for e in held])


async def test_a_dry_run_sends_marks_and_records_nothing(store: DirectoryStore) -> None:
    """--dry-run reports who would get how many; a real run afterwards still sends."""
    hold(store, T0 - HOUR)
    said: list[str] = []
    sink = Sink()
    summary = await digest.run(store, sink, SETTINGS, now=T0, dry_run=True, report=said.append)
    assert ["alice@example.com: 1 message(s)"] == said
    assert (1, []) == (summary.sent, sink.sent)
    assert store.digest_start() is None
    assert 1 == (await digest.run(store, sink, SETTINGS, now=T0)).sent


async def test_one_audit_line_per_digest_without_content(
    store: DirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """by=digest, to whom, how many; no subject, sender or token."""
    caplog.set_level("INFO", logger="filter.audit")
    hold(store, T0 - HOUR, subject="secret plans", sender="boss@example.net")
    await digest.run(store, Sink(), SETTINGS, now=T0)
    assert [
        "quarantine action=digest by=digest from=local to=alice@example.com listed=1 held=1"
        " result=ok"
    ] == [r.getMessage() for r in caplog.records if r.name == "filter.audit"]
    assert "secret plans" not in caplog.text
    assert "boss@" not in caplog.text


# The command


def _config(tmp_path: Path, **digest_keys: str) -> Path:
    """A filter config with a quarantine directory and a portal secret (mode 0600)."""
    secret = tmp_path / "portal.key"
    secret.write_bytes(os.urandom(32).hex().encode())
    secret.chmod(0o600)
    keys = {"portal_url": "https://q.example.com", "secret_file": str(secret), **digest_keys}
    keys.pop("no_domains", None)
    config = tmp_path / "filter.toml"
    config.write_text(
        f'[quarantine]\ndirectory = "{tmp_path / "q"}"\naudit_log = "stderr"\n\n[digest]\n'
        + "".join(f'{k} = "{v}"\n' for k, v in keys.items())
        + ('domains = ["example.com"]\n' if "no_domains" not in digest_keys else "")
    )
    return config


@pytest.mark.parametrize("before", [True, False], ids=["config-first", "config-after"])
def test_the_command_runs_with_config_before_or_after_digest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], before: bool
) -> None:
    """``quarantine --config F digest`` and ``quarantine digest --config F`` both work."""
    config = str(_config(tmp_path))
    argv = ["quarantine", "--config", config, "digest"] if before else [
        "quarantine", "digest", "--config", config,
    ]  # fmt: skip
    assert 0 == cli.main([*argv, "--dry-run"])
    out = capsys.readouterr().out
    assert out.startswith("digest: 0 would send, 0 failed, 0 skipped;")
    assert out.rstrip().endswith("(dry run)")


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"portal_url": ""}, "digest.portal_url is not set"),
        ({"no_domains": "1"}, "digest.domains is not set"),
        ({"secret_file": "/nonexistent/portal.key"}, "digest.secret_file: cannot read"),
    ],
)
def test_the_command_refuses_without_a_portal_url_or_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: dict[str, str], says: str
) -> None:
    """No portal_url, or no readable secret: exit 1 naming the key, nothing sent."""
    assert 1 == cli.main(["quarantine", "digest", "--config", str(_config(tmp_path, **keys))])
    assert says in capsys.readouterr().err
