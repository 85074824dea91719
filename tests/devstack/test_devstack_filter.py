"""The filter-side devstack against the real Debian daemons: clamd, spamd, and the SMTP sink.

Each daemon is started once per module and spoken to the way the gateway
will: clamd through raw ``zINSTREAM`` on its Unix socket, spamd through
Debian's ``spamc``, the sink through smtplib.  Payloads are built here with
the email and zipfile modules, so the repository holds no encoded samples.
"""

from __future__ import annotations

import io
import os
import shutil
import smtplib
import socket
import struct
import subprocess
import time
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest

from devstack.clamd import EICAR, EICAR_SIGNATURE_PREFIX, TEST_MARKER, TEST_MARKER_SIGNATURE, Clamd
from devstack.ports import free_port
from devstack.sink import SmtpSink
from devstack.spamd import Spamd

_TOOLS = ("clamd", "spamd", "spamc", "spamassassin", "sa-learn", "setpriv")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or any(shutil.which(tool) is None for tool in _TOOLS),
        reason="needs root and Debian's clamav-daemon, spamassassin, spamd, spamc",
    ),
]

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

PLAIN = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: lunch on Friday\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <lunch-20261127-0001@mail.example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hi Bob,\r\n\r\nshall we have lunch at noon on Friday?\r\n\r\nAlice\r\n"
)


# -- helpers ------------------------------------------------------------------


def _recv_until_nul(sock: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"\0"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def instream(clamd: Clamd, data: bytes, chunk_size: int = 8192) -> str:
    """Scan ``data`` with zINSTREAM and return clamd's reply without the trailing NUL.

    The protocol: ``zINSTREAM\\0``, then chunks each prefixed by its length
    as 4 bytes big-endian, then a zero-length chunk.  When the stream exceeds
    StreamMaxLength, clamd answers and closes while we may still be sending:
    the write fails (EPIPE/ECONNRESET) but the reply is still readable.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(clamd.socket_path))
        try:
            sock.sendall(b"zINSTREAM\0")
            for start in range(0, len(data), chunk_size):
                chunk = data[start : start + chunk_size]
                sock.sendall(struct.pack("!I", len(chunk)) + chunk)
            sock.sendall(struct.pack("!I", 0))
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _recv_until_nul(sock).rstrip(b"\0").decode("utf-8", "replace")


def clamd_command(clamd: Clamd, command: bytes, *, tcp: bool = False) -> list[str]:
    """Send one z-command (e.g. ``b"zPING\\0"``) and return its NUL-terminated replies.

    Outside an IDSESSION clamd closes the connection after answering, so we
    read until EOF: ALLMATCHSCAN sends one reply per matching signature, and
    stopping at the first NUL would make the second one a race.
    """
    family = socket.AF_INET if tcp else socket.AF_UNIX
    address: str | tuple[str, int]
    if tcp:
        assert clamd.tcp_port is not None
        address = (clamd.host, clamd.tcp_port)
    else:
        address = str(clamd.socket_path)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(command)
        replies = b""
        while chunk := sock.recv(4096):
            replies += chunk
    return [reply.decode("utf-8", "replace") for reply in replies.split(b"\0")[:-1]]


def mail_with_attachment(payload: bytes, filename: str) -> bytes:
    """A multipart message with a text part and ``payload`` as a base64 attachment."""
    message = EmailMessage()
    message["From"] = "alice@example.test"
    message["To"] = "bob@example.test"
    message["Subject"] = f"here is {filename}"
    message.set_content("See the attachment.\n")
    message.add_attachment(
        payload, maintype="application", subtype="octet-stream", filename=filename
    )
    return message.as_bytes(policy=SMTP_POLICY)


def zipped(name: str, payload: bytes) -> bytes:
    """``payload`` as the only member of a deflated zip archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, payload)
    return buffer.getvalue()


