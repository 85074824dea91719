"""The digest's release links in the portal: a GET shows, only a POST releases, once."""

from __future__ import annotations

import logging
import time

import pytest

from filter.release_links import make_token
from tests.filter.portal.conftest import SECRET, World

ALICE = "alice@example.com"


def _token(world: World, entry_id: str, recipient: str = ALICE, days: float = 7) -> str:
    return make_token(SECRET, entry_id, recipient, int(time.time() + days * 86400))


def test_a_get_shows_the_message_and_releases_nothing(world: World) -> None:
    """A mail scanner fetching the link (GET) releases nothing; the page has a POST button."""
    entry = world.hold([ALICE], subject="<script>alert(1)</script>")
    page = world.client().get(f"/release/{_token(world, entry.id)}")
    assert 200 == page.status_code
    assert 'method="post"' in page.text
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;" in page.text
    assert [] == world.sender.sent


def test_the_post_releases_once_to_the_links_recipient(world: World) -> None:
    """The POST delivers to the recipient the link names, and a second POST is refused."""
    entry = world.hold([ALICE])
    client, token = world.client(), _token(world, entry.id)
    done = client.post(f"/release/{token}")
    assert 200 == done.status_code, done.text
    assert "on its way to alice@example.com" in done.text
    again = client.post(f"/release/{token}")
    assert 409 == again.status_code
    assert 1 == len(world.sender.sent)


def test_forged_expired_and_truncated_links_release_nothing(world: World) -> None:
    """A link with a changed byte, past its date or cut short is refused without sending."""
    entry = world.hold([ALICE])
    good = _token(world, entry.id)
    forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    expired = _token(world, entry.id, days=-1)
    client = world.client()
    for token in (forged, expired, good[:40], "x" * 2000):
        assert 400 == client.post(f"/release/{token}").status_code
        assert 400 == client.get(f"/release/{token}").status_code
    assert [] == world.sender.sent


def test_a_link_for_someone_else_or_a_virus_releases_nothing(world: World) -> None:
    """A link naming a recipient the message was not for, or a virus, is refused."""
    spam = world.hold(["bob@example.com"])
    virus = world.hold([ALICE], category="virus")
    client = world.client()
    assert 404 == client.get(f"/release/{_token(world, spam.id)}").status_code
    assert 409 == client.post(f"/release/{_token(world, spam.id)}").status_code
    assert 409 == client.post(f"/release/{_token(world, virus.id)}").status_code
    assert [] == world.sender.sent


def test_a_link_to_one_recipient_of_a_shared_message_releases_nothing(world: World) -> None:
    """Bob's link to a message held for Alice and Bob neither delivers nor uses up Alice's copy."""
    shared = world.hold([ALICE, "bob@example.com"])
    client = world.client()
    done = client.post(f"/release/{_token(world, shared.id, 'bob@example.com')}")
    assert 409 == done.status_code
    assert [] == world.sender.sent
    assert [] == world.store.get(shared.id).releases


def test_a_link_to_a_message_no_longer_held_writes_its_audit_line(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid link whose message was deleted is refused with one by=digest release audit line."""
    entry = world.hold([ALICE])
    token = _token(world, entry.id)
    world.store.delete(entry.id)
    caplog.set_level(logging.INFO, logger="filter.audit")
    assert 409 == world.client().post(f"/release/{token}").status_code
    lines = [r.getMessage() for r in caplog.records if r.name == "filter.audit"]
    assert 1 == len(lines), lines
    assert f"action=release id={entry.id} by=digest" in lines[0]
    assert "result=refused" in lines[0]
