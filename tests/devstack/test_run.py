"""``make run``'s two-host demo (``GATEWAYS=2``), run as a person runs it: up, shown, Ctrl-C.

The demo is started as a child process on a directory of its own, read until
it waits for Ctrl-C, then sent SIGINT; every process it started (found while it
ran by its command line or working directory) must be gone when it exits.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devstack import run
from devstack.proc import is_running

ROOT = Path(__file__).resolve().parents[2]
_TOOLS = ("dovecot", "postfix", "redis-server", "clamd", "spamd", "openssl")
_WAITING = "Ctrl-C stops everything."


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


@pytest.mark.integration
@pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in _TOOLS),
    reason="needs root and Debian's dovecot, postfix, redis-server, clamav, spamd, openssl",
)
def test_two_gateway_hosts_share_one_budget_and_stop_cleanly(sockdir: Path) -> None:
    """GATEWAYS=2: mail goes through each host, a login through gw1 is no Dovecot login
    through gw2, 100 guesses through both reach Dovecot about the budget's number of
    times, the user still logs in on both, and Ctrl-C leaves no process behind."""
    run_dir = sockdir  # short: the daemons' Unix sockets live below it
    env = dict(os.environ, GATEWAYS="2", RUN_DIR=str(run_dir), PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    env.pop("IMAP_URL", None)
    demo = subprocess.Popen(
        [sys.executable, "-u", "-m", "devstack.run"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        watchdog.cancel()
    output = "\n".join(lines) + "\n" + rest
    assert 0 == demo.returncode, output
    assert up < 60, output
    assert "by gw1.gateway.test (Postfix) with ESMTPA" in output
    assert "by gw2.gateway.test (Postfix) with ESMTPA" in output
    assert re.search(r"right password through gw1 +OK +logins at Dovecot: 1\n", output), output
    assert re.search(r"right password through gw2 +OK +logins at Dovecot: 0 ", output), output
    guesses = re.search(r"100 wrong passwords.* NO x100 +logins at Dovecot: (\d+) of 100", output)
    assert guesses is not None, output
    assert 10 <= int(guesses[1]) <= 12, output  # the budget, then one per 5 s (trickle)
    assert re.search(r"right password through each host +OK x2 +logins at Dovecot: 0", output)
    assert len(ours) > 10  # it did find the daemons: Dovecot, Redis, Postfix, clamd ...
    assert set() == {pid for pid in ours if is_running(pid)}


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
