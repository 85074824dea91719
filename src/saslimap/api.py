"""The public Python API: :class:`Verifier`, the check without the socket server.

It owns only assembly (config -> IMAP backend -> policy) and lifetime; the
policy lives in :mod:`saslimap.service` and the IMAP client in
:mod:`saslimap.imap`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import TracebackType

from saslimap.config import Config, ImapConfig, UsersConfig, parse_imap_url
from saslimap.imap import ImapBackend
from saslimap.service import Authenticator, Result


class Verifier:
    """Checks user names and passwords against an IMAP server.

    Use it as an async context manager (or call :meth:`close`) so its worker
    threads stop.  :meth:`verify` never raises for bad input or an outage: it
    returns a :class:`~saslimap.service.Result` whose ``verdict`` is ``OK``,
    ``NO`` or ``TEMPFAIL``.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._backend = ImapBackend.from_config(config.imap)
        self._auth = Authenticator(
            config.users, self._backend, cache=config.cache, limits=config.limits
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ca_file: str | Path | None = None,
        users: UsersConfig | None = None,
        connect_timeout: float = 5.0,
        response_timeout: float = 5.0,
    ) -> Verifier:
        """A verifier for ``imaps://``, ``imap://`` (STARTTLS) or ``imap+plaintext://`` URLs."""
        parse_imap_url(url)
        imap = ImapConfig(
            url=url,
            ca_file=Path(ca_file) if ca_file else None,
            connect_timeout=connect_timeout,
            response_timeout=response_timeout,
        )
        return cls(replace(Config(), imap=imap, users=users or UsersConfig()))

    async def verify(
        self,
        user: str | bytes,
        password: str | bytes,
        service: str | bytes = "",
        realm: str | bytes = "",
    ) -> Result:
        """Check one user name and password (realm joined as ``user@realm`` by default)."""
        return await self._auth.verify(user, password, service, realm)

    def close(self) -> None:
        """Release the worker threads and warm connections."""
        self._auth.close()
        self._backend.close()

    async def __aenter__(self) -> Verifier:
        self._backend.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
