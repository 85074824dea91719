"""The quarantine store and its CLI against a hostile directory and hostile messages.

Real files in a temporary directory: symlinks, FIFOs, hard links and malformed
metadata planted the way a local user with write access could, and messages
carrying terminal control sequences the way a sender could.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from filter.quarantine import Entry, Store, new_id


def held(store: Store, message: bytes = b"Subject: hi\r\n\r\nbody\r\n", **fields: object) -> Entry:
    """A held message written as the filter writes one."""
    entry = Entry(
        new_id(), "virus", "Eicar-Test-Signature", "a@example.net", ["b@example.com"], 0.0, 3
    )
    for name, value in fields.items():
        setattr(entry, name, value)
    store.write(entry, message)
    return entry


# Writing


def test_a_planted_temporary_name_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink planted at the temporary name is not written through; its target is untouched."""
    store, victim = Store(tmp_path / "q"), tmp_path / "victim"
    victim.write_bytes(b"precious")
    entry = held(store)
    monkeypatch.setattr("filter.quarantine.secrets.token_hex", lambda _n: "f" * 16)
    (store.directory / f".{entry.id}.eml.{'f' * 16}.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        store.write(entry, b"overwritten")
    assert b"precious" == victim.read_bytes()
