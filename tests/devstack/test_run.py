"""``make run``, one gateway host and two (``GATEWAYS=2``), run as a person runs it: up,
shown, looked at, Ctrl-C.

The demo is started as a child process on a directory of its own, read until
it waits for Ctrl-C, its quarantine portal asked over HTTP for the demo's held
mail, then sent SIGINT; every process it started (found while it ran by its
command line or working directory) must be gone when it exits.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest

from devstack import run
from devstack.proc import is_running

ROOT = Path(__file__).resolve().parents[2]
_TOOLS = ("dovecot", "postfix", "redis-server", "clamd", "spamd", "openssl")
_WAITING = "Ctrl-C stops everything."
_NEEDS_DAEMONS = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in _TOOLS),
    reason="needs root and Debian's dovecot, postfix, redis-server, clamav, spamd, openssl",
)


def _started_in(directory: Path) -> set[int]:
    """Live processes whose command line or working directory names ``directory``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            named = os.fsencode(directory) in (entry / "cmdline").read_bytes()
            named = named or os.readlink(entry / "cwd").startswith(str(directory))
        except OSError:
            continue  # gone meanwhile
        if named:
            found.add(int(entry.name))
    return found


def _run_demo(run_dir: Path, while_up: Callable[[str], None], **env: str) -> str:
    """Start ``make run``'s demo with ``env``, call ``while_up`` with what it printed once it
    waits, Ctrl-C it; everything it printed.  It must exit 0 and leave no process behind."""
    environ = dict(os.environ, RUN_DIR=str(run_dir), PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", **env)
    for unset in ("IMAP_URL", "GATEWAYS", "PORTAL_ADMINS"):
        if unset not in env:
            environ.pop(unset, None)
    demo = subprocess.Popen(
        [sys.executable, "-u", "-m", "devstack.run"],
        cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    watchdog = threading.Timer(120, demo.kill)  # a hung start must not hang the suite
    watchdog.start()
    try:
        began, lines = time.monotonic(), list[str]()
        assert demo.stdout is not None
        while not (lines and lines[-1].endswith(_WAITING)):
            line = demo.stdout.readline()
            assert line, "the demo ended before it waited:\n" + "".join(lines)
            lines.append(line.rstrip("\n"))
        up = time.monotonic() - began
        ours = _started_in(run_dir)
        try:
            while_up("\n".join(lines))
        finally:
            demo.send_signal(signal.SIGINT)
            rest, _ = demo.communicate(timeout=60)
    finally:
        watchdog.cancel()
        if demo.poll() is None:  # a failed assertion above: never leave it running
            demo.kill()
            demo.wait(timeout=30)
        if demo.stdout is not None:
            demo.stdout.close()
    output = "\n".join(lines) + "\n" + rest
    assert 0 == demo.returncode, output
    assert up < 60, output
    assert len(ours) > 10  # it did find the daemons: Dovecot, Postfix, clamd ...
    assert set() == {pid for pid in ours if is_running(pid)}
    return output


def _portals(output: str) -> list[str]:
    """The portal URLs the demo printed, in host order."""
    found = re.findall(r"quarantine portal +(http://127\.0\.0\.1:\d+/) ", output)
    assert found, output
    return found


def _held_subjects(portal: str, user: str, password: str, page: str = "/messages") -> list[str]:
    """Log in to the portal as ``user`` over HTTP; the subjects ``page`` lists."""
    with httpx2.Client(base_url=portal.rstrip("/"), follow_redirects=False, timeout=30) as client:
        form = client.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None, form.text
        done = client.post("/login", data={"login": user, "password": password, "csrf": token[1]})
        assert 303 == done.status_code, done.text
        listed = client.get(page)
        assert 200 == listed.status_code, listed.text
    return sorted(
        html.unescape(s)
        for s in re.findall(r'<a href="/[a-z/]*messages/[^"]+">([^<]*)</a>', listed.text)
    )


def _demo_subjects(recipient: str | None = None) -> list[str]:
    """The subjects the demo holds (for ``recipient``, or everyone's), sorted."""
    return sorted(subject for rcpt, _, subject in run.DEMO_HELD if recipient in (None, rcpt))


@pytest.mark.integration
@_NEEDS_DAEMONS
def test_one_gateway_host_holds_demo_mail_its_portal_shows(sockdir: Path) -> None:
    """The default demo: mail goes through, and its quarantine portal answers with the demo's
    held spam and virus: each demo user sees their own, the demo administrator all of it;
    Ctrl-C leaves no process behind."""
    alice, bob = "alice@example.com", "bob@example.com"
    seen: dict[str, list[str]] = {}

    def look(output: str) -> None:
        [portal] = _portals(output)
        seen[alice] = _held_subjects(portal, alice, run.DEMO_USERS[alice])
        seen[bob] = _held_subjects(portal, bob, run.DEMO_USERS[bob])
        seen["admin"] = _held_subjects(portal, *run.DEMO_ADMIN, page="/admin")

    output = _run_demo(sockdir, look)
    assert "by gateway.test (Postfix) with ESMTPA" in output
    assert _demo_subjects(alice) == seen[alice], output
    assert _demo_subjects(bob) == seen[bob], output
    assert _demo_subjects() == seen["admin"], output
    assert f"{run.DEMO_ADMIN[0]} / {run.DEMO_ADMIN[1]!r} (administrator" in output


@pytest.mark.integration
@_NEEDS_DAEMONS
def test_two_gateway_hosts_share_one_budget_and_stop_cleanly(sockdir: Path) -> None:
    """GATEWAYS=2: mail goes through each host, a login through gw1 is no Dovecot login
    through gw2, 100 guesses through both reach Dovecot about the budget's number of
    times, the user still logs in on both, each host's portal shows the demo mail it
    held, and Ctrl-C leaves no process behind."""
    alice = "alice@example.com"
    seen: list[list[str]] = []

    def look(output: str) -> None:
        seen.extend(_held_subjects(p, alice, run.DEMO_USERS[alice]) for p in _portals(output))

    output = _run_demo(sockdir, look, GATEWAYS="2")  # short dir: the daemons' sockets live below
    assert "by gw1.gateway.test (Postfix) with ESMTPA" in output
    assert "by gw2.gateway.test (Postfix) with ESMTPA" in output
    assert re.search(r"right password through gw1 +OK +logins at Dovecot: 1\n", output), output
    assert re.search(r"right password through gw2 +OK +logins at Dovecot: 0 ", output), output
    # Every guess is NO, or now and then "try later" (no reply): a host records a verdict in
    # Redis just after answering, so the next guess, through the other host, can find it
    # still in flight. Never OK.
    guesses = re.search(
        r"100 wrong passwords, .* in turn +(.*?) +logins at Dovecot: (\d+) of 100", output
    )
    assert guesses is not None, output
    said = {a: int(n or 1) for a, n in re.findall(r"(OK|NO|no reply)(?: x(\d+))?", guesses[1])}
    assert 100 == said.get("NO", 0) + said.get("no reply", 0), output
    assert said.get("no reply", 0) <= 5, output
    assert 10 <= int(guesses[2]) <= 12, output  # the budget, then one per 5 s (trickle)
    assert re.search(r"right password through each host +OK x2 +logins at Dovecot: 0", output)
    assert [_demo_subjects(alice)] * 2 == seen, output


@pytest.mark.parametrize(
    ("env", "said"),
    [
        pytest.param({"GATEWAYS": "3"}, "GATEWAYS=3", id="three-hosts"),
        pytest.param({"GATEWAYS": "2", "IMAP_URL": "imaps://x"}, "IMAP_URL", id="real-server"),
    ],
)
def test_three_hosts_or_guesses_sent_to_a_real_server_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], said: str
) -> None:
    """GATEWAYS other than 1 or 2, or two hosts (which send wrong passwords on purpose)
    with IMAP_URL set, stop the demo with a reason before it starts anything."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=said):
        run.main()
