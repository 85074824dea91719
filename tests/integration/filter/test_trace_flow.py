"""``mail-filter trace`` over the logs the real gateway writes (issue 19, item 4).

client -(AUTH via saslimap)-> Postfix -> mail-filter (clamd, spamd) -> Postfix -> SmtpSink

Five messages go through: a clean one from an authenticated user, a spam and a
virus (both held; the spam is then released), one the re-injection listener
defers, one the internal server (the sink) refuses. ``mail-filter trace`` then
runs as the administrator would run it, by queue id, Message-ID, quarantine id
and address, over the logs as written, and over the same logs rotated and gzipped.
"""

from __future__ import annotations

import gzip
import json
import shutil
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.clamd import EICAR
from devstack.daemons import SaslimapDaemon
from devstack.gateway import MailChain
from tests.integration.conftest import USERS, eventually

pytestmark = pytest.mark.integration

Timeline = dict[str, Any]
"""One message's timeline as ``--json`` prints it."""
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass
class Sent:
    """The gateway after the five messages, with their Message-IDs and the held entries."""

    chain: MailChain
    audit: Path
    clean: str
    spam: str
    virus: str
    deferred: str
    bounced: str
    held: dict[str, str]
    """Quarantine id by category."""

    def logs(self) -> list[str]:
        """``--log`` arguments for Postfix's, the filter's and the audit log."""
        assert self.chain.postfix is not None
        return [
            "--log", str(self.chain.postfix.maillog), "--log", str(self.chain.filter.log_path),
            "--log", str(self.audit),
        ]  # fmt: skip


def send(chain: MailChain, rcpt: str, subject: str, body: str, login: bool = False) -> str:
    """One message through the front Postfix; its Message-ID."""
    mid = f"{uuid.uuid4().hex}@test.example.net"
    sender = "alice@example.com" if login else "sender@example.net"
    raw = (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\nMessage-ID: <{mid}>\r\n"
        f"Date: Fri, 04 Dec 2026 00:00:00 +0000\r\n\r\n{body}\r\n"
    )
    with smtplib.SMTP("127.0.0.1", chain.smtpd_port, timeout=30) as smtp:
        if login:
            smtp.login("alice@example.com", USERS["alice@example.com"])
        smtp.sendmail(sender, [rcpt], raw.encode())
    return mid


