"""What a user does in the portal: list, filter, page, preview, release, ask, delete, allow."""

from __future__ import annotations

import logging

import pytest

from filter.portal import web
from filter.qstore import Actor, Query
from filter.smtp_out import Reply
from tests.filter.portal.conftest import World, login

ALICE, BOB = "alice@example.com", "bob@example.com"


def test_the_list_shows_date_sender_subject_category_and_score(world: World) -> None:
    """Each row: when, from whom, the subject (a link to the preview), category and score."""
    entry = world.hold([ALICE], sender="deals@shop.example", subject="50% off")
    client = world.client()
    login(client, ALICE)
    page = client.get("/messages").text
    for text in ("2023-11-14", "deals@shop.example", "50% off", "spam", "9.0"):
        assert text in page
    assert f'href="/messages/{entry.id}"' in page


def test_the_list_filters_by_category(world: World) -> None:
    """?category=virus shows only viruses; an unknown category shows everything."""
    world.hold([ALICE], category="spam", subject="spammy one")
    world.hold([ALICE], category="virus", subject="infected one")
    client = world.client()
    login(client, ALICE)
    only = client.get("/messages?category=virus").text
    assert "infected one" in only
    assert "spammy one" not in only
    every = client.get("/messages?category=nonsense").text
    assert "infected one" in every
    assert "spammy one" in every


def test_the_list_pages_newest_first(world: World) -> None:
    """page_size rows a page, newest first; the next-page link leads to the older ones."""
    for n in range(7):
        world.hold([ALICE], subject=f"message {n}", at=1_700_000_000.0 + n)
    client = world.client()
    login(client, ALICE)
    first = client.get("/messages").text
    assert "7 messages" in first
    assert all(f"message {n}" in first for n in range(2, 7))
    assert "message 1" not in first
    link = first.split('<a href="')[-1].split('"')[0].replace("&amp;", "&")
    second = client.get(link).text
    assert "message 1" in second
    assert "message 0" in second
    assert "message 6" not in second


