"""TCP port allocation and readiness probes for devstack daemons.

This module owns the two questions every launcher asks: "which loopback port
can I give this daemon?" and "is it really serving yet?".  A listening socket
is not enough for the second one: Dovecot accepts connections within
milliseconds but sends its greeting only once its auth process is up, so we
wait for the protocol's first line instead.
"""

from __future__ import annotations

import socket
import ssl
import time

__all__ = ["LOOPBACK", "free_port", "wait_for_greeting"]

LOOPBACK = "127.0.0.1"
"""The only address devstack daemons ever bind to."""

# Between connection attempts: short enough that a start-up measurement is not
# dominated by polling, long enough not to spin a core while a daemon forks.
_RETRY_INTERVAL = 0.02


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it from the ephemeral range by binding port 0.  There is
    an unavoidable race between closing this socket and the daemon binding
    the port; daemons fail loudly ("Address already in use") if they lose it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_first_line(host: str, port: int, timeout: float, use_tls: ssl.SSLContext | None) -> bytes:
    """Connect once and return the first line the server sends (b"" on EOF)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        if use_tls is None:
            return raw.makefile("rb").readline(4096)
        # server_hostname makes the context check the certificate against the
        # address we dialled (an IP SAN for 127.0.0.1), like a real client.
        with use_tls.wrap_socket(raw, server_hostname=host) as tls:
            return tls.makefile("rb").readline(4096)


def wait_for_greeting(
    host: str,
    port: int,
    prefix: bytes,
    timeout: float,
    use_tls: ssl.SSLContext | None = None,
) -> None:
    """Connect repeatedly until the server's first line starts with ``prefix``.

    ``prefix`` is e.g. ``b"* OK"`` for IMAP or ``b"220"`` for SMTP.  With
    ``use_tls`` the TLS handshake (and so certificate verification) is part of
    the probe.  Raises ``TimeoutError`` naming the last thing seen.
    """
    deadline = time.monotonic() + timeout
    last: str = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"no greeting starting with {prefix!r} from {host}:{port} "
                f"within {timeout:.1f} s (last: {last})"
            )
        try:
            line = _read_first_line(host, port, remaining, use_tls)
        except ssl.SSLCertVerificationError:
            # A certificate problem will not fix itself by retrying.
            raise
        except OSError as err:  # refused, reset, timed out, TLS EOF...
            last = f"{type(err).__name__}: {err}"
        else:
            if line.startswith(prefix):
                return
            last = f"greeting {line!r}"
        time.sleep(min(_RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