def mail_filter(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``mail-filter`` command as an administrator runs it."""
    script = str(Path(sys.executable).parent / "mail-filter")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=120, check=False)


def held(chain: MailChain, count: int) -> dict[str, str]:
    """Wait for ``count`` held entries; their ids by category."""
    qdir = chain.root / "quarantine"
    deadline = time.monotonic() + 60
    while len(found := list(qdir.glob("*.json"))) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} held"
        time.sleep(0.1)
    entries = [json.loads(path.read_text()) for path in found]
    return {str(e["category"]): str(e["id"]) for e in entries}


@pytest.fixture(scope="module")
def sent(workroot: Path, daemon: SaslimapDaemon) -> Iterator[Sent]:
    """The gateway (AUTH through the session's saslimap), after its five messages."""
    root = workroot / "trace"
    root.mkdir()
    later = root / "later"  # texthash: needs no postmap
    later.write_text("later@example.com 450 4.2.0 <later@example.com>: try again later\n")
    audit = root / "audit.log"
    chain = MailChain(
        root,
        sasl_saslauthd_path=daemon.socket_path,
        filter_settings={
            "spamd": {"timeout": 30.0},
            "policy": {"quarantine": ["virus", "spam"], "spam_destiny": "discard"},
            "quarantine": {"audit_log": str(audit)},
        },
        reinject_recipient_restrictions=(
            f"check_recipient_access,texthash:{later},permit_mynetworks,reject"
        ),
        filter_processes=2,
    )
    with chain:
        assert chain.postfix is not None
        chain.sink.refuse_rcpt = ["gone@example.com"]
        made = Sent(
            chain, audit,
            clean=send(chain, "friend@example.org", "hello", "hello", login=True),
            spam=send(chain, "user@example.com", "spam", GTUBE),
            virus=send(chain, "user@example.com", "virus", EICAR.decode()),
            deferred=send(chain, "later@example.com", "later", "later"),
            bounced=send(chain, "gone@example.com", "gone", "gone"),
            held={},
        )  # fmt: skip
        made.held = held(chain, 2)
        released = mail_filter(
            "quarantine", "--config", str(chain.filter.config_path), "release", made.held["spam"]
        )
        assert 0 == released.returncode, released.stderr
        # Everything is logged once the released copy and the bounce notice are delivered.
        maillog = chain.postfix.maillog_text
        deadline = time.monotonic() + 60
        while maillog().count("status=sent (250 2.0.0 Ok: queued as SINK") < 3:
            assert time.monotonic() < deadline, maillog()[-3000:]
            time.sleep(0.1)
        eventually(maillog, "status=deferred", timeout=30)
        eventually(chain.filter.log_text, "result=tempfail", timeout=30)
        eventually(lambda: audit.read_text() if audit.exists() else "", "action=release")
        time.sleep(0.5)  # qmgr's "removed" lines follow the deliveries
        yield made


def trace(*args: str) -> list[Timeline]:
    """``mail-filter trace --json ...``: its timelines (it must find some)."""
    done = mail_filter("trace", "--json", *args)
    assert 0 == done.returncode, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def one(sent: Sent, *query: str) -> Timeline:
    """The one timeline a query finds."""
    found = trace("--config", str(sent.chain.filter.config_path), *sent.logs(), *query)
    assert 1 == len(found), [t["queue_ids"] for t in found]
    return found[0]


def kinds(timeline: Timeline) -> list[str]:
    """The kinds of a timeline's steps, in order."""
    steps = timeline["steps"]
    assert isinstance(steps, list)
    return [str(step["kind"]) for step in steps]


def texts(timeline: Timeline) -> str:
    """A timeline's step texts, one per line."""
    steps = timeline["steps"]
    assert isinstance(steps, list)
    return "\n".join(str(step["what"]) for step in steps)


def test_a_clean_message_by_message_id_and_by_either_queue_id(sent: Sent) -> None:
    """Received from an authenticated user, scanned clean, re-injected as B, delivered; the
    same timeline by the front queue id and by the re-injected one."""
    found = one(sent, f"<{sent.clean}>")
    front, again = found["queue_ids"]
    assert ["client", "scanned", "client", "delivery"] == kinds(found)
    text = texts(found)
    assert "authenticated as alice@example.com (PLAIN)" in text
    assert "scanned: clean" in text
    assert f"re-injected as {again}" in text
    assert {"friend@example.org"} == set(found["outcome"])
    assert str(found["outcome"]["friend@example.org"]).startswith("delivered via 127.0.0.1")
    assert found == one(sent, str(front))
    assert found == one(sent, str(again))


def test_a_held_spam_by_quarantine_id_through_its_release(sent: Sent) -> None:
    """Held, released (the quarantine's record and the audit line), then delivered as the
    released copy's queue id."""
    found = one(sent, sent.held["spam"])
    assert 2 == len(found["queue_ids"])
    text = texts(found)
    assert f"held as {sent.held['spam']}, discarded" in text
    assert "released by unix:" in text
    assert "re-injected from the quarantine" in text
    assert str(found["outcome"]["user@example.com"]).startswith("delivered via")


def test_a_virus_by_quarantine_id(sent: Sent) -> None:
    """Scanned as a virus, named, held."""
    found = one(sent, sent.held["virus"])
    assert [f"<{sent.virus}>"] == [f"<{m}>" for m in found["message_ids"]]
    assert "scanned: virus, Eicar-Test-Signature" in texts(found)
    assert str(found["outcome"]["user@example.com"]).startswith(
        f"held in the quarantine as {sent.held['virus']}"
    )


def test_the_mail_from_x_to_y_deferred_downstream(sent: Sent) -> None:
    """--from and --to: the deferred message (the refusal before queueing is the listener's,
    a timeline of its own), still in the queue."""
    found = trace(
        "--config", str(sent.chain.filter.config_path), *sent.logs(),
        "--from", "sender@example.net", "--to", "later@example.com",
    )  # fmt: skip
    queued = [t for t in found if t["queue_ids"]]
    assert 1 == len(queued)
    outcome = str(queued[0]["outcome"]["later@example.com"])
    assert outcome.startswith("deferred by the filter: 451 4.3.0 Downstream:")
    assert outcome.endswith("still in the queue")
    refused = [t for t in found if not t["queue_ids"]]
    assert ["reject"] == [kinds(t)[0] for t in refused]


def test_a_bounce_by_address_with_its_notice(sent: Sent) -> None:
    """Bounced by the internal server; the notice to the sender is part of the timeline."""
    found = one(sent, "gone@example.com")
    assert 3 == len(found["queue_ids"])
    assert "sender non-delivery notification queued as" in texts(found)
    assert str(found["outcome"]["gone@example.com"]).startswith("bounced via")


def test_rotated_and_gzipped_logs_give_the_same_timelines(sent: Sent, tmp_path: Path) -> None:
    """The maillog split into mail.log.2.gz, mail.log.1 and mail.log, the filter's log into
    filter.log.1.gz and filter.log: the same answers as the files as written."""
    assert sent.chain.postfix is not None
    for source, name in (
        (sent.chain.postfix.maillog, "mail.log"),
        (sent.chain.filter.log_path, "filter.log"),
    ):
        lines = source.read_bytes().splitlines(keepends=True)
        third = len(lines) // 3
        with gzip.open(tmp_path / f"{name}.2.gz", "wb") as oldest:
            oldest.write(b"".join(lines[:third]))
        (tmp_path / f"{name}.1").write_bytes(b"".join(lines[third : 2 * third]))
        (tmp_path / name).write_bytes(b"".join(lines[2 * third :]))
    shutil.copy(sent.audit, tmp_path / "audit.log")
    rotated = [
        "--log", str(tmp_path / "mail.log"), "--log", str(tmp_path / "filter.log"),
        "--log", str(tmp_path / "audit.log"),
    ]  # fmt: skip
    config = ["--config", str(sent.chain.filter.config_path)]
    for query in ("@example.com", "@example.org", sent.held["spam"]):
        assert trace(*config, *sent.logs(), query) == trace(*config, *rotated, query)


def test_the_text_for_a_terminal(sent: Sent) -> None:
    """Without --json: a header, the envelope, a line per step, an outcome per recipient."""
    done = mail_filter(
        "trace", "--config", str(sent.chain.filter.config_path), *sent.logs(), f"<{sent.clean}>"
    )
    assert 0 == done.returncode, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("message ")
    assert f"Message-ID <{sent.clean}>" in lines[0]
    assert lines[1].startswith("  from <alice@example.com> to <friend@example.org>, ")
    assert lines[-1].startswith("  => <friend@example.org>: delivered via ")
