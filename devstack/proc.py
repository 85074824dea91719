"""Process and filesystem plumbing shared by the devstack launchers.

This module owns the details every daemon wrapper needs but none should
reimplement: reading pid files, deciding whether a pid is still a live
daemon, stopping it with a deadline, and checking that directories handed to
daemons are usable by the unprivileged users those daemons switch to.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "UNIX_PATH_MAX",
    "ChildLauncher",
    "Launcher",
    "check_config_path",
    "check_traversable",
    "check_unix_path",
    "child_pids",
    "is_running",
    "pids_matching",
    "read_pid",
    "run_checked",
    "stop_pid",
    "tail",
    "terminate",
]


class Launcher:
    """A daemon wrapper that is also a context manager: started on entry, stopped on exit."""

    def start(self) -> None:
        """Start the daemon and wait until it answers."""
        raise NotImplementedError

    def stop(self) -> object:
        """Stop the daemon (a no-op when it is not running)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ChildLauncher(Launcher):
    """A Launcher whose daemon stays in the foreground as our child process.

    Holding the ``Popen`` lets stop() wait on the child with waitpid, which
    returns only once it has exited and closed its sockets; polling /proc
    (stop_pid) would count an unreaped child, a zombie, as gone, and cannot
    tell it from a reused pid.
    """

    workdir: Path
    _process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Pid of the running daemon, or None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def _refuse_if_running(self, name: str) -> None:
        """Raise RuntimeError if the daemon is running: start() must not rewrite its files."""
        if self.pid is not None:
            raise RuntimeError(f"{name} already running in {self.workdir} (pid {self.pid})")

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        name: str,
        output: Path,
        append: bool = False,
        ready: Callable[[float], bool],
        deadline: float,
        logs: Sequence[Path],
        pause: float,
    ) -> None:
        """Start ``argv`` with stdout and stderr in ``output`` and wait until ``ready``.

        Arguments after ``ready`` are wait_until_ready()'s.  If it never is
        ready (or the wait is interrupted), stop() and re-raise.
        """
        with output.open("ab" if append else "wb") as out:
            self._process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C on pytest's terminal must not reach
                # the daemon before the fixture's stop() does.
                start_new_session=True,
            )
        try:
            wait_until_ready(
                self._process, ready, name=name, deadline=deadline, logs=logs, pause=pause
            )
        except BaseException:
            self.stop()
            raise

    def _reap(self, timeout: float) -> bool:
        """terminate() the child, if any, and forget it; True if it had to be killed."""
        process = self._process
        if process is None:
            return False
        killed = terminate(process, timeout)
        self._process = None
        return killed


def terminate(process: subprocess.Popen[Any], timeout: float = 10.0) -> bool:
    """SIGTERM a child we started and reap it; SIGKILL it after ``timeout`` seconds.

    Returns True if it had to be killed.  A child that already exited is only reaped.
    """
    if process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True
    return False


UNIX_PATH_MAX = 107
"""Longest usable AF_UNIX path in bytes (sun_path is 108 bytes with the NUL)."""

# Daemon configuration files (dovecot.conf, main.cf, smtpd.conf) have no
# portable quoting for whitespace, '#', '=' or ',', so paths written into them
# are restricted to characters that need none.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")


def read_pid(pid_file: Path) -> int | None:
    """Return the pid stored in ``pid_file``, or None if absent or unreadable."""
    try:
        text = pid_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def is_running(pid: int, *, cmdline_contains: str | None = None) -> bool:
    """True if ``pid`` is a live (non-zombie) process.

    Daemons detach and are reparented to pid 1, which on this machine is not
    a classic init and may take a while to reap them: a zombie counts as
    stopped.  ``cmdline_contains`` guards against pid reuse by requiring the
    process's command line to mention e.g. our configuration path.
    """
    proc = Path(f"/proc/{pid}")
    try:
        status = (proc / "stat").read_text(encoding="ascii", errors="replace")
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    # Field 3 of /proc/PID/stat is the state; the command name before it is
    # parenthesised and may itself contain spaces or parentheses.
    state = status.rpartition(")")[2].split()[:1]
    if state in (["Z"], ["X"]):
        return False
    if cmdline_contains is not None:
        return cmdline_contains.encode() in cmdline
    return True


