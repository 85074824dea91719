"""The PostgreSQL quarantine through the real gateway: two hosts hold into one database, a
portal on a third reads and releases it, and a database outage during a virus flood.

client -> Postfix A or B -> mail-filter A or B (clamd, spamd) -> PostgreSQL
portal (reading the database) -> Postfix A's re-injection -> SmtpSink
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest

from devstack.clamd import EICAR
from devstack.daemons import PortalDaemon, SaslimapDaemon
from devstack.gateway import MailChain
from devstack.postgres import Postgres
from filter import qpg
from filter.qpg import PostgresStore
from filter.qstore import Query
from filter.quarantine import Entry
from tests.integration.conftest import USERS

pytestmark = pytest.mark.integration

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
DATABASE = "qpg_flow"
ADMIN = "bob@example.com"
USER = "alice@example.com"


def _until(what: str, check: Callable[[], bool], timeout: float = 90.0) -> None:
    """Wait until ``check()`` holds (polling), failing with ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def database(postgres_server: Postgres) -> Iterator[str]:
    """The hosts' shared database, at the current schema."""
    postgres_server.drop_database(DATABASE)
    postgres_server.create_database(DATABASE)
    params = qpg.conninfo(postgres_server.url_for(DATABASE), postgres_server.password, None, 5.0)
    qpg.upgrade(params)
    yield postgres_server.url_for(DATABASE)
    postgres_server.drop_database(DATABASE)


@pytest.fixture(scope="module")
def hosts(
    workroot: Path, postgres_server: Postgres, database: str
) -> Iterator[tuple[MailChain, MailChain]]:
    """Two gateway hosts (each its own Postfix and mail-filter) holding spam and viruses
    into the one database; Postfix retries deferred mail within seconds."""
    settings: dict[str, dict[str, object]] = {
        "spamd": {"timeout": 30.0},
        "policy": {"quarantine": ["virus", "spam"], "spam_destiny": "discard"},
        "quarantine": {
            "store": database,
            "password_file": str(postgres_server.password_file),
            "timeout": 2.0,
            "audit_log": "stderr",
        },
    }
    root = workroot / "qpg-flow"
    root.mkdir()
    a = MailChain(
        root / "a", filter_settings=settings, postfix_main_cf={"mynetworks": "127.0.0.0/8"},
        filter_processes=2, fast_retry=True,
    )  # fmt: skip
    b = MailChain(
        root / "b", filter_settings=settings, postfix_main_cf={"mynetworks": "127.0.0.0/8"},
        filter_processes=2, fast_retry=True, shared_with=a,
    )  # fmt: skip
    with a, b:
        yield a, b


@pytest.fixture
def store(postgres_server: Postgres, database: str) -> Iterator[PostgresStore]:
    """The test's own view of the shared database."""
    made = PostgresStore(database, password=postgres_server.password)
    yield made
    made.close()


def send(host: MailChain, rcpt: str, subject: str, body: str) -> None:
    """One message from outside to ``rcpt`` through ``host``'s Postfix."""
    raw = (
        f"From: sender@example.net\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.net>\r\n\r\n{body}\r\n"
    )
    with smtplib.SMTP("127.0.0.1", host.smtpd_port, timeout=30) as smtp:
        smtp.sendmail("sender@example.net", [rcpt], raw.encode())


def by_subject(store: PostgresStore, prefix: str) -> dict[str, list[Entry]]:
    """Held entries whose subject starts with ``prefix``, by subject."""
    found: dict[str, list[Entry]] = {}
    cursor = None
    while True:
        page = store.search(Query(subject=prefix), limit=500, cursor=cursor)
        for entry in page.entries:
            found.setdefault(entry.subject, []).append(entry)
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


_last_flush = [0.0]


def flushed(hosts: tuple[MailChain, ...]) -> bool:
    """Ask each host's Postfix to retry deferred mail, at most every 5 s; always True."""
    if time.monotonic() - _last_flush[0] >= 5.0:
        _last_flush[0] = time.monotonic()
        for host in hosts:
            host.flush()
    return True


def _login(client: httpx2.Client, user: str) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    done = client.post("/login", data={"login": user, "password": USERS[user], "csrf": token[1]})
    assert 303 == done.status_code, done.text