def test_a_list_past_the_count_cap_says_more_than(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past COUNT_CAP entries the page says "More than N messages" rather than counting all."""
    monkeypatch.setattr(web, "COUNT_CAP", 3)
    for n in range(5):
        world.hold([ALICE], subject=f"message {n}", at=1_700_000_000.0 + n)
    client = world.client()
    login(client, ALICE)
    assert "More than 3 messages" in client.get("/messages").text
    world.hold([ALICE], category="virus", subject="one virus")
    assert "1 message (" in client.get("/messages?category=virus").text


def test_a_user_releases_spam_to_themselves_once(world: World) -> None:
    """Release re-injects to the user alone, with the original sender; a second is refused."""
    entry = world.hold([ALICE])
    client = world.client()
    token = login(client, ALICE)
    done = client.post(f"/messages/{entry.id}/release", data={"csrf": token})
    assert 303 == done.status_code
    assert 1 == len(world.sender.sent)
    assert ("spammer@example.net", [ALICE]) == (
        world.sender.sent[0].mail_from,
        world.sender.sent[0].recipients,
    )
    page = client.get(done.headers["location"]).text
    assert "released to you" in page
    again = client.post(f"/messages/{entry.id}/release", data={"csrf": token})
    assert 409 == again.status_code
    assert "already released" in again.text
    assert 1 == len(world.sender.sent)


def test_a_failed_release_says_try_later_and_can_be_tried_again(world: World) -> None:
    """Re-injection refusing is "try again later"; the entry stays releasable."""
    entry = world.hold([ALICE])
    world.sender.data_reply = Reply(451, "4.3.0 busy")
    client = world.client()
    token = login(client, ALICE)
    failed = client.post(f"/messages/{entry.id}/release", data={"csrf": token})
    assert 503 == failed.status_code
    assert "try again later" in failed.text
    world.sender.data_reply = Reply(250, "2.0.0 Ok")
    assert 303 == client.post(f"/messages/{entry.id}/release", data={"csrf": token}).status_code


@pytest.mark.parametrize("category", ["virus", "banned", "unchecked"])
def test_dangerous_categories_offer_asking_an_administrator(world: World, category: str) -> None:
    """Virus, banned and unchecked mail cannot be released by the user, only asked for."""
    entry = world.hold([ALICE], category=category)
    client = world.client()
    token = login(client, ALICE)
    page = client.get(f"/messages/{entry.id}").text
    assert "Release to me" not in page
    assert "Ask an administrator" in page
    refused = client.post(f"/messages/{entry.id}/release", data={"csrf": token})
    assert 403 == refused.status_code
    assert [] == world.sender.sent
    assert [] == world.store.get(entry.id).releases


def test_asking_records_the_request_and_tells_the_admins_once(world: World) -> None:
    """The request is stored (with the note) and [notices] admins get one mail; asking again
    sends nothing more."""
    entry = world.hold([ALICE], category="virus")
    client = world.client()
    token = login(client, ALICE)
    done = client.post(
        f"/messages/{entry.id}/request", data={"csrf": token, "note": "it is my invoice"}
    )
    assert 303 == done.status_code
    requests = world.store.release_requests()
    assert [(entry.id, ALICE, "it is my invoice")] == [(r.entry.id, r.by, r.note) for r in requests]
    assert 1 == len(world.sender.sent)
    notice = world.sender.sent[0]
    assert ["postmaster@example.com"] == notice.recipients
    assert entry.id.encode() in notice.data
    assert b"it is my invoice" in notice.data
    assert "You asked an administrator" in client.get(f"/messages/{entry.id}").text
    client.post(f"/messages/{entry.id}/request", data={"csrf": token})
    assert 1 == len(world.sender.sent)


def test_a_user_deletes_their_own_message(world: World) -> None:
    """Delete removes the entry; it is gone from the list and the store."""
    entry = world.hold([ALICE])
    client = world.client()
    token = login(client, ALICE)
    done = client.post(f"/messages/{entry.id}/delete", data={"csrf": token})
    assert "/messages?done=deleted" == done.headers["location"]
    assert 0 == world.store.count(Query())
    assert 404 == client.get(f"/messages/{entry.id}").status_code


def test_a_shared_message_is_neither_deleted_nor_released_by_one_recipient(world: World) -> None:
    """Held for Alice and Bob: Alice may only ask; Bob's copy is not hers to delete or spend."""
    entry = world.hold([ALICE, BOB])
    client = world.client()
    token = login(client, ALICE)
    page = client.get(f"/messages/{entry.id}").text
    assert "Release to me" not in page
    assert "Delete" not in page
    assert "and others" in page
    assert 403 == client.post(f"/messages/{entry.id}/delete", data={"csrf": token}).status_code
    assert 403 == client.post(f"/messages/{entry.id}/release", data={"csrf": token}).status_code
    assert 1 == world.store.count(Query())
    assert [] == world.sender.sent


def test_allowing_a_sender_adds_an_allow_entry_for_the_user_only(world: World) -> None:
    """ "Always accept" records (user, envelope sender); it is listed and can be removed."""
    entry = world.hold([ALICE], sender="News@Shop.example")
    client = world.client()
    token = login(client, ALICE)
    assert 303 == client.post(f"/messages/{entry.id}/allow", data={"csrf": token}).status_code
    assert world.store.is_allowed(ALICE, ["news@shop.example"])
    assert not world.store.is_allowed(BOB, ["news@shop.example"])
    page = client.get("/allowed").text
    assert "news@shop.example" in page
    client.post("/allowed/remove", data={"csrf": token, "sender": "news@shop.example"})
    assert not world.store.is_allowed(ALICE, ["news@shop.example"])


def test_a_login_without_domain_sees_the_default_domains_mail(world: World) -> None:
    """With default_domain, login "alice" is alice@<domain> for the quarantine."""
    from dataclasses import replace

    world.portal.cfg = replace(world.portal.cfg, default_domain="example.com")
    world.saslimap.passwords["alice"] = "alice pw"
    world.hold([ALICE], subject="found by domain")
    client = world.client()
    login(client, "alice", "alice pw")
    assert "found by domain" in client.get("/messages").text


def test_every_action_writes_one_audit_line_with_who_and_where(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Login, show, release, logout: one filter.audit line each, naming user and address."""
    caplog.set_level(logging.INFO, logger="filter.audit")
    entry = world.hold([ALICE])
    client = world.client()
    token = login(client, ALICE)
    client.get(f"/messages/{entry.id}")
    client.post(f"/messages/{entry.id}/release", data={"csrf": token})
    client.post("/logout", data={"csrf": token})
    lines = [r.getMessage() for r in caplog.records if r.name == "filter.audit"]
    actions = [line.split("action=")[1].split()[0] for line in lines]
    assert ["login", "show", "release", "logout"] == actions
    assert all("by=alice@example.com from=testclient" in line for line in lines)


def test_released_elsewhere_names_no_other_address(world: World) -> None:
    """An entry an administrator released to someone else shows only that it was released."""
    entry = world.hold([ALICE], category="virus")
    claim = world.store.claim_release(entry.id, Actor("admin", "local"), ["it@example.com"])
    world.store.confirm_release(claim, ["it@example.com"], "250 ok")
    client = world.client()
    login(client, ALICE)
    page = client.get(f"/messages/{entry.id}").text
    assert "Released" in page
    assert "it@example.com" not in page
