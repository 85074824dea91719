"""Address lookups in amavisd-new's order, and the list files that use them.

This module owns two things, both pure:

- :func:`lookup_keys`: the keys an address is looked up under, most specific
  first, as amavisd-new does for hash lookups: ``user+ext@sub.dom``,
  ``user@sub.dom``, ``user+ext@``, ``user@``, ``sub.dom``, ``.sub.dom``,
  ``.dom``, ``.`` (every parent domain with a leading dot, then the catch-all).
  A bare ``sub.dom`` entry matches that domain only; ``.sub.dom`` matches it and
  every subdomain.
- :class:`AddressList`: a plain text file, one entry per line, ``#`` comments;
  each line is ``SENDER`` or ``SENDER RECIPIENT`` (the entry applies only to
  recipients matching RECIPIENT; without it, to everyone).  A bad line raises
  :class:`ListError` naming the file and line number.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class ListError(ValueError):
    """A list file could not be read or has a bad line; the message names file and line."""


def split_address(address: str) -> tuple[str, str, str]:
    """(user, extension, domain), lower-cased; the extension is after the first ``+``."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        local, domain = domain, ""
    user, plus, ext = local.partition("+")
    return user.lower(), (plus + ext).lower(), domain.lower().rstrip(".")


def lookup_keys(address: str) -> list[str]:
    """The keys to try for ``address``, most specific first."""
    user, ext, domain = split_address(address)
    keys: list[str] = []
    if ext:
        keys.append(f"{user}{ext}@{domain}")
    keys.append(f"{user}@{domain}")
    if ext:
        keys.append(f"{user}{ext}@")
    keys.append(f"{user}@")
    if domain:
        keys.append(domain)
        labels = domain.split(".")
        keys += ["." + ".".join(labels[i:]) for i in range(len(labels))]
    keys.append(".")
    return keys


def _check_entry(entry: str) -> str:
    entry = entry.strip().lower()
    if not entry or any(c.isspace() or not c.isprintable() for c in entry) or entry.count("@") > 1:
        raise ValueError(f"not an address, user@, domain or .domain: {entry!r}")
    return entry


def matches(address: str, entries: frozenset[str]) -> bool:
    """Whether any lookup key of ``address`` is in ``entries``."""
    return any(key in entries for key in lookup_keys(address))


@dataclass(frozen=True)
class AddressList:
    """Sender entries, each for every recipient or for recipients matching a pattern."""

    name: str
    for_everyone: frozenset[str] = frozenset()
    per_recipient: tuple[tuple[str, frozenset[str]], ...] = ()  # (recipient entry, senders)

    @classmethod
    def parse(cls, name: str, lines: Iterable[str]) -> AddressList:
        """Parse list text; ``name`` (usually the path) appears in error messages."""
        everyone: set[str] = set()
        by_rcpt: dict[str, set[str]] = {}
        for number, raw in enumerate(lines, 1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            fields = text.split()
            try:
                if len(fields) > 2:
                    raise ValueError("expected SENDER or SENDER RECIPIENT")
                sender = _check_entry(fields[0])
                if len(fields) == 2:
                    by_rcpt.setdefault(_check_entry(fields[1]), set()).add(sender)
                else:
                    everyone.add(sender)
            except ValueError as err:
                raise ListError(f"{name}:{number}: {err}") from None
        return cls(
            name,
            frozenset(everyone),
            tuple((rcpt, frozenset(senders)) for rcpt, senders in by_rcpt.items()),
        )

    @classmethod
    def load(cls, path: Path) -> AddressList:
        """Read a list file."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ListError(f"{path}: cannot read ({err})") from err
        return cls.parse(str(path), text.splitlines())

    def contains(self, sender: str, recipient: str = "") -> bool:
        """Whether ``sender`` is listed for ``recipient`` (or for everyone)."""
        if matches(sender, self.for_everyone):
            return True
        rcpt_keys = lookup_keys(recipient) if recipient else []
        return any(
            rcpt in rcpt_keys and matches(sender, senders) for rcpt, senders in self.per_recipient
        )

    def lists_recipient(self, recipient: str) -> bool:
        """For recipient lists (spam lovers): whether ``recipient`` is listed."""
        return matches(recipient, self.for_everyone)
