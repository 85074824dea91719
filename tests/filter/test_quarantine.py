"""The quarantine store and its CLI against a hostile directory and hostile messages.

Real files in a temporary directory: symlinks, FIFOs, devices, hard links and
malformed metadata planted the way a local user with write access could, and
messages carrying terminal control sequences the way a sender could.  The CLI
runs through ``mail-filter``'s own ``main``; releases go to a real SMTP server.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from filter import cli
from filter.quarantine import MAX_METADATA_BYTES, Entry, Store, new_id
from filter.quarantine_cli import printable

SECRET = b"root:$6$secret-hash:19000:0:99999:7:::\n"


def held(store: Store, message: bytes = b"Subject: hi\r\n\r\nbody\r\n", **fields: object) -> Entry:
    """A held message written as the filter writes one."""
    entry = Entry(
        new_id(), "virus", "Eicar-Test-Signature", "a@example.net", ["b@example.com"], 0.0, 3
    )
    for name, value in fields.items():
        setattr(entry, name, value)
    store.write(entry, message)
    return entry


class Sink:
    """aiosmtpd's handler hook: keeps every message it is given."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Keep the envelope and the bytes; accept."""
        assert isinstance(envelope.original_content, bytes)
        self.messages.append(
            (envelope.mail_from or "", envelope.rcpt_tos, envelope.original_content)
        )
        return "250 2.0.0 Ok: kept"


@dataclass
class Ran:
    """One CLI run: exit code and what it printed."""

    code: int
    out: str
    err: str
    raw: bytes


class Quarantine:
    """A quarantine directory, a config naming it and the sink, and the CLI run on them."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[bytes], port: int) -> None:
        self.store = Store(tmp_path / "q")
        self.store.directory.mkdir()
        self.capsys = capsys
        self.config = tmp_path / "filter.toml"
        self.audit_log = tmp_path / "audit.log"
        self.config.write_text(
            f'[quarantine]\ndirectory = "{self.store.directory}"\n'
            f'audit_log = "{self.audit_log}"\n'
            f'[reinject]\naddress = "127.0.0.1:{port}"\ntimeout = 5\n'
        )

    def run(self, *args: str) -> Ran:
        """``mail-filter quarantine --config ... ARGS``."""
        code = cli.main(["quarantine", "--config", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return Ran(code, out.decode(errors="replace"), err.decode(errors="replace"), out)

    def audit(self) -> list[str]:
        """The audit lines written so far, from ``quarantine`` on."""
        if not self.audit_log.exists():
            return []
        return [line.split(": ", 1)[1] for line in self.audit_log.read_text().splitlines()]

    def path(self, entry_id: str, suffix: str) -> Path:
        """Where one of an entry's files is."""
        return self.store.directory / f"{entry_id}{suffix}"


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A real SMTP server on 127.0.0.1 standing in for Postfix's re-injection listener."""
    with socket.socket() as probe:  # aiosmtpd 1.4 cannot listen on port 0 itself
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Sink(port)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler
    controller.stop()


@pytest.fixture
def q(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], sink: Sink
) -> Iterator[Quarantine]:
    """The quarantine under test; no command may wait on a FIFO (10 s, then the test fails)."""

    def too_slow(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError("the quarantine CLI blocked")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, 10)
    yield Quarantine(tmp_path, capsysbinary, sink.port)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def assert_one_clean_line(text: str, names: str, never: str = "") -> None:
    """``text`` is one line naming ``names``, no traceback, and not ``never`` (if given)."""
    assert 1 == len(text.splitlines()), text
    assert names in text
    assert "Traceback" not in text
    assert not never or never not in text


def listed(ran: Ran) -> list[str]:
    """The ids ``list`` printed."""
    return [line.split()[0] for line in ran.out.splitlines()]


# Files planted in the directory: every command refuses them, nothing is followed

PLANTED = [
    ("symlink to a secret", "is a symbolic link"),
    ("symlink to another entry", "is a symbolic link"),
    ("dangling symlink", "is a symbolic link"),
    ("directory", "is a directory"),
    ("FIFO", "is a FIFO"),
    ("device", "is a device"),
    ("hard link to a secret", "has 2 hard links"),
]


