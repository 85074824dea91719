"""How ``mail-filter learn`` teaches one message class to SpamAssassin's Bayes.

Three teachers behind two small call types: spamd's ``TELL`` (one message at a
time, spamd started with ``--allow-tell``), a local ``sa-learn`` per message
(for forgetting), and ``sa-learn`` over a whole batch (it takes about 0.6 s just
to start).  Each raises :class:`~filter.spamd.SpamdError` when the message could
not be taught, so the run retries it later.  Given the run's deadline, no
teacher waits past it: each wait is its timeout or the time left, if shorter.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from filter.config import LearnConfig
from filter.spamd import SpamdClient, SpamdError, encode_tell
from mailgate.bounds import Deadline

Teacher = Callable[[bytes, str, bool], str]  # (message, class, forget) -> result text
BatchTeacher = Callable[[Sequence[bytes], str], int]  # (messages, class) -> newly learned


def _within(deadline: Deadline | None, timeout: float) -> float:
    return timeout if deadline is None else deadline.cap(timeout)


def spamd_teacher(
    cfg: LearnConfig, spamd_address: str, user: str = "", deadline: Deadline | None = None
) -> Teacher:
    """Teach through spamd's TELL (spamd must run with --allow-tell).

    ``user``: [spamd] user, so TELL trains the Bayes database SYMBOLS scores with.
    """
    client = SpamdClient(spamd_address, timeout=cfg.timeout)

    def teach(message: bytes, klass: str, forget: bool) -> str:
        client.timeout = _within(deadline, cfg.timeout)  # read by each exchange
        request = encode_tell(message, klass, remove=forget, user=user)
        response = asyncio.run(client.exchange(request))
        if response.code != 0:
            raise SpamdError("protocol", f"TELL refused: {response.code} {response.message}")
        done = response.headers.get("didremove" if forget else "didset", "")
        return "learned" if done else "already"

    return teach


def sa_learn_teacher(cfg: LearnConfig, deadline: Deadline | None = None) -> Teacher:
    """Teach with sa-learn on a local Bayes database (no spamd needed)."""

    def teach(message: bytes, klass: str, forget: bool) -> str:
        with tempfile.NamedTemporaryFile(prefix="learn-", suffix=".eml") as fh:
            fh.write(message)
            fh.flush()
            # --max-size=0: by default sa-learn skips a message over 500 KB and exits 1
            # with nothing on stderr; TELL has no such limit (SpamAssassin bounds the
            # text it tokenizes per part itself).
            argv = ["sa-learn", "--forget" if forget else f"--{klass}", "--max-size=0"]
            if cfg.sa_learn_dbpath:
                argv += ["--dbpath", cfg.sa_learn_dbpath]
            argv.append(fh.name)
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=_within(deadline, cfg.timeout),
                check=False,
            )  # fmt: skip
        if done.returncode != 0:
            reason = (done.stderr.strip() or done.stdout.strip())[:200]
            raise SpamdError("protocol", f"sa-learn failed (exit {done.returncode}): {reason}")
        return "already" if "Learned tokens from 0 message" in done.stdout else "learned"

    return teach


_LEARNED = re.compile(rb"Learned tokens from (\d+) message")


def sa_learn_batch_teacher(cfg: LearnConfig, deadline: Deadline | None = None) -> BatchTeacher:
    """Teach a whole batch with one sa-learn run (it takes about 0.6 s just to start)."""

    def teach_many(messages: Sequence[bytes], klass: str) -> int:
        with tempfile.TemporaryDirectory(prefix="learn-") as folder:
            for n, message in enumerate(messages):
                (Path(folder) / f"{n:06d}.eml").write_bytes(message)
            argv = ["sa-learn", f"--{klass}", "--max-size=0"]
            if cfg.sa_learn_dbpath:
                argv += ["--dbpath", cfg.sa_learn_dbpath]
            argv.append(folder)
            timeout = _within(deadline, cfg.timeout * len(messages))
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if done.returncode != 0:
            reason = (done.stderr.strip() or done.stdout.strip())[:200].decode(errors="replace")
            raise SpamdError("protocol", f"sa-learn failed (exit {done.returncode}): {reason}")
        found = _LEARNED.search(done.stdout)
        return int(found.group(1)) if found else 0

    return teach_many