def spamc_check(spamd: Spamd, message: bytes) -> tuple[float, int]:
    """(score, exit code) of ``spamc -c`` for ``message``.

    ``-x`` turns off spamc's "safe fallback": without it, a spamd that is
    down yields "0/0" and exit 0, which a test for a low score would accept.
    """
    result = subprocess.run(
        ["spamc", "-d", spamd.host, "-p", str(spamd.port), "-c", "-x"],
        input=message,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode in (0, 1), result
    score, _, _threshold = result.stdout.decode().strip().partition("/")
    return float(score), result.returncode


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def clamd(root: Path) -> Iterator[Clamd]:
    """A clamd with the project's test signatures on a Unix socket and a TCP port."""
    with Clamd(root / "clamd", tcp_port=free_port()) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def spamd(root: Path) -> Iterator[Spamd]:
    """An offline spamd with two children and learning allowed."""
    with Spamd(root / "spamd") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def sink_server() -> Iterator[SmtpSink]:
    """One recording SMTP sink for the module."""
    with SmtpSink() as server:
        yield server


@pytest.fixture
def sink(sink_server: SmtpSink) -> Iterator[SmtpSink]:
    """The module's sink, empty and accepting everything at the start of each test."""
    sink_server.clear()
    yield sink_server
    sink_server.set_reply(None, stage="DATA")
    sink_server.set_reply(None, stage="RCPT")
    sink_server.refuse_rcpt = ()


# -- clamd --------------------------------------------------------------------


def test_clamd_answers_ping_on_unix_socket_and_tcp(clamd: Clamd) -> None:
    """zPING answers PONG on both sockets; zVERSION names ClamAV."""
    assert ["PONG"] == clamd_command(clamd, b"zPING\0")
    assert ["PONG"] == clamd_command(clamd, b"zPING\0", tcp=True)
    [version] = clamd_command(clamd, b"zVERSION\0")
    assert version.startswith("ClamAV ")
    assert f"unix:{clamd.socket_path}" == clamd.address


def test_clamd_finds_raw_eicar(clamd: Clamd) -> None:
    """The bare 68-byte EICAR file is reported under an Eicar-Test-Signature name."""
    reply = instream(clamd, EICAR)
    assert reply.startswith(f"stream: {EICAR_SIGNATURE_PREFIX}"), reply
    assert reply.endswith(".UNOFFICIAL FOUND"), reply


def test_hdb_and_ndb_both_match_the_eicar_file(clamd: Clamd) -> None:
    """ALLMATCHSCAN on a file shows the whole-file hash signature fires as well as the ndb one."""
    sample = clamd.workdir / "eicar.com"
    sample.write_bytes(EICAR)
    replies = clamd_command(clamd, f"zALLMATCHSCAN {sample}\0".encode())
    assert {
        f"{sample}: Eicar-Test-Signature.UNOFFICIAL FOUND",
        f"{sample}: Eicar-Test-Signature-Anywhere.UNOFFICIAL FOUND",
    } == set(replies)


def test_clamd_finds_eicar_in_base64_mime_attachment(clamd: Clamd) -> None:
    """clamd decodes a base64 MIME attachment and finds EICAR in it."""
    message = mail_with_attachment(EICAR, "eicar.com")
    assert EICAR not in message  # only the decoded part can match
    assert b"Content-Transfer-Encoding: base64" in message
    reply = instream(clamd, message)
    assert reply.startswith(f"stream: {EICAR_SIGNATURE_PREFIX}"), reply
    assert reply.endswith(" FOUND"), reply


@pytest.mark.parametrize("in_mail", [False, True], ids=["zip", "zip-in-mail"])
def test_clamd_finds_eicar_in_zip(clamd: Clamd, in_mail: bool) -> None:
    """EICAR inside a deflated zip is found, bare and as a base64 mail attachment."""
    archive = zipped("readme.com", EICAR)
    assert EICAR not in archive
    reply = instream(clamd, mail_with_attachment(archive, "docs.zip") if in_mail else archive)
    assert reply.startswith(f"stream: {EICAR_SIGNATURE_PREFIX}"), reply
    assert reply.endswith(" FOUND"), reply


@pytest.mark.parametrize("where", ["text", "attachment", "zip"])
def test_clamd_finds_test_marker(clamd: Clamd, where: str) -> None:
    """Our own marker is found in plain text, in a base64 attachment and in a zip."""
    text = b"Some text before " + TEST_MARKER + b" and after.\r\n"
    if where == "text":
        data = b"From: a@example.test\r\nSubject: marker\r\n\r\n" + text
    elif where == "attachment":
        data = mail_with_attachment(text, "notes.txt")
    else:
        data = zipped("notes.txt", text)
    assert f"stream: {TEST_MARKER_SIGNATURE} FOUND" == instream(clamd, data)


def test_clamd_passes_clean_message(clamd: Clamd) -> None:
    """A clean message, attachment included, is answered OK."""
    assert "stream: OK" == instream(clamd, PLAIN)
    assert "stream: OK" == instream(clamd, mail_with_attachment(b"\x00\x01 harmless", "a.bin"))


def test_clamd_refuses_stream_over_limit_and_stops_promptly(root: Path) -> None:
    """Beyond StreamMaxLength clamd answers a size error, even while we are still sending."""
    with Clamd(root / "small", stream_max_length="1K") as small:
        assert "stream: OK" == instream(small, b"a" * 1024)
        assert "INSTREAM size limit exceeded. ERROR" == instream(small, b"a" * 1025)
        # 1 MB: clamd closes mid-upload, our sendall fails, the reply is still there.
        assert "INSTREAM size limit exceeded. ERROR" == instream(small, b"a" * 1_000_000)
        assert small.start_seconds is not None
        assert small.start_seconds < 5.0
    assert small.pid is None
    assert not small.socket_path.exists()  # clamd removes its socket on a clean exit
    assert small.stop_seconds is not None


# -- spamd --------------------------------------------------------------------


def test_spamassassin_lint_passes(spamd: Spamd) -> None:
    """spamassassin --lint accepts the generated site config (no DCC or network complaints)."""
    spamd.lint()
    assert "dns_available no" in (spamd.siteconfig_dir / "local.cf").read_text()


def test_gtube_scores_at_least_1000(spamd: Spamd) -> None:
    """GTUBE scores 1000 or more and spamc -c exits 1 (spam)."""
    message = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: gtube\r\n\r\n" + GTUBE
    score, code = spamc_check(spamd, message + b"\r\n")
    assert score >= 1000
    assert 1 == code


def test_plain_message_scores_low(spamd: Spamd) -> None:
    """A small ordinary message scores about 0 and is not spam."""
    score, code = spamc_check(spamd, PLAIN)
    assert score < 1.0
    assert 0 == code


def test_learned_counts_follow_tell(spamd: Spamd) -> None:
    """A spam learned over the spamd protocol shows up in sa-learn's counts."""
    nspam, nham = spamd.learned_counts()
    message = b"Subject: cheap watches\r\nMessage-ID: <w1@spam.example>\r\n\r\nBuy now " * 3
    result = subprocess.run(
        ["spamc", "-d", spamd.host, "-p", str(spamd.port), "-x", "-L", "spam"],
        input=message,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert 0 == result.returncode, result
    assert (nspam + 1, nham) == spamd.learned_counts()


# -- SMTP sink ------------------------------------------------------------------


def test_sink_records_message_byte_identically(sink: SmtpSink) -> None:
    """Dot-stuffed lines, 8-bit bytes and a 5000-byte line arrive exactly as sent."""
    message = (
        b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: bytes\r\n\r\n"
        b".leading dot\r\n..two dots\r\n.\r\n\xc3\x84\xff raw 8-bit\r\n"
        + b"x" * 5000
        + b"\r\nlast line\r\n"
    )
    began = time.monotonic()
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        refused = client.sendmail(
            "alice@example.test", ["bob@example.test", "carol@example.test"], message
        )
    assert {} == refused
    [received] = sink.wait_for(1, timeout=5)
    assert message == received.data
    assert "alice@example.test" == received.mail_from
    assert ["bob@example.test", "carol@example.test"] == received.rcpt_tos
    assert began <= received.at <= time.monotonic()


@pytest.mark.parametrize("reply", ["451 4.3.0 try later", "550 5.7.1 content rejected"])
def test_set_reply_fails_data(sink: SmtpSink, reply: str) -> None:
    """With set_reply, smtplib sees the given DATA failure and nothing is accepted."""
    sink.set_reply(reply)
    with (
        smtplib.SMTP(sink.host, sink.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPDataError) as failure,
    ):
        client.sendmail("a@example.test", ["b@example.test"], PLAIN)
    code, _, text = reply.partition(" ")
    assert (int(code), text.encode()) == (failure.value.smtp_code, failure.value.smtp_error)
    assert [] == sink.messages
    assert [PLAIN] == [message.data for message in sink.rejected]
    sink.set_reply(None)
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.sendmail("a@example.test", ["b@example.test"], PLAIN)
    assert 1 == len(sink.wait_for(1, timeout=5))


def test_set_reply_fails_rcpt(sink: SmtpSink) -> None:
    """With stage="RCPT" every recipient is refused with the given reply."""
    sink.set_reply("550 5.1.1 no such user", stage="RCPT")
    with (
        smtplib.SMTP(sink.host, sink.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as failure,
    ):
        client.sendmail("a@example.test", ["b@example.test"], PLAIN)
    assert {"b@example.test": (550, b"5.1.1 no such user")} == failure.value.recipients
    assert [] == sink.messages


def test_refuse_rcpt_refuses_only_those_recipients(sink: SmtpSink) -> None:
    """Listed recipients get 550 (case-insensitively); the message goes to the others."""
    sink.refuse_rcpt = {"gone@example.test"}
    with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        refused = client.sendmail("a@example.test", ["Gone@Example.test", "b@example.test"], PLAIN)
    assert ["Gone@Example.test"] == list(refused)
    assert 550 == refused["Gone@Example.test"][0]
    [received] = sink.wait_for(1, timeout=5)
    assert ["b@example.test"] == received.rcpt_tos


def test_wait_for_raises_on_timeout(sink: SmtpSink) -> None:
    """wait_for reports how many messages arrived when fewer than asked did."""
    with pytest.raises(TimeoutError, match="0 of 1 messages"):
        sink.wait_for(1, timeout=0.05)