def plant(kind: str, path: Path, other: Path, tmp_path: Path) -> None:
    """Replace ``path`` with what a local user could leave there."""
    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    path.unlink()
    if kind == "symlink to a secret":
        path.symlink_to(secret)
    elif kind == "symlink to another entry":
        path.symlink_to(other)
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "gone")
    elif kind == "directory":
        path.mkdir()
    elif kind == "FIFO":
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    elif kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        except PermissionError:
            pytest.skip("mknod needs CAP_MKNOD")
    else:
        os.link(secret, path)


@pytest.mark.parametrize(
    ("suffix", "what", "other_file"),
    [(".eml", "message file", ".json"), (".json", "metadata", ".eml")],
)
@pytest.mark.parametrize(("kind", "said"), PLANTED)
def test_a_planted_entry_file_is_refused_by_every_command(
    q: Quarantine,
    sink: Sink,
    tmp_path: Path,
    kind: str,
    said: str,
    suffix: str,
    what: str,
    other_file: str,
) -> None:
    """A planted message or metadata file: show, release and delete refuse it in one line
    naming only that entry; list skips it; nothing is delivered or deleted."""
    other, entry = held(q.store), held(q.store)
    plant(kind, q.path(entry.id, suffix), q.path(other.id, suffix), tmp_path)
    for action in ("show", "release", "delete"):
        ran = q.run(action, entry.id)
        assert 1 == ran.code
        assert_one_clean_line(ran.err, f"{entry.id}: {what} {said}", never=other.id)
        assert "secret-hash" not in ran.out + ran.err
    ran = q.run("list")
    assert (0, [other.id]) == (ran.code, listed(ran))
    assert f"{entry.id}: {what} {said}" in ran.err
    if suffix == ".json":
        line = ran.err.splitlines()[0]
        assert_one_clean_line(line, f"{entry.id}: {what} {said}", never=other.id)
    assert [] == sink.messages
    assert q.path(entry.id, other_file).exists()  # refused, not deleted: evidence for the admin
    assert SECRET == (tmp_path / "shadow").read_bytes()
    assert SECRET == (tmp_path / "shadow").read_bytes()


def test_a_symlinked_message_is_never_released(q: Quarantine, sink: Sink, tmp_path: Path) -> None:
    """release of an entry whose message file links to a secret delivers nothing at all."""
    entry = held(q.store)
    plant("symlink to a secret", q.path(entry.id, ".eml"), Path(), tmp_path)
    assert 1 == q.run("release", entry.id).code
    assert [] == sink.messages
    assert [] == q.store.get(entry.id).releases


# Malformed metadata: reported once and skipped by list, refused by the rest


def _json(raw: dict[str, object]) -> bytes:
    return json.dumps(raw).encode()


Maker = Callable[[dict[str, object], str], bytes]
MALFORMED: list[tuple[str, Maker, str]] = [
    ("not JSON", lambda raw, other: b'{"id": ', "not JSON: Expecting value"),
    ("an array", lambda raw, other: b"[]", "not a JSON object"),
    ("not UTF-8", lambda raw, other: _json(raw).replace(b"Eicar", b"\xffEicar"), "not UTF-8"),
    (
        "a field missing",
        lambda raw, other: _json({k: raw[k] for k in raw if k != "size"}),
        "no size",
    ),
    ("a field unknown", lambda raw, other: _json({**raw, other: 1}), "1 unknown field"),
    ("time a string", lambda raw, other: _json({**raw, "received_at": "0"}), "received_at is not"),
    ("time NaN", lambda raw, other: _json({**raw, "received_at": float("nan")}), "received_at"),
    ("time too late", lambda raw, other: _json({**raw, "received_at": 1e300}), "received_at"),
    ("recipients text", lambda raw, other: _json({**raw, "recipients": "b@x"}), "recipients"),
    ("size a boolean", lambda raw, other: _json({**raw, "size": True}), "size is not"),
    ("score text", lambda raw, other: _json({**raw, "score": "9"}), "score is not"),
    ("releases numbers", lambda raw, other: _json({**raw, "releases": [1]}), "releases is not"),
    ("id not text", lambda raw, other: _json({**raw, "id": 7}), "id is not a string"),
    ("id another entry's", lambda raw, other: _json({**raw, "id": other}), "its id is not its"),
    ("id a path", lambda raw, other: _json({**raw, "id": f"../q/{other}"}), "its id is not its"),
    ("id absolute", lambda raw, other: _json({**raw, "id": "/etc/passwd"}), "its id is not its"),
    ("too big", lambda raw, other: _json(raw) + b" " * MAX_METADATA_BYTES, "bytes; refused"),
    ("nested too deep", lambda raw, other: b"[" * 100_000, "JSON we do not read"),
    ("a huge number", lambda raw, other: b'{"size": 1' + b"0" * 5000 + b"}", "JSON we do not"),
]
MALFORMED_PARAMS = [pytest.param(make, why, id=label) for label, make, why in MALFORMED]


