"""Which quarantine store a configuration names: the one place the choice is made.

This module owns turning ``[quarantine]`` into a :class:`filter.qstore.QuarantineStore`:
the directory store when ``store`` is "" (one host), :class:`filter.qpg.PostgresStore`
when it is a ``postgresql://`` URL (shared by every host).  The filter daemon, the
portal, the CLI and the digest all open their store here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from filter.config import ConfigError, QuarantineConfig
from filter.qdir import DirectoryStore
from filter.qstore import QuarantineStore, Query, Skip, ignore
from filter.quarantine import Entry, QuarantineError

log = logging.getLogger(__name__)

# The largest page the stores serve: what the CLI's list walks in.
PAGE = 1000


def open_store(cfg: QuarantineConfig, busy_timeout: float = 5.0) -> QuarantineStore:
    """The configured store; nothing is connected yet (the first call does that).

    ``busy_timeout`` is the directory index's wait for another writer. An
    unreadable ``password_file`` is a ConfigError (exit 78), as a bad key is.
    """
    if not cfg.store:
        return DirectoryStore(cfg.directory, busy_timeout)
    # Imported here: a single host on the directory store never loads the driver.
    from filter import qpg

    try:
        password = qpg.read_password(cfg.password_file)
    except QuarantineError as err:
        raise ConfigError(f"quarantine.password_file: {err}") from err
    return qpg.PostgresStore(cfg.store, password=password, ca_file=cfg.ca_file, timeout=cfg.timeout)


def check_at_start(cfg: QuarantineConfig) -> None:
    """At a daemon's start: refuse a database whose schema this code does not know.

    SchemaMismatch (an OSError: "cannot start", exit 1) if the schema is
    missing, older or newer.  A database that cannot be reached is only a
    warning: mail that needs no quarantine keeps flowing, holds answer 451
    until it is back.  Nothing to check for the directory store.
    """
    if not cfg.store:
        return
    from filter import qpg

    store = open_store(cfg)
    assert isinstance(store, qpg.PostgresStore)
    try:
        store.check()
    except qpg.SchemaMismatch:
        raise
    except qpg.StoreUnavailable as err:
        log.warning("%s; starting anyway: held mail is deferred (451) until it answers", err)
    finally:
        store.close()


def where(cfg: QuarantineConfig) -> str:
    """Where held mail is, for a message: the directory, or the database's URL (no password)."""
    return cfg.store or str(cfg.directory)


def entries(store: QuarantineStore, query: Query, on_skip: Skip = ignore) -> Iterator[Entry]:
    """Every entry matching ``query``, page by page (the CLI's list)."""
    cursor: str | None = None
    while True:
        page = store.search(query, PAGE, cursor, on_skip)
        yield from page.entries
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
