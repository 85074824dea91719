"""Per-client-address brute-force limits, possible only where Postfix tells us the address.

This module owns the per-IP policy of the Dovecot-protocol listener (the
saslauthd protocol carries no client address):

- failures are counted per address (IPv6 per /64), as distinct wrong passwords
  (HMACs): a phone retrying the same wrong password does not make it worse;
- each counted failure raises a penalty, a delay before the FAIL answer
  (``base_delay`` doubling up to ``max_delay``), as Dovecot does;
- at ``budget`` failures within ``window`` the address gets FAIL at once,
  without asking IMAP, until the window slides on;
- a successful login exempts the address for ``exempt_after_success`` seconds
  (an office NAT with one user's typo does not punish the others);
- addresses in ``trusted_networks`` are never limited.

Pure and clock-driven: no sockets, no sleeping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cachetools import TTLCache


def network_key(address: str) -> str:
    """The unit of limiting: the IPv4 address, or the IPv6 /64 it is in."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address  # not an address (unix socket, "unknown"): counted as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class Decision:
    """What to do with a request from an address."""

    allowed: bool  # False: answer FAIL without asking IMAP
    penalty: float  # seconds to wait before a FAIL answer


class IpLimiter:
    """Failure counts, penalties and exemptions per client network."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        budget: int = 30,
        window: float = 900.0,
        base_delay: float = 1.0,
        max_delay: float = 15.0,
        exempt_after_success: float = 3600.0,
        trusted_networks: Sequence[str] = (),
        max_tracked: int = 100_000,
    ) -> None:
        self.clock = clock
        self.budget = budget
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]
        self._failures: TTLCache[str, dict[bytes, float]] = TTLCache(
            max_tracked, window, timer=clock
        )
        self._exempt: TTLCache[str, bool] = TTLCache(
            max_tracked, exempt_after_success or 1e-9, timer=clock
        )
        self._exempt_enabled = exempt_after_success > 0

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def _count(self, key: str) -> int:
        seen = self._failures.get(key)
        if not seen:
            return 0
        cutoff = self.clock() - self.window
        return sum(1 for t in seen.values() if t > cutoff)

    def decide(self, address: str) -> Decision:
        """Whether to ask IMAP for this address, and the penalty if the answer is FAIL."""
        if not address or self._trusted(address):
            return Decision(True, 0.0)
        key = network_key(address)
        if key in self._exempt:
            return Decision(True, 0.0)
        failures = self._count(key)
        if self.budget and failures >= self.budget:
            return Decision(False, self.max_delay)
        return Decision(True, self.penalty(failures))

    def penalty(self, failures: int) -> float:
        """Delay for an address with ``failures`` counted failures: 0, then doubling."""
        if failures <= 0 or self.base_delay <= 0:
            return 0.0
        return float(min(self.max_delay, self.base_delay * 2 ** (failures - 1)))

    def failed(self, address: str, password_digest: bytes) -> None:
        """Count a wrong password from this address (a repeat of the same one is free)."""
        if not address or self._trusted(address):
            return
        key = network_key(address)
        if key in self._exempt:
            return
        seen = self._failures.get(key) or {}
        seen[password_digest] = self.clock()
        self._failures[key] = seen

    def succeeded(self, address: str) -> None:
        """A right password from this address: forgive and exempt it for a while."""
        if not address:
            return
        key = network_key(address)
        self._failures.pop(key, None)
        if self._exempt_enabled:
            self._exempt[key] = True
