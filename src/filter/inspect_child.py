"""The inspection of a large message, in a child process: ``python -m filter.inspect_child``.

A message over ``server.spool_threshold`` stays on disk so the daemon's memory
stays bounded, but its inspection must read all of it the way mail clients do:
every reading of an ambiguous structure, every signature wherever it stands.
A bounded view of the structure cannot promise that (a hostile review found
eight shapes it missed), so the same :func:`filter.banned.inspect` the small
path uses runs here, in a child that reads the message on its standard input
and prints its verdict as one JSON line.  Its memory goes back to the system
when it exits, the daemon runs few of them at once, and it is killed at a
deadline: whatever goes wrong, the answer is ``unchecked``, never clean.

This module owns both sides: :func:`inspect_spooled` (the daemon's) and
:func:`main` (the child's).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence

from filter.banned import Inspection, inspect
from filter.findings import Limits
from filter.spool import Spool

log = logging.getLogger(__name__)

# Children at once: each may hold a few times its message in memory while it walks.
CHILDREN = 2
# Seconds beyond the inspection's own limit for the child to start and answer.
STARTUP_SLACK = 15.0


async def inspect_spooled(
    spool: Spool,
    names: Sequence[str],
    types: Sequence[str],
    limits: Limits,
    slots: asyncio.Semaphore,
) -> Inspection:
    """:func:`filter.banned.inspect` of a spooled message, run in a child process.

    ``slots`` bounds the children at once (:data:`CHILDREN`, held by the caller).
    """
    request = json.dumps(
        {"names": list(names), "types": list(types), "limits": dataclasses.asdict(limits)}
    )
    deadline = limits.max_seconds + STARTUP_SLACK
    async with slots:
        # The child reads the file through our descriptor from its start; everything
        # else reads the spool by position (pread), so the shared offset is free.
        os.lseek(spool.fd, 0, os.SEEK_SET)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "filter.inspect_child", request,
            stdin=spool.fd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), deadline)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            return Inspection(unchecked=f"inspection took longer than {deadline:g} s")
        except BaseException:  # cancelled (the message's deadline): no child left behind
            _kill(proc)
            raise
    try:
        answer = json.loads(out)
        found = Inspection(banned=str(answer["banned"]), unchecked=str(answer["unchecked"]))
    except (ValueError, KeyError, TypeError):
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        log.warning("inspection child failed (exit %s): %s", proc.returncode, tail[0][:200])
        return Inspection(unchecked=f"could not be parsed (inspection exit {proc.returncode})")
    return found


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def main() -> int:
    """The child: message on stdin, request as the one argument, verdict as JSON on stdout."""
    request = json.loads(sys.argv[1])
    data = sys.stdin.buffer.read()
    try:
        found = inspect(
            data, request["names"], request["types"], limits=Limits(**request["limits"])
        )
    except Exception as err:  # any failure is a verdict too: unchecked, never clean
        found = Inspection(unchecked=f"could not be parsed ({type(err).__name__})")
    print(json.dumps({"banned": found.banned, "unchecked": found.unchecked}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
