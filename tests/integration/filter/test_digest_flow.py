"""The daily digest through the real chain: spam held by mail-filter, digests re-injected into
Postfix and delivered to the sink, and a link's release delivering the held message once.

client -> Postfix -> mail-filter (GTUBE: spam, held, discarded)
mail-filter quarantine digest -> Postfix 127.0.0.1:<reinject> -> SmtpSink
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import re
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from devstack.gateway import MailChain
from filter import qactions, release_links
from filter.qdir import DirectoryStore
from filter.smtp_out import Reinjector

pytestmark = pytest.mark.integration

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
SECRET = os.urandom(32).hex().encode()
PORTAL = "https://quarantine.example.com"


@pytest.fixture(scope="module")
def chain(workroot: Path) -> Iterator[MailChain]:
    """Postfix, mail-filter holding (and discarding) spam, clamd, spamd and the sink."""
    root = workroot / "digest"
    root.mkdir()
    key = root / "portal.key"
    key.write_bytes(SECRET)
    key.chmod(0o600)
    made = MailChain(
        root,
        filter_settings={
            "spamd": {"timeout": 30.0},
            "policy": {"quarantine": ["spam"], "spam_destiny": "discard"},
            "digest": {
                "portal_url": PORTAL,
                "secret_file": str(key),
                "sender": "q@example.com",
                "domains": ["example.com"],
            },
            "quarantine": {"audit_log": "stderr"},
        },
        postfix_main_cf={"mynetworks": "127.0.0.0/8"},
        filter_processes=2,
    )
    with made:
        yield made


def send_spam(chain: MailChain, rcpt: str, subject: str) -> str:
    """Send GTUBE to ``rcpt``; its Message-ID."""
    mid = f"{uuid.uuid4().hex}@test.example.net"
    raw = (
        f"From: spammer@example.net\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{mid}>\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\n\r\n{GTUBE}\r\n"
    )
    with smtplib.SMTP("127.0.0.1", chain.smtpd_port, timeout=30) as smtp:
        smtp.sendmail("spammer@example.net", [rcpt], raw.encode())
    return mid


def held(chain: MailChain) -> dict[str, dict[str, object]]:
    """Every held entry's metadata, by id."""
    qdir = chain.root / "quarantine"
    found: dict[str, dict[str, object]] = {}
    for path in qdir.glob("*.json"):
        entry: dict[str, object] = json.loads(path.read_text())
        found[str(entry["id"])] = entry
    return found


def wait_held(chain: MailChain, count: int, timeout: float = 60) -> dict[str, dict[str, object]]:
    """Wait until ``count`` entries are held."""
    deadline = time.monotonic() + timeout
    while len(found := held(chain)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} held"
        time.sleep(0.1)
    return found


def digest_cli(chain: MailChain) -> subprocess.CompletedProcess[str]:
    """``mail-filter quarantine digest --config ...``, as the timer's unit runs it."""
    script = str(Path(sys.executable).parent / "mail-filter")
    config = str(chain.filter.config_path)
    return subprocess.run(
        [script, "quarantine", "digest", "--config", config],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def digests(chain: MailChain) -> dict[str, list[EmailMessage]]:
    """Digests the sink received, by recipient."""
    found: dict[str, list[EmailMessage]] = {}
    for m in chain.sink.messages:
        message = email.message_from_bytes(m.data, _class=EmailMessage, policy=email.policy.SMTP)
        if "held as spam for you" in str(message["Subject"]):
            for rcpt in m.rcpt_tos:
                found.setdefault(rcpt, []).append(message)
    return found


def tokens(message: EmailMessage) -> list[str]:
    """The release links' tokens in a digest."""
    text = message.get_content()
    assert isinstance(text, str)
    return re.findall(re.escape(PORTAL) + r"/release/([A-Za-z0-9_-]+)", text)


def test_each_recipient_gets_one_digest_of_their_own_spam_and_a_link_releases_once(
    chain: MailChain,
) -> None:
    """Two recipients: one digest each through Postfix, listing only theirs with working links;
    a second run sends nothing; a link's release reaches the sink once, a second use is refused."""
    mids = {
        "alice@example.com": [send_spam(chain, "alice@example.com", f"a{n}") for n in range(2)],
        "bob@example.com": [send_spam(chain, "bob@example.com", "b0")],
    }
    entries = wait_held(chain, 3)
    done = digest_cli(chain)
    assert 0 == done.returncode, done.stderr
    assert done.stdout.startswith("digest: 2 sent, 0 failed, 0 skipped; 3 new message(s)")
    deadline = time.monotonic() + 30
    got = digests(chain)
    while sum(len(v) for v in got.values()) < 2:
        assert time.monotonic() < deadline, "two digests never arrived"
        time.sleep(0.1)
        got = digests(chain)
    assert ["alice@example.com", "bob@example.com"] == sorted(got)
    now = time.time()
    for rcpt, messages in got.items():
        assert 1 == len(messages)
        links = [release_links.check_token(SECRET, t, now) for t in tokens(messages[0])]
        assert {rcpt} == {link.recipient for link in links}
        theirs = {i for i, e in entries.items() if e["recipients"] == [rcpt]}
        assert theirs == {link.entry_id for link in links}
        assert len(mids[rcpt]) == len(links)
        assert "q@example.com" in str(messages[0]["From"])
    assert "action=digest by=digest from=local to=alice@example.com" in done.stderr

    again = digest_cli(chain)
    assert 0 == again.returncode, again.stderr
    assert again.stdout.startswith("digest: 0 sent, 0 failed, 0 skipped; 0 new message(s)")
    time.sleep(1)  # anything the second run had sent would have arrived by now
    assert 2 == sum(len(v) for v in digests(chain).values())

    # The portal's POST, through the real re-injection listener.
    token = tokens(got["bob@example.com"][0])[0]
    store = DirectoryStore(chain.root / "quarantine")

    async def click() -> None:
        reinjector = Reinjector("127.0.0.1", chain.reinject_port, helo="test")
        try:
            await qactions.release_link(store, reinjector, SECRET, token, "127.0.0.1")
            with pytest.raises(qactions.LinkUsed):
                await qactions.release_link(store, reinjector, SECRET, token, "127.0.0.1")
        finally:
            await reinjector.close()

    try:
        asyncio.run(click())
    finally:
        store.close()
    bob_mid = mids["bob@example.com"][0].encode()
    deadline = time.monotonic() + 30
    while not [m for m in chain.sink.messages if bob_mid in m.data]:
        assert time.monotonic() < deadline, "the released message never arrived"
        time.sleep(0.1)
    time.sleep(1)
    arrived = [m for m in chain.sink.messages if bob_mid in m.data]
    assert [["bob@example.com"]] == [m.rcpt_tos for m in arrived]