def spoil(q: Quarantine, make: Maker) -> tuple[Entry, Entry]:
    """Two entries, the second with its metadata rewritten by ``make``: (good, bad)."""
    good, bad = held(q.store), held(q.store)
    path = q.path(bad.id, ".json")
    path.write_bytes(make(json.loads(path.read_bytes()), good.id))
    return good, bad


@pytest.mark.parametrize(("make", "why"), MALFORMED_PARAMS)
def test_malformed_metadata_is_reported_once_and_skipped_by_list(
    q: Quarantine, make: Maker, why: str
) -> None:
    """list names the bad entry once on stderr, and only it, and lists the good one."""
    good, bad = spoil(q, make)
    ran = q.run("list")
    assert (0, [good.id]) == (ran.code, listed(ran))
    problems = [line for line in ran.err.splitlines() if bad.id in line]
    assert 1 == len(problems), ran.err
    assert why in problems[0]
    assert good.id not in ran.err
    assert "Traceback" not in ran.err


@pytest.mark.parametrize(("make", "why"), MALFORMED_PARAMS)
def test_malformed_metadata_is_refused_by_show_release_and_delete(
    q: Quarantine, sink: Sink, make: Maker, why: str
) -> None:
    """Each fails (exit 1) in one line naming only the bad entry; nothing delivered or deleted."""
    good, bad = spoil(q, make)
    for action in ("show", "release", "delete"):
        ran = q.run(action, bad.id)
        assert (1, "") == (ran.code, ran.out)
        assert_one_clean_line(ran.err, f"{bad.id}: ", never=good.id)
        assert why in ran.err
    assert [] == sink.messages
    assert all(q.path(e.id, s).exists() for e in (good, bad) for s in (".json", ".eml"))
    assert [] == q.store.get(good.id).releases


# Ids on the command line


@pytest.mark.parametrize(
    "entry_id", ["../elsewhere/{id}", "/etc/passwd", "a\x00b", "", "0A", "x" * 300, "{id}/.."]
)
def test_an_id_that_is_not_one_is_refused(
    q: Quarantine, sink: Sink, tmp_path: Path, entry_id: str
) -> None:
    """show, release and delete refuse a path, NUL or anything but [0-9a-f-] as an id."""
    elsewhere = held(Store(tmp_path / "elsewhere"))
    for action in ("show", "release", "delete"):
        ran = q.run(action, entry_id.format(id=elsewhere.id))
        assert 1 == ran.code
        assert_one_clean_line(ran.err, "is not a quarantine id")
        assert len(ran.err) < 200
    assert [] == sink.messages
    assert (tmp_path / "elsewhere" / f"{elsewhere.id}.json").exists()


def test_stray_file_names_are_reported_by_list(q: Quarantine) -> None:
    """A notes.json or an undecodable, ESC-bearing name is reported, escaped; the rest listed."""
    good = held(q.store)
    (q.store.directory / "notes.json").write_text("{}")
    (q.store.directory / os.fsdecode(b"\xff\x1b[2J.json")).write_text("{}")
    ran = q.run("list")
    assert (0, [good.id]) == (ran.code, listed(ran))
    assert "'notes' is not a quarantine id" in ran.err
    assert "\x1b" not in ran.err
    assert "Traceback" not in ran.err


