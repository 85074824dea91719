"""A logged-in IMAP session for reading and tidying folders (``mail-filter learn``).

Built on the one imapclient wrapper (:mod:`mailgate.imap`): the same URL forms,
TLS, AUTHENTICATE PLAIN / LOGIN with literals, and the same rule that no
library exception and no password leaves it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from mailgate.imap import ImapSettings, Session, open_session, unavailable


class Mailbox:
    """A logged-in IMAP session for reading and tidying folders (``mail-filter learn``).

    Typed calls over the few imapclient methods learning needs; every library
    failure becomes :class:`BackendUnavailable`.
    """

    def __init__(self, session: Session, password: str) -> None:
        self._session = session
        self._client = session.client
        self._password = password  # only to scrub it from error text

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, name)(*args, **kwargs)
        except Exception as err:
            raise unavailable(err, self._password) from None

    def select_folder(self, folder: str, readonly: bool = True) -> dict[bytes, Any]:
        """Select ``folder``; the server's answer (``b"UIDVALIDITY"``, ``b"EXISTS"`` ...)."""
        return dict(self._call("select_folder", folder, readonly=readonly))

    def search(self, criteria: Sequence[str]) -> list[int]:
        """UIDs matching ``criteria`` (imapclient's list form, e.g. ``["UID", "5:*"]``)."""
        return [int(u) for u in self._call("search", list(criteria))]

    def fetch(self, uids: Sequence[int], items: Sequence[bytes]) -> dict[int, dict[bytes, Any]]:
        """``items`` for each UID still there (an expunged UID is simply missing)."""
        return dict(self._call("fetch", list(uids), list(items)))

    def add_flags(self, uids: Sequence[int], flags: Sequence[bytes]) -> None:
        """Add flags (keywords) to messages."""
        self._call("add_flags", list(uids), list(flags))

    def move(self, uids: Sequence[int], folder: str) -> None:
        """Move messages to another folder (MOVE, or COPY + delete where not offered)."""
        self._call("move", list(uids), folder)

    def delete_messages(self, uids: Sequence[int]) -> None:
        """Flag messages deleted (gone at the next :meth:`expunge`)."""
        self._call("delete_messages", list(uids))

    def expunge(self) -> None:
        """Remove messages flagged deleted from the selected folder."""
        self._call("expunge")

    def logout(self) -> None:
        """Say LOGOUT and close the connection; never raises."""
        with contextlib.suppress(Exception):
            self._client.logout()
        self._session.close()


def open_mailbox(settings: ImapSettings, user: str, password: str) -> Mailbox:
    """Connect, secure, log in (AUTHENTICATE PLAIN, or LOGIN with literals): a Mailbox.

    Raises :class:`BackendUnavailable`, with kind ``auth`` when the credentials are
    refused; its text never carries the password.
    """
    session = open_session(settings)
    try:
        session.login(user, password, settings.mechanism)
    except BaseException:
        session.close()
        raise
    return Mailbox(session, password)
