"""An administrator in the portal: search, release anywhere, bulk delete, requests, chart."""

from __future__ import annotations

import re
import time

import pytest

from filter.qstore import Actor, Query
from tests.filter.portal.conftest import World, login

ADMIN, ALICE, BOB = "admin@example.com", "alice@example.com", "bob@example.com"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"a", "b", "c"}),
        ({"sender": "boss@"}, {"a"}),
        ({"recipient": "bob"}, {"b"}),
        ({"subject": "invoice"}, {"c"}),
        ({"category": "virus"}, {"b"}),
        ({"since": "2023-11-15"}, {"c"}),
        ({"until": "2023-11-14"}, {"a", "b"}),
    ],
)
def test_search_by_each_field(world: World, params: dict[str, str], expected: set[str]) -> None:
    """Sender, recipient, subject, category and a date range each narrow the list."""
    day = time.mktime((2023, 11, 14, 12, 0, 0, 0, 0, -1))
    held = {
        "a": world.hold([ALICE], sender="boss@corp.example", subject="Meeting", at=day),
        "b": world.hold([BOB], category="virus", subject="Photos", at=day + 60),
        "c": world.hold([ALICE], subject="Your invoice", at=day + 86400),
    }
    client = world.client()
    login(client, ADMIN)
    page = client.get("/admin", params=params).text
    assert expected == {name for name, e in held.items() if e.id in page}


def test_search_by_quarantine_id(world: World) -> None:
    """An id finds exactly that entry; a malformed id is refused."""
    one, other = world.hold([ALICE]), world.hold([BOB])
    client = world.client()
    login(client, ADMIN)
    page = client.get("/admin", params={"id": one.id}).text
    assert one.id in page
    assert other.id not in page
    assert 400 == client.get("/admin", params={"id": "../x"}).status_code


def test_admin_sees_every_recipient_and_every_header(world: World) -> None:
    """The admin's preview names all envelope recipients and shows Received lines."""
    raw = (
        b"Received: from evil.example by gw\r\nFrom: x@example.net\r\nTo: a@example.com\r\n"
        b"Subject: hi\r\n\r\nbody\r\n"
    )
    entry = world.hold([ALICE, BOB], message=raw)
    client = world.client()
    login(client, ADMIN)
    page = client.get(f"/admin/messages/{entry.id}").text
    assert "alice@example.com, bob@example.com" in page
    assert "from evil.example by gw" in page


def test_admin_releases_to_its_recipients(world: World) -> None:
    """Release without an address delivers to every envelope recipient, once."""
    entry = world.hold([ALICE, BOB], category="virus")
    client = world.client()
    token = login(client, ADMIN)
    done = client.post(f"/admin/messages/{entry.id}/release", data={"csrf": token})
    assert 303 == done.status_code
    assert [[ALICE, BOB]] == [s.recipients for s in world.sender.sent]
    again = client.post(f"/admin/messages/{entry.id}/release", data={"csrf": token})
    assert 409 == again.status_code
    assert "already released" in again.text
    assert 1 == len(world.sender.sent)


def test_admin_releases_to_a_given_address(world: World) -> None:
    """An address typed in the form is where it goes; a malformed one is refused."""
    entry = world.hold([ALICE], category="banned")
    client = world.client()
    token = login(client, ADMIN)
    bad = client.post(
        f"/admin/messages/{entry.id}/release", data={"csrf": token, "to": "x\r\nRCPT TO:<y>"}
    )
    assert 400 == bad.status_code
    assert [] == world.sender.sent
    client.post(f"/admin/messages/{entry.id}/release", data={"csrf": token, "to": "it@example.com"})
    assert [["it@example.com"]] == [s.recipients for s in world.sender.sent]


def test_admin_bulk_delete(world: World) -> None:
    """Selected entries go in one action; the others stay."""
    entries = [world.hold([ALICE]) for _ in range(3)]
    client = world.client()
    token = login(client, ADMIN)
    done = client.post("/admin/delete", data={"csrf": token, "id": [entries[0].id, entries[1].id]})
    assert 303 == done.status_code
    assert [entries[2].id] == [e.id for e in world.store.search(Query()).entries]


def test_the_queue_of_release_requests(world: World) -> None:
    """A user's request appears on the requests page until it is released."""
    entry = world.hold([ALICE], category="virus", subject="The contract")
    world.store.request_release(entry.id, Actor(ALICE, "192.0.2.7"), "please")
    client = world.client()
    token = login(client, ADMIN)
    page = client.get("/admin/requests").text
    assert "The contract" in page
    assert "192.0.2.7" in page
    assert "please" in page
    client.post(f"/admin/messages/{entry.id}/release", data={"csrf": token})
    assert "No open requests" in client.get("/admin/requests").text


def test_the_chart_is_a_server_drawn_svg_of_30_days(world: World) -> None:
    """/admin/stats embeds /admin/stats.svg: one bar per category and day, no script."""
    now = time.time()
    world.hold([ALICE], category="spam", at=now)
    world.hold([ALICE], category="virus", at=now)
    world.hold([BOB], category="spam", at=now - 86400 * 3)
    client = world.client()
    login(client, ADMIN)
    page = client.get("/admin/stats").text
    assert 'src="/admin/stats.svg"' in page
    svg = client.get("/admin/stats.svg")
    assert "image/svg+xml" == svg.headers["content-type"]
    assert 3 == len(re.findall(r"<rect [^>]*><title>", svg.text))  # bars; the legend has none
    assert "spam (2)" in svg.text
    assert "virus (1)" in svg.text
    assert "<script" not in svg.text
    assert "href" not in svg.text