def pids_matching(*markers: str) -> list[int]:
    """Pids of live processes whose command line contains every one of ``markers``."""
    wanted = [marker.encode() for marker in markers]
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if all(marker in cmdline for marker in wanted) and is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def child_pids(parent: int) -> list[int]:
    """Pids of live processes whose parent is ``parent``."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        # After the parenthesised command: state, ppid, ...
        fields = status.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(parent) and fields[0] not in ("Z", "X"):
            children.append(int(entry.name))
    return children


def stop_pid(
    pid: int,
    timeout: float,
    *,
    sig: signal.Signals = signal.SIGTERM,
    cmdline_contains: str | None = None,
) -> None:
    """Send ``sig`` to ``pid`` and wait until it is gone; SIGKILL after ``timeout``.

    Raises ``TimeoutError`` only if even SIGKILL did not end it within a second.
    """
    if not is_running(pid, cmdline_contains=cmdline_contains):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if _wait_gone(pid, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, 1.0):
        raise TimeoutError(f"pid {pid} survived SIGKILL")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def run_checked(
    argv: Sequence[str], *, what: str, log: Path | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a short control command; on failure raise with its output and the log tail.

    Output goes through temporary files, not pipes: ``dovecot`` and
    ``saslauthd`` daemonize, and the daemon inherits stdout/stderr, so a pipe
    would never reach EOF and ``subprocess.run(capture_output=True)`` would
    hang.  Several daemons report start-up errors only in their own log file,
    so the tail of ``log`` is attached to the exception.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        result = subprocess.run(
            list(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            check=False,
            # setsid: saslauthd signals its whole process group on SIGTERM,
            # and no daemon should share the caller's (pytest's) group.
            start_new_session=True,
        )
        out.seek(0)
        err.seek(0)
        completed = subprocess.CompletedProcess(
            result.args, result.returncode, out.read(), err.read()
        )
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).decode("utf-8", "replace").strip()
        extra = f"\n--- tail of {log} ---\n{tail(log)}" if log is not None else ""
        raise RuntimeError(
            f"{what} failed (exit {completed.returncode}): {' '.join(argv)}\n{detail}{extra}"
        )
    return completed


def tail(path: Path, lines: int = 20) -> str:
    """Last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return f"({err.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def check_unix_path(path: Path) -> None:
    """Raise ValueError if ``path`` is too long to bind or connect as AF_UNIX."""
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise ValueError(
            f"AF_UNIX path is {size} bytes, limit is {UNIX_PATH_MAX}: {path} "
            "(use a short directory such as tempfile.mkdtemp(dir='/tmp'))"
        )


def check_config_path(path: Path) -> None:
    """Raise ValueError if ``path`` cannot be written unquoted into a daemon config."""
    if not _SAFE_PATH.match(str(path)):
        raise ValueError(f"path must be absolute and use only [A-Za-z0-9._/+-]: {path!r}")


def check_traversable(directory: Path) -> None:
    """Raise PermissionError unless every ancestor of ``directory`` is o+x.

    Daemons drop to users such as ``postfix``, ``dovecot`` or ``nobody`` that
    own none of our directories, so they reach them only through the
    "others" permission bits.  pytest's ``tmp_path`` lives under a 0700
    directory, which makes every daemon fail with a confusing EACCES.
    """
    for ancestor in [directory, *directory.parents]:
        try:
            mode = ancestor.stat().st_mode
        except FileNotFoundError:
            continue  # created later by us, with the right mode
        if not mode & stat.S_IXOTH:
            raise PermissionError(
                f"{ancestor} is not searchable by other users (mode {stat.filemode(mode)}); "
                f"unprivileged daemon processes could not reach {directory}"
            )


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[float], bool],
    *,
    name: str,
    deadline: float,
    logs: Sequence[Path],
    pause: float = 0.01,
) -> None:
    """Poll ``ready(timeout)`` until it is True; raise with the logs' tails if the process
    exits first or ``deadline`` (a monotonic time) passes."""
    while not ready(max(0.05, deadline - time.monotonic())):
        code = process.poll()
        if code is not None or time.monotonic() >= deadline:
            tails = "".join(f"\n--- {p} ---\n{tail(p)}" for p in logs)
            what = f"exited with {code} during start-up" if code is not None else "did not answer"
            raise (RuntimeError if code is not None else TimeoutError)(f"{name} {what}{tails}")
        time.sleep(pause)