def _csrf(page: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    return token[1]


def test_two_hosts_hold_into_one_database_and_a_portal_on_a_third_releases_once(
    workroot: Path,
    hosts: tuple[MailChain, MailChain],
    store: PostgresStore,
    daemon: SaslimapDaemon,
    postgres_server: Postgres,
    database: str,
) -> None:
    """Spam held by host A and by host B shows in one portal; the user releases A's once;
    host B's CLI lists both; a second release from the CLI is refused."""
    a, b = hosts
    tag = uuid.uuid4().hex[:8]
    send(a, USER, f"{tag} via a", GTUBE)
    send(b, USER, f"{tag} via b", GTUBE)
    _until("both are held", lambda: len(by_subject(store, tag)) == 2)
    held = by_subject(store, tag)
    via_a = held[f"{tag} via a"][0]
    portal = PortalDaemon(
        workroot / "qpg-portal",
        daemon.socket_path,
        {
            "quarantine": {
                "store": database, "password_file": str(postgres_server.password_file),
                "audit_log": "stderr",
            },
            "reinject": {"address": f"127.0.0.1:{a.reinject_port}"},
            "portal": {"admins": [ADMIN]},
        },
    )  # fmt: skip
    with portal, httpx2.Client(base_url=portal.url.rstrip("/"), follow_redirects=False) as web:
        _login(web, USER)
        listing = web.get("/messages").text
        assert f"{tag} via a" in listing
        assert f"{tag} via b" in listing
        page = web.get(f"/messages/{via_a.id}").text
        done = web.post(f"/messages/{via_a.id}/release", data={"csrf": _csrf(page)})
        assert 303 == done.status_code, done.text
    _until("the release reaches the sink", lambda: any(
        f"{tag} via a".encode() in m.data for m in a.sink.messages
    ))  # fmt: skip
    script = str(Path(sys.executable).parent / "mail-filter")
    config = str(b.filter.config_path)
    listed = subprocess.run(
        [script, "quarantine", "list", "--config", config],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == listed.returncode, listed.stderr
    assert via_a.id in listed.stdout
    assert held[f"{tag} via b"][0].id in listed.stdout
    again = subprocess.run(
        [script, "quarantine", "release", via_a.id, "--config", config],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 != again.returncode
    assert "already released" in again.stderr
    time.sleep(1)
    assert 1 == sum(f"{tag} via a".encode() in m.data for m in a.sink.messages)


def test_postgres_stopped_during_a_virus_flood_defers_then_holds_each_once(
    hosts: tuple[MailChain, MailChain], store: PostgresStore, postgres_server: Postgres
) -> None:
    """40 viruses through both hosts; PostgreSQL stops after the first 10 and starts again
    later: the rest get 451 (Postfix keeps them) and each of the 40 is held exactly once,
    none delivered."""
    a, b = hosts
    tag = uuid.uuid4().hex[:8]
    virus = EICAR.decode()
    for n in range(10):
        send((a, b)[n % 2], USER, f"{tag} {n:02d}", virus)
    _until("the first 10 are held", lambda: len(by_subject(store, tag)) == 10)
    store.close()
    postgres_server.stop()
    try:
        for n in range(10, 40):
            send((a, b)[n % 2], USER, f"{tag} {n:02d}", virus)
        _until(
            "both filters answered 451",
            lambda: all("result=tempfail" in h.filter.log_text() for h in hosts),
        )
        time.sleep(2)  # a few of Postfix's retries meet the outage too
    finally:
        postgres_server.start()
    # Postfix retries on its own (fast_retry); a flush now and then keeps one message whose
    # next try was scheduled late in the outage from waiting out its backoff.
    _until("all 40 are held", lambda: flushed(hosts) and len(by_subject(store, tag)) == 40)
    _until("both queues are empty", lambda: a.queue_empty() and b.queue_empty())
    held = by_subject(store, tag)
    assert {f"{tag} {n:02d}" for n in range(40)} == set(held)
    assert all(1 == len(entries) for entries in held.values())
    assert all("virus" == entries[0].category for entries in held.values())
    assert not any(tag.encode() in m.data for m in a.sink.messages)
    for host in hosts:
        assert "quarantine write failed" in host.filter.log_text()