# Expiry and the ordinary path


def test_expire_keeps_what_it_cannot_trust_and_says_so(q: Quarantine, tmp_path: Path) -> None:
    """Old good entries go; a malformed and a planted one stay, each named; exit 1."""
    old, new = held(q.store), held(q.store, received_at=4e9)
    malformed = spoil(q, lambda raw, other: _json({**raw, "received_at": "old"}))[1]
    planted = held(q.store)
    plant("symlink to a secret", q.path(planted.id, ".eml"), Path(), tmp_path)
    ran = q.run("expire", "--older-than", "1")
    assert 1 == ran.code
    assert "deleted; 2 kept" in ran.out
    assert not q.path(old.id, ".json").exists()
    assert all(q.path(e.id, ".json").exists() for e in (new, malformed, planted))
    assert {malformed.id, planted.id} == {
        line.split()[2].rstrip(":") for line in ran.err.splitlines()
    }
    assert SECRET == (tmp_path / "shadow").read_bytes()


def test_release_delivers_the_entrys_own_bytes_once(q: Quarantine, sink: Sink) -> None:
    """A good entry goes out with its envelope and exact bytes; a second release is refused."""
    message = b"Subject: caf\xc3\xa9\r\n\r\nbody\r\n"
    entry = held(q.store, message)
    ran = q.run("release", entry.id)
    assert 0 == ran.code, ran.err
    assert [("a@example.net", ["b@example.com"], message)] == sink.messages
    again = q.run("release", entry.id)
    assert 1 == again.code
    assert "already released" in again.err
    assert 1 == len(sink.messages)


# Terminal control characters from message data are escaped


def controls(text: str, allowed: str = "\n") -> set[str]:
    """Characters in ``text`` a terminal would act on or that reorder or hide text."""
    return {
        c
        for c in text
        if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"} and c not in allowed
    }


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("\x1b]0;owned\x07", "\\x1b]0;owned\\x07", id="OSC and BEL"),
        pytest.param("\x9b2J", "\\x9b2J", id="C1 CSI"),
        pytest.param("over\rwrite", "over\\x0dwrite", id="CR"),
        pytest.param("two\nlines", "two\\x0alines", id="LF"),
        pytest.param("x\u202efdp.exe", "x\\u202efdp.exe", id="bidi override"),
        pytest.param("\U000e0041", "\\U000e0041", id="tag character"),
        pytest.param("\ud800", "\\ud800", id="lone surrogate"),
        pytest.param("Grüße, 中文, café 🙂", "Grüße, 中文, café 🙂", id="letters"),
    ],
)
def test_printable_escapes_controls_and_keeps_letters(text: str, shown: str) -> None:
    """Controls, bidi overrides and surrogates become escapes; letters of any script stay."""
    assert shown == printable(text)


def test_list_escapes_what_the_sender_chose(q: Quarantine) -> None:
    """Sender, recipients and reason are escaped: one line per entry, no controls, letters kept."""
    hostile = held(
        q.store,
        mail_from="evil\x1b]0;owned\x07@example.net",
        recipients=["b@example.com\r\x1b[1A"],
        reason=f"BANNED: name 'Grüße\u202efdp.exe'\n{new_id()}  forged line\x9b2J",
    )
    plain = held(q.store)
    ran = q.run("list")
    assert (0, sorted([hostile.id, plain.id])) == (ran.code, listed(ran))
    assert set() == controls(ran.out)
    assert "<evil\\x1b]0;owned\\x07@example.net>" in ran.out
    assert "b@example.com\\x0d\\x1b[1A" in ran.out
    assert "'Grüße\\u202efdp.exe'\\x0a" in ran.out


