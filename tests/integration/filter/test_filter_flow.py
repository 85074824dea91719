"""Real Postfix in front and behind mail-filter, with real clamd and spamd, into a sink.

client -> Postfix smtpd -> content_filter smtp-amavis -> mail-filter
       -> Postfix 127.0.0.1:<reinject> (no filter) -> smtp -> SmtpSink
"""

from __future__ import annotations

import base64
import io
import json
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.clamd import EICAR, EICAR_SIGNATURE_PREFIX, TEST_MARKER, Clamd
from devstack.daemons import FilterDaemon
from devstack.gateway import MailChain
from devstack.ports import free_port
from devstack.postfix import Postfix
from devstack.sink import SmtpSink
from devstack.spamd import Spamd
from filter import headers
from tests.fakes import StallingProxy
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass
class Flow:
    """Every daemon of the flow."""

    clamd: Clamd
    spamd: Spamd
    sink: SmtpSink
    filter: FilterDaemon
    postfix: Postfix
    reinject_port: int

    def send(self, raw: bytes, rcpts: tuple[str, ...] = ("user@example.com",)) -> None:
        with smtplib.SMTP("127.0.0.1", self.postfix.smtpd_port, timeout=30) as smtp:
            smtp.sendmail("sender@example.net", list(rcpts), raw)

    def flush(self) -> None:
        """Ask Postfix to retry deferred mail now."""
        subprocess.run(
            ["postqueue", "-c", str(self.postfix.config_dir), "-f"], check=True, timeout=30
        )

    def arrived(self, message_id: str, rcpt: str = "user@example.com") -> list[bytes]:
        """Copies of the message delivered to ``rcpt`` (bounces to the sender excluded)."""
        return [
            m.data
            for m in self.sink.messages
            if message_id.encode() in m.data and rcpt in m.rcpt_tos
        ]

    def wait_arrived(self, message_id: str, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.arrived(message_id)
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(
            f"{message_id} not delivered; maillog:\n{self.postfix.maillog_text()[-3000:]}"
        )


def make_message(subject: str, body: bytes, message_id: str) -> bytes:
    return (
        b"From: Sender <sender@example.net>\r\nTo: user@example.com\r\n"
        + f"Subject: {subject}\r\nMessage-ID: <{message_id}>\r\n".encode()
        + b"Date: Sat, 28 Nov 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + body
    )


def new_id() -> str:
    return f"{uuid.uuid4().hex}@test.example.net"


@pytest.fixture(scope="module")
def flow(workroot: Path) -> Iterator[Flow]:
    """The whole filter flow, started once for this module."""
    root = workroot / "flow"
    root.mkdir()
    # texthash: needs no postmap; the re-injection listener refuses this recipient.
    refuse = root / "refuse"
    refuse.write_text("refused@example.com 550 5.1.1 <refused@example.com>: no such user\n")
    chain = MailChain(
        root,
        filter_settings={
            "clamd": {"timeout": 10.0},
            "spamd": {"timeout": 30.0},
            "notices": {"admins": ["postmaster@example.com"], "max_per_hour": 2},
        },
        postfix_main_cf={
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtp_connect_timeout": "5s",
        },
        filter_processes=2,
        fast_retry=True,
        reinject_recipient_restrictions=(
            f"check_recipient_access,texthash:{refuse},permit_mynetworks,reject"
        ),
    )
    with chain:
        assert chain.postfix is not None
        yield Flow(
            chain.clamd, chain.spamd, chain.sink, chain.filter, chain.postfix, chain.reinject_port
        )


def test_clean_mail_arrives_marked_with_body_byte_identical(flow: Flow) -> None:
    """Clean mail is delivered with Received and X-Virus-Scanned; the body bytes are unchanged."""
    mid = new_id()
    # Lines stay under 998 bytes: Postfix itself folds longer ones (smtp_line_length_limit).
    body = b"Hello,\r\n.a line starting with a dot\r\n\xc3\xa9t\xc3\xa9 8-bit\r\n"
    body += (b"x" * 900 + b"\r\n") * 5
    raw = make_message("clean test", body, mid)
    flow.send(raw)
    got = flow.wait_arrived(mid)
    head, rest = headers.split(got)
    assert rest == b"\r\n" + body
    assert b"X-Virus-Scanned: by mail-filter at filter.test" in head
    assert b"(mail-filter) with ESMTP id" in head.replace(b"\r\n\t", b" ")
    assert 3 <= head.count(b"Received:")
    assert headers.split(raw)[0] in got  # the original header block, untouched


def test_gtube_is_tagged(flow: Flow) -> None:
    """GTUBE is tagged spam in amavisd-new's format and still delivered."""
    mid = new_id()
    flow.send(make_message("buy now", b"Test\r\n" + GTUBE + b"\r\n", mid))
    got = flow.wait_arrived(mid)
    assert b"X-Spam-Flag: YES" in got
    assert b"Subject: ***SPAM*** buy now" in got
    assert b"X-Spam-Status: Yes, score=" in got
    assert b"GTUBE" in headers.split(got)[0]


def _discarded(flow: Flow, seen: int, timeout: float = 20) -> str:
    """Wait for one more 'discarded' answer in Postfix's log than ``seen``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = flow.postfix.maillog_text()
        if log.count("250 2.7.0 Ok, discarded") > seen:
            return log
        time.sleep(0.1)
    raise AssertionError("no discard in the maillog")


def discards(flow: Flow) -> int:
    return flow.postfix.maillog_text().count("250 2.7.0 Ok, discarded")


def test_eicar_is_discarded_and_quarantined(flow: Flow) -> None:
    """EICAR in the body is discarded (amavisd-new's default) naming it, and quarantined."""
    mid, seen = new_id(), discards(flow)
    flow.send(make_message("eicar", EICAR + b"\r\n", mid))
    log = _discarded(flow, seen)
    assert not flow.arrived(mid)
    assert "INFECTED: " + EICAR_SIGNATURE_PREFIX in log
    assert mid.encode() in b"".join(
        p.read_bytes() for p in (flow.filter.workdir.parent / "quarantine").glob("*.eml")
    )


def test_eicar_in_a_zip_attachment_is_caught(flow: Flow) -> None:
    """EICAR inside a zip attachment is found too, and so is our own test marker."""
    for payload, name in ((EICAR, "eicar.com"), (TEST_MARKER, "marker.txt")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(name, payload)
        msg = EmailMessage()
        mid = new_id()
        msg["From"], msg["To"], msg["Subject"] = "sender@example.net", "user@example.com", "zip"
        msg["Message-ID"] = f"<{mid}>"
        msg.set_content("see attachment")
        msg.add_attachment(buf.getvalue(), maintype="application", subtype="zip", filename="a.zip")
        seen = discards(flow)
        flow.send(msg.as_bytes())
        _discarded(flow, seen)
        assert not flow.arrived(mid)
    eventually(flow.filter.log_text, "Mailgate.Test.Marker")


def mail_filter(*args: str) -> subprocess.CompletedProcess[str]:
    script = str(Path(sys.executable).parent / "mail-filter")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=60, check=False)


def test_quarantine_release_delivers_byte_identical_once(flow: Flow) -> None:
    """A quarantined message released with the CLI arrives byte-identical (with its
    X-Quarantine-ID and scan headers); a second release is refused."""
    mid, seen = new_id(), discards(flow)
    flow.send(make_message("hold me", TEST_MARKER + b"\r\n", mid))
    _discarded(flow, seen)
    cfg = str(flow.filter.config_path)
    listing = mail_filter("quarantine", "--config", cfg, "list", "--category", "virus")
    assert 0 == listing.returncode, listing.stderr
    entries = [line.split()[0] for line in listing.stdout.splitlines()]
    qdir = flow.filter.workdir.parent / "quarantine"
    stored = {e: (qdir / f"{e}.eml").read_bytes() for e in entries}
    qid = next(e for e, data in stored.items() if mid.encode() in data)
    released = mail_filter("quarantine", "--config", cfg, "release", qid)
    assert 0 == released.returncode, released.stderr
    got = flow.wait_arrived(mid)
    assert got.endswith(stored[qid])  # Postfix adds its Received lines in front, nothing else
    assert f"X-Quarantine-ID: <{qid}>".encode() in got
    again = mail_filter("quarantine", "--config", cfg, "release", qid)
    assert 1 == again.returncode
    assert "already released" in again.stderr
    time.sleep(1)
    assert 1 == len(flow.arrived(mid))


def test_admin_notices_are_sent_and_throttled(flow: Flow) -> None:
    """Administrators get notices about quarantined mail, at most max_per_hour per category."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        notices = [m for m in flow.sink.messages if m.rcpt_tos == ["postmaster@example.com"]]
        if len(notices) >= 2:
            break
        time.sleep(0.1)
    assert 2 == len(notices)  # three or more virus messages were quarantined by now
    assert b"mail-filter quarantine release" in notices[0].data


def test_partially_refused_reinjection(flow: Flow) -> None:
    """The re-injection listener refuses one recipient: the other gets the mail,
    the sender gets our DSN, and nobody is dropped silently."""
    mid = new_id()
    flow.send(make_message("partial", b"hi\r\n", mid), ("user@example.com", "refused@example.com"))
    flow.wait_arrived(mid)  # raises if it never arrives
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        dsns = [
            m for m in flow.sink.messages
            if m.rcpt_tos == ["sender@example.net"] and b"refused@example.com" in m.data
        ]  # fmt: skip
        if dsns:
            break
        time.sleep(0.1)
    assert dsns, "no DSN for the refused recipient"
    assert [
        m.rcpt_tos
        for m in flow.sink.messages
        if mid.encode() in m.data and m.rcpt_tos != ["sender@example.net"]
    ] == [["user@example.com"]]


def test_clamd_down_defers_then_delivers_exactly_once(flow: Flow) -> None:
    """With clamd stopped Postfix logs a 451 deferral; after clamd returns the queued
    message is delivered exactly once."""
    flow.clamd.stop()
    try:
        mid = new_id()
        flow.send(make_message("while clamd is down", b"wait for me\r\n", mid))
        deadline = time.monotonic() + 20
        while "451 4.3.0 Virus scanner unavailable" not in flow.postfix.maillog_text():
            assert time.monotonic() < deadline, "no 451 deferral logged"
            time.sleep(0.1)
        assert "status=deferred" in flow.postfix.maillog_text()
        assert not flow.arrived(mid)
    finally:
        flow.clamd.start()
    flow.flush()
    flow.wait_arrived(mid)
    time.sleep(1.5)
    assert 1 == len(flow.arrived(mid))


def test_downstream_down_defers_then_delivers(flow: Flow) -> None:
    """With the re-injection target unreachable the filter answers 451; once it is back,
    the message is delivered exactly once."""
    flow.filter.settings["reinject"]["address"] = f"127.0.0.1:{free_port()}"
    flow.filter.write_config()
    flow.filter.signal(signal.SIGHUP)
    time.sleep(0.5)
    mid = new_id()
    try:
        flow.send(make_message("downstream down", b"later\r\n", mid))
        deadline = time.monotonic() + 20
        while "Could not hand the message back" not in flow.postfix.maillog_text():
            assert time.monotonic() < deadline, "no 451 for the unreachable downstream"
            time.sleep(0.1)
    finally:
        flow.filter.settings["reinject"]["address"] = f"127.0.0.1:{flow.reinject_port}"
        flow.filter.write_config()
        flow.filter.signal(signal.SIGHUP)
        time.sleep(0.5)
    flow.flush()
    flow.wait_arrived(mid)
    time.sleep(1.5)
    assert 1 == len(flow.arrived(mid))


def test_metrics_endpoint(flow: Flow) -> None:
    """The filter's metrics are served over HTTP and parse; no address appears in them."""
    url = f"http://127.0.0.1:{flow.filter.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("mailfilter_messages_total", (("outcome", "clean"),))] >= 1
    assert samples[("mailfilter_messages_total", (("outcome", "virus"),))] >= 2
    assert (
        samples[("mailfilter_scanner_errors_total", (("kind", "connect"), ("scanner", "clamd")))]
        >= 1
    )
    assert "example.com" not in text
    assert "example.net" not in text


def test_concurrent_large_messages_keep_memory_bounded(flow: Flow) -> None:
    """Four 8 MB messages at once pass, and the filter's resident memory stays bounded."""
    assert flow.filter.proc is not None
    status = Path(f"/proc/{flow.filter.proc.pid}/status")
    ids = [new_id() for _ in range(4)]
    line = b"y" * 76 + b"\r\n"
    bodies = [line * (8 * 1024 * 1024 // len(line)) for _ in ids]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: flow.send(make_message("big", bodies[n], ids[n])), range(4)))
    for mid in ids:
        flow.wait_arrived(mid, timeout=60)
    rss_kb = int(
        next(ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM")).split()[1]
    )
    # 4 messages x 8 MB, each held a few times over (received, MIME walk for banned
    # attachments, marked copy), plus the interpreter: linear in messages x size.
    assert rss_kb < 4 * 8 * 1024 * 5 + 80 * 1024


def _restart_filter(flow: Flow, **sections: dict[str, object]) -> None:
    """Restart the filter on the same port with some settings changed."""
    flow.filter.stop()
    for name, values in sections.items():
        flow.filter.settings.setdefault(name, {}).update(values)
    flow.filter.start()


def test_banned_attachment_in_nested_zip(flow: Flow) -> None:
    """A program two zips deep in an attachment is banned: discarded and quarantined."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("invoice.pdf.exe", b"MZ\x90\x00 not really a program")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("documents.zip", inner.getvalue())
    msg = EmailMessage()
    mid = new_id()
    msg["From"], msg["To"], msg["Subject"] = "sender@example.net", "user@example.com", "docs"
    msg["Message-ID"] = f"<{mid}>"
    msg.set_content("please see the documents")
    msg.add_attachment(outer.getvalue(), maintype="application", subtype="zip", filename="docs.zip")
    seen = discards(flow)
    flow.send(msg.as_bytes())
    log = _discarded(flow, seen)
    assert "BANNED: name 'invoice.pdf.exe'" in log
    assert not flow.arrived(mid)


def test_bad_list_line_on_reload_keeps_old_lists(flow: Flow) -> None:
    """SIGHUP with a bad list line is refused, naming file and line; mail keeps flowing."""
    bad = flow.filter.workdir / "whitelist"
    bad.write_text("good@example.net\n# fine\nthis is not@an entry\n")
    flow.filter.settings.setdefault("lists", {})["whitelist"] = str(bad)
    flow.filter.write_config()
    flow.filter.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while f"{bad}:3" not in flow.filter.log_text():
        assert time.monotonic() < deadline, "no error naming the bad line"
        time.sleep(0.1)
    assert "reload failed" in flow.filter.log_text()
    mid = new_id()
    flow.send(make_message("after a bad reload", b"still here\r\n", mid))
    flow.wait_arrived(mid)
    del flow.filter.settings["lists"]
    flow.filter.write_config()


def test_crash_after_quarantine_write_loses_nothing(flow: Flow) -> None:
    """SIGKILL after the quarantine write and before the answer: Postfix retries, the
    message is delivered exactly once (and quarantined again on the retry)."""
    stall = StallingProxy(flow.reinject_port, stall=lambda _n: True)
    qdir = flow.filter.workdir.parent / "quarantine"
    mid = new_id()
    try:
        _restart_filter(
            flow,
            reinject={"address": f"127.0.0.1:{stall.port}"},
            policy={"quarantine": ["spam"], "tag2_level": 5.0},
        )
        before = set(qdir.glob("*.json"))
        flow.send(make_message("spam, held and passed", b"x\r\n" + GTUBE + b"\r\n", mid))
        deadline = time.monotonic() + 20
        while not (set(qdir.glob("*.json")) - before):
            assert time.monotonic() < deadline, "nothing quarantined"
            time.sleep(0.05)
        flow.filter.signal(signal.SIGKILL)
        assert flow.filter.proc is not None
        flow.filter.proc.wait(10)
    finally:
        stall.close()
        flow.filter.settings["policy"] = {}
        _restart_filter(flow, reinject={"address": f"127.0.0.1:{flow.reinject_port}"})
    flow.flush()
    flow.wait_arrived(mid, timeout=60)
    time.sleep(1.5)
    assert 1 == len(flow.arrived(mid))
    held = [p for p in qdir.glob("*.eml") if mid.encode() in p.read_bytes()]
    assert len(held) >= 1


def test_reject_and_bounce_destinies_end_to_end(flow: Flow) -> None:
    """spam_destiny = reject: Postfix gets 554 and bounces; = bounce: 250, and our own DSN
    reaches the sender."""
    try:
        _restart_filter(flow, policy={"spam_destiny": "reject"})
        mid = new_id()
        flow.send(make_message("rejected spam", GTUBE + b"\r\n", mid))
        deadline = time.monotonic() + 20
        while "554 5.7.1 Rejected" not in flow.postfix.maillog_text():
            assert time.monotonic() < deadline, "no 554 for spam_destiny = reject"
            time.sleep(0.1)
        assert not flow.arrived(mid)
        _restart_filter(flow, policy={"spam_destiny": "bounce", "dsn_cutoff_level": 5000.0})
        mid = new_id()
        flow.send(make_message("bounced spam", GTUBE + b"\r\n", mid))
        deadline = time.monotonic() + 20
        while not flow.arrived(mid, rcpt="sender@example.net"):
            assert time.monotonic() < deadline, "no DSN of ours to the sender"
            time.sleep(0.1)
        [dsn] = flow.arrived(mid, rcpt="sender@example.net")
        assert b"report-type=delivery-status" in dsn
        assert not flow.arrived(mid)
    finally:
        flow.filter.settings["policy"] = {}
        _restart_filter(flow)


def test_bounce_with_null_sender_is_delivered(flow: Flow) -> None:
    """A DSN (MAIL FROM:<>) goes through with its null reverse-path intact."""
    mid = new_id()
    raw = make_message("Undelivered Mail Returned to Sender", b"bounce\r\n", mid)
    with smtplib.SMTP("127.0.0.1", flow.postfix.smtpd_port, timeout=30) as smtp:
        smtp.sendmail("", ["user@example.com"], raw)
    flow.wait_arrived(mid)
    (got,) = [m for m in flow.sink.messages if mid.encode() in m.data]
    assert got.mail_from in ("", "<>")  # aiosmtpd (the sink) records <> as "<>"


def _held(flow: Flow, mid: str) -> dict[str, object]:
    """The quarantine entry (metadata) of the message with this Message-ID."""
    qdir = flow.filter.workdir.parent / "quarantine"
    for eml in qdir.glob("*.eml"):
        if mid.encode() in eml.read_bytes():
            entry: dict[str, object] = json.loads(eml.with_suffix(".json").read_text())
            return entry
    raise AssertionError(f"{mid} not in the quarantine")


def _raw_with_part(mid: str, part: bytes) -> bytes:
    """A multipart message, written by hand as the attacker did, with one extra part."""
    return (
        b"From: sender@example.net\r\nTo: user@example.com\r\nSubject: parts\r\n"
        + f"Message-ID: <{mid}>\r\n".encode()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\n'
        + b"--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\n"
        + part
        + b"\r\n--zz--\r\n"
    )


@pytest.mark.parametrize(
    "field",
    [
        b'Content-Disposition: attachment; filename="=?utf-8?B?ZXZpbC5qcw==?="',
        b'Content-Type: application/octet-stream; name="=?iso-8859-1?Q?evil=2Evbs?="',
    ],
)
def test_encoded_word_names_are_banned_end_to_end(flow: Flow, field: bytes) -> None:
    """An RFC 2047 file name (B or Q) is decoded: banned, discarded and held, not delivered."""
    mid, seen = new_id(), discards(flow)
    flow.send(_raw_with_part(mid, field + b"\r\n\r\nWScript.Echo(1)"))
    log = _discarded(flow, seen)
    assert "BANNED: name 'evil." in log
    assert "banned" == _held(flow, mid)["category"]
    assert not flow.arrived(mid)


def _seven_zip(tmp: Path, *args: str) -> bytes:
    (tmp / "evil.exe").write_bytes(b"MZ\x90\x00 not really a program")
    out = tmp / "a.7z"
    out.unlink(missing_ok=True)
    subprocess.run(
        ["7z", "a", "-bd", "-y", "-t7z", *args, str(out), "evil.exe"], cwd=tmp, check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


def test_7z_archives_end_to_end(flow: Flow, tmp_path: Path) -> None:
    """A 7z made by 7z is opened (its .exe banned); with encrypted headers it is unchecked."""
    cases = (
        ((), "BANNED: name 'evil.exe'", "banned"),
        (("-pSecret1", "-mhe=on"), "UNCHECKED: ", "unchecked"),
    )
    for args, word, category in cases:
        data = base64.encodebytes(_seven_zip(tmp_path, *args))
        mid, seen = new_id(), discards(flow)
        part = (
            b'Content-Type: application/octet-stream; name="photos.dat"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + data
        )
        flow.send(_raw_with_part(mid, part))
        log = _discarded(flow, seen)
        assert word in log
        assert category == _held(flow, mid)["category"]
        assert not flow.arrived(mid)


def test_nested_archives_and_mime_end_to_end(flow: Flow) -> None:
    """A zip six deep and a multipart 2,000 deep are unchecked: held, answered 250, no retry."""
    data = b"harmless text"
    for level in range(6):
        data = _zip_of(f"level{level}.zip" if level else "a.txt", data)
    zipped_part = (
        b'Content-Type: application/zip; name="docs.zip"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data)
    )
    deep_part = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(2000)
    )
    for part, word in ((zipped_part, "nested deeper than 4"), (deep_part, "MIME nested deeper")):
        mid, seen = new_id(), discards(flow)
        flow.send(_raw_with_part(mid, part))
        log = _discarded(flow, seen)
        assert "UNCHECKED: " in log
        entry = _held(flow, mid)
        assert "unchecked" == entry["category"]
        assert word in str(entry["reason"])
        assert not flow.arrived(mid)
    assert "451 4.3.0 Internal error" not in flow.postfix.maillog_text()


def _zip_of(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def test_forged_marks_never_reach_the_recipient(flow: Flow) -> None:
    """Issue 14 item 5 through Postfix: forged X-Spam-*, X-Virus-* and X-Quarantine-ID go."""
    mid = new_id()
    forged = (
        b"X-Spam-Report: forged report\r\nX-Spam-Checker-Version: forged\r\n"
        b"X-Virus-Scanned: forged scan\r\nX-Quarantine-ID: <forged-id>\r\n"
    )
    flow.send(forged + make_message("marks test", b"hi\r\n", mid))
    got = flow.wait_arrived(mid)
    head = headers.split(got)[0]
    assert b"forged" not in head
    assert 1 == head.count(b"X-Virus-Scanned: by mail-filter")


def _big_body(size: int) -> bytes:
    """CRLF lines under 998 bytes, a third of them starting with a dot."""
    lines = [b"." * (n % 3) + b"line %d " % n + b"z" * (n % 300) + b"\r\n" for n in range(4000)]
    block = b"".join(lines)
    return block * (size // len(block) + 1)


def test_a_spooled_message_arrives_byte_exact(flow: Flow) -> None:
    """Issue 14 item 6: a 3 MB message (over the 1 MiB spool threshold) arrives unchanged."""
    mid = new_id()
    body = _big_body(3 * 1024 * 1024)
    flow.send(make_message("spooled", body, mid))
    got = flow.wait_arrived(mid, timeout=60)
    assert headers.split(got)[1] == b"\r\n" + body
    assert b"X-Virus-Scanned: by mail-filter" in headers.split(got)[0]


def test_a_virus_at_the_end_of_a_spooled_message_is_found(flow: Flow) -> None:
    """Issue 14 item 6: EICAR after 3 MB is found by clamd reading the spool file."""
    mid, seen = new_id(), discards(flow)
    flow.send(make_message("spooled virus", _big_body(3 * 1024 * 1024) + EICAR + b"\r\n", mid))
    log = _discarded(flow, seen, timeout=60)
    assert not flow.arrived(mid)
    assert "INFECTED: " + EICAR_SIGNATURE_PREFIX in log