def test_show_escapes_headers_and_body(q: Quarantine) -> None:
    """show escapes controls (raw, C1 in UTF-8, bidi), shows bad bytes as \\xNN, keeps tabs."""
    message = (
        b"Subject: \x1b]2;pwned\x07 Gr\xc3\xbc\xc3\x9fe\r\n"
        b"From: x\xc2\x9b2J <a@example.net>\r\n\r\n"
        b"line\rover\r\n\xe2\x80\xaeevil\r\n\x9b raw byte\r\n\tindented\r\n"
    )
    entry = held(q.store, message)
    ran = q.run("show", entry.id)
    assert 0 == ran.code
    assert set() == controls(ran.out, allowed="\n\t")
    assert ran.out.splitlines()[1:] == [
        "Subject: \\x1b]2;pwned\\x07 Grüße",
        "From: x\\x9b2J <a@example.net>",
        "",
        "line\\x0dover",
        "\\u202eevil",
        "\\x9b raw byte",
        "\tindented",
    ]


def test_show_raw_gives_the_exact_bytes(q: Quarantine) -> None:
    """show --raw writes the message exactly as held, for a file or a pipe."""
    message = b"Subject: \x1b[2J\r\n\r\n\x9b\xff\r\n"
    entry = held(q.store, message)
    ran = q.run("show", "--raw", entry.id)
    assert (0, message) == (ran.code, ran.raw)


def test_errors_are_escaped_too(q: Quarantine) -> None:
    """An error quoting stored text (a recorded release) prints it escaped."""
    entry = held(q.store, releases=[{"when": "\x1b[2J", "to": "x\u202e@example.com"}])
    ran = q.run("release", entry.id)
    assert 1 == ran.code
    assert "already released (\\x1b[2J, to x\\u202e@example.com)" in ran.err
    assert set() == controls(ran.err)


def test_a_narrow_terminal_encoding_gets_escapes_not_a_traceback(
    q: Quarantine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a Latin-1 stdout, what Latin-1 lacks is printed as escapes."""
    held(q.store, reason="中文 café")
    out = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    monkeypatch.setattr(sys, "stdout", out)
    assert 0 == cli.main(["quarantine", "--config", str(q.config), "list"])
    out.flush()
    assert "\\u4e2d\\u6587 café" in out.buffer.getvalue().decode("latin-1")


# Writing


def test_a_planted_temporary_name_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink planted at the temporary name is not written through; its target is untouched."""
    store, victim = Store(tmp_path / "q"), tmp_path / "victim"
    victim.write_bytes(b"precious")
    entry = held(store)
    monkeypatch.setattr("filter.quarantine.secrets.token_hex", lambda _n: "f" * 16)
    (store.directory / f".{entry.id}.eml.{'f' * 16}.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        store.write(entry, b"overwritten")
    assert b"precious" == victim.read_bytes()


# Through the store interface: the index, reindex and the audit log


def test_reindex_rebuilds_the_index_and_names_what_it_refuses(q: Quarantine) -> None:
    """reindex indexes every good entry, names a malformed one (exit 1), and list still works."""
    good, bad = spoil(q, lambda raw, other: _json({**raw, "size": "big"}))
    (q.store.directory / "index.sqlite3").write_bytes(b"garbage " * 1000)
    ran = q.run("reindex")
    assert 1 == ran.code
    assert "1 entries indexed, 0 dropped; 1 refused" in ran.out
    assert_one_clean_line(ran.err, f"{bad.id}: bad metadata (size is not", never=good.id)
    assert [good.id] == listed(q.run("list"))
    assert 1 == len([line for line in q.audit() if "action=reindex" in line])


def test_each_command_writes_one_audit_line(q: Quarantine, sink: Sink) -> None:
    """show, release (and its refused second), delete: one line each, naming the Unix user."""
    entry, other = held(q.store), held(q.store)
    for args in (("show", entry.id), ("release", entry.id), ("release", entry.id)):
        q.run(*args)
    q.run("delete", other.id)
    lines = q.audit()
    assert 4 == len(lines), lines
    assert lines[0].startswith(f"quarantine action=show id={entry.id} by=unix:")
    assert f"action=release id={entry.id}" in lines[1]
    assert "to=b@example.com result=ok" in lines[1]
    assert "already released" in lines[2]
    assert lines[2].endswith("result=refused")
    assert f"action=delete id={other.id}" in lines[3]
    assert all("from=local" in line or "from=ssh:" in line for line in lines)
