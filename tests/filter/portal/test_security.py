"""The portal's security promises (issue 17 §7), over HTTP against the real app and store."""

from __future__ import annotations

import logging
import re
from html.parser import HTMLParser

import pytest
from starlette.testclient import TestClient

from filter.portal.web import build
from filter.qstore import Actor, Query
from filter.quarantine import Entry
from filter.release_links import make_token
from tests.filter.portal.conftest import World, csrf_of, login

ALICE, BOB = "alice@example.com", "bob@example.com"
SETUP = Actor("test", "local")

# Every way a user's request can name an entry.
ENTRY_ACTIONS = [
    ("get", "/messages/{id}"),
    ("post", "/messages/{id}/release"),
    ("post", "/messages/{id}/delete"),
    ("post", "/messages/{id}/request"),
    ("post", "/messages/{id}/allow"),
]


def _untouched(world: World, entry: Entry) -> None:
    """The entry is still held, unreleased, unrequested; nothing was sent or allowed."""
    now = world.store.get(entry.id)
    assert [] == now.releases
    assert [] == now.requests
    assert [] == world.sender.sent
    assert [] == world.store.allowed_senders(ALICE)


# Users see and touch only their own mail


def test_a_user_lists_only_messages_they_were_an_envelope_recipient_of(world: World) -> None:
    """Alice's list has her message and not Bob's; no other recipient's address appears."""
    mine = world.hold([ALICE], subject="For alice")
    world.hold([BOB], subject="For bob only")
    shared = world.hold([ALICE, "carol@example.com"], subject="For both")
    client = world.client()
    login(client, ALICE)
    page = client.get("/messages").text
    assert "For alice" in page
    assert shared.id in page
    assert "For bob only" not in page
    assert BOB not in page
    assert "carol@example.com" not in page
    assert mine.id in page


def test_a_shared_messages_preview_names_no_other_envelope_recipient(world: World) -> None:
    """The preview of a message held for Alice and a Bcc'd Carol never shows Carol's address."""
    raw = b"From: x@example.net\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    entry = world.hold([ALICE, "carol@example.com"], message=raw)
    client = world.client()
    login(client, ALICE)
    page = client.get(f"/messages/{entry.id}").text
    assert "body" in page
    assert "carol" not in page


@pytest.mark.parametrize(("method", "path"), ENTRY_ACTIONS)
def test_a_user_cannot_reach_another_users_message_by_its_id(
    world: World, method: str, path: str
) -> None:
    """Bob's message, named by its id in any action, is a 404 to Alice and stays as it was."""
    bobs = world.hold([BOB], subject="Bob's secret subject")
    client = world.client()
    token = login(client, ALICE)
    url = path.format(id=bobs.id)
    response = client.get(url) if method == "get" else client.post(url, data={"csrf": token})
    assert 404 == response.status_code
    assert "secret" not in response.text
    _untouched(world, bobs)
    assert [BOB] == world.store.get(bobs.id).recipients


@pytest.mark.parametrize(
    "query",
    [
        "?recipient=bob@example.com",
        "?recipient_contains=bob",
        "?address=bob@example.com",
        "?category=spam&recipient=bob@example.com",
        "?id={id}",
        "?cursor=9999999999.0:{id}",
    ],
)
def test_no_parameter_widens_a_users_list(world: World, query: str) -> None:
    """Parameters a user adds to the list page never show Bob's messages."""
    bobs = world.hold([BOB], subject="Bob's secret subject")
    client = world.client()
    login(client, ALICE)
    page = client.get("/messages" + query.format(id=bobs.id)).text
    assert "secret" not in page
    assert bobs.id not in page


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/admin?recipient=bob",
        "/admin/messages/{id}",
        "/admin/requests",
        "/admin/stats",
        "/admin/stats.svg",
    ],
)
def test_admin_pages_do_not_exist_for_users(world: World, path: str) -> None:
    """A user asking for any administrator page gets a 404 and none of Bob's data."""
    bobs = world.hold([BOB], subject="Bob's secret subject")
    client = world.client()
    login(client, ALICE)
    response = client.get(path.format(id=bobs.id))
    assert 404 == response.status_code
    assert "secret" not in response.text


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/admin/delete", {"id": "{id}"}),
        ("/admin/messages/{id}/release", {"to": "alice@example.com"}),
    ],
)
def test_admin_actions_do_nothing_for_users(world: World, path: str, form: dict[str, str]) -> None:
    """A user posting to an administrator's action, with a valid token, changes nothing."""
    bobs = world.hold([BOB])
    client = world.client()
    token = login(client, ALICE)
    data = {k: v.format(id=bobs.id) for k, v in form.items()} | {"csrf": token}
    assert 404 == client.post(path.format(id=bobs.id), data=data).status_code
    _untouched(world, bobs)


def test_ids_that_are_paths_or_odd_are_just_not_found(world: World) -> None:
    """Traversal, NUL and oversized ids in the path answer 404 without an error page of ours."""
    client = world.client()
    token = login(client, ALICE)
    for bad in ("..%2f..%2fetc%2fpasswd", "%00", "x" * 500, "ABC", "-"):
        assert client.get(f"/messages/{bad}").status_code == 404
        assert client.post(f"/messages/{bad}/release", data={"csrf": token}).status_code == 404


def test_an_allow_entry_is_always_for_the_users_own_address(world: World) -> None:
    """Removing an allow entry acts on the session's address, whatever the form names."""
    world.store.allow(BOB, "friend@example.net", SETUP)
    client = world.client()
    token = login(client, ALICE)
    client.post(
        "/allowed/remove",
        data={"csrf": token, "sender": "friend@example.net", "recipient": BOB},
    )
    assert ["friend@example.net"] == [a.sender for a in world.store.allowed_senders(BOB)]


# CSRF


@pytest.mark.parametrize(("method", "path"), [a for a in ENTRY_ACTIONS if a[0] == "post"])
@pytest.mark.parametrize("token", [None, "", "forged", "x" * 43])
def test_a_form_without_the_sessions_csrf_token_changes_nothing(
    world: World, method: str, path: str, token: str | None
) -> None:
    """Each action, posted without a valid token, answers 403 and leaves the entry alone."""
    entry = world.hold([ALICE])
    client = world.client()
    login(client, ALICE)
    data = {} if token is None else {"csrf": token}
    response = client.post(path.format(id=entry.id), data=data)
    assert 403 == response.status_code
    assert entry.id in {e.id for e in world.store.search(Query(recipient=ALICE)).entries}
    _untouched(world, entry)


def test_another_sessions_token_is_not_this_sessions(world: World) -> None:
    """Bob's valid CSRF token does not work in Alice's session."""
    entry = world.hold([ALICE])
    bob = world.client()
    bobs_token = login(bob, BOB)
    alice = world.client()
    login(alice, ALICE)
    assert 403 == alice.post(f"/messages/{entry.id}/delete", data={"csrf": bobs_token}).status_code
    _untouched(world, entry)


def test_admin_bulk_delete_needs_the_token(world: World) -> None:
    """An administrator's bulk delete without the token deletes nothing."""
    entries = [world.hold([ALICE]), world.hold([BOB])]
    client = world.client()
    login(client, "admin@example.com")
    response = client.post("/admin/delete", data={"id": [e.id for e in entries]})
    assert 403 == response.status_code
    assert 2 == world.store.count(Query())


def test_logout_needs_the_token(world: World) -> None:
    """A forged logout (a cross-site POST) does not end the session."""
    client = world.client()
    login(client, ALICE)
    assert 403 == client.post("/logout", data={"csrf": "nope"}).status_code
    assert 200 == client.get("/messages").status_code


def test_a_login_form_without_its_token_never_reaches_saslimap(world: World) -> None:
    """Login CSRF: a login posted without the pre-login token is refused before any check."""
    client = world.client()
    response = client.post("/login", data={"login": ALICE, "password": "alice pw"})
    assert 403 == response.status_code
    assert [] == world.saslimap.asked
    assert 303 == client.get("/messages").status_code  # not logged in


def test_actions_are_post_only(world: World) -> None:
    """A GET on an action's address is refused and changes nothing (link scanners follow GETs)."""
    entry = world.hold([ALICE])
    client = world.client()
    login(client, ALICE)
    for action in ("release", "delete", "request", "allow"):
        assert 405 == client.get(f"/messages/{entry.id}/{action}").status_code
    _untouched(world, entry)


def test_an_oversized_form_is_refused_unread(world: World) -> None:
    """A form body over the bound is refused with 413."""
    entry = world.hold([ALICE])
    client = world.client()
    token = login(client, ALICE)
    big = {"csrf": token, "note": "x" * 200_000}
    assert 413 == client.post(f"/messages/{entry.id}/request", data=big).status_code
    _untouched(world, entry)


# Hostile content comes out inert

PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "<svg onload=alert(1)>",
    "javascript:alert(1)",
    "</textarea><iframe src=//evil.example>",
    "{{7*7}}",
]


# The elements our templates use; a payload that became markup adds others or attributes.
OUR_TAGS = {
    "html", "head", "meta", "title", "link", "body", "header", "span", "nav", "a", "form",
    "input", "button", "main", "p", "h1", "h2", "label", "select", "option", "table", "thead",
    "tbody", "tr", "th", "td", "dl", "dt", "dd", "section", "pre", "ul", "li", "div",
}  # fmt: skip


class _Elements(HTMLParser):
    """Every element and attribute in a page, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            self.attributes.add(name)
            if name in ("href", "src", "action"):
                self.urls.append(value or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _inert(page: str, payload: str) -> None:
    """The page holds only our elements and local links; the payload is there as text."""
    found = _Elements()
    found.feed(page)
    assert found.tags <= OUR_TAGS, found.tags - OUR_TAGS
    assert not {a for a in found.attributes if a.startswith("on") or a == "style"}
    assert all(u.startswith("/") and not u.startswith("//") for u in found.urls), found.urls
    assert payload in "".join(found.text) or payload in page.replace("&#34;", '"')


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_subject_sender_and_body_are_escaped(world: World, payload: str) -> None:
    """A subject, sender, header and body carrying markup appear escaped on the list and preview."""
    encoded = payload.encode()
    raw = (
        b"From: " + encoded + b" <x@example.net>\r\nTo: alice@example.com\r\nSubject: " + encoded
        + b"\r\nX-Evil: " + encoded + b"\r\n\r\n" + encoded + b"\r\n"
    )  # fmt: skip
    entry = world.hold([ALICE], sender=f"{payload}@example.net", message=raw)
    client = world.client()
    login(client, ALICE)
    for page in (client.get("/messages").text, client.get(f"/messages/{entry.id}").text):
        _inert(page, payload)
    admin = world.client()
    login(admin, "admin@example.com")
    for page in (admin.get("/admin").text, admin.get(f"/admin/messages/{entry.id}").text):
        _inert(page, payload)


def test_html_parts_are_shown_as_text_never_rendered(world: World) -> None:
    """An HTML body's tags, scripts and styles are gone; its text and link targets remain."""
    raw = (
        b"From: x@example.net\r\nTo: alice@example.com\r\nSubject: html\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>body{background:url(//evil.example/t.gif)}</style>"
        b"<script>steal()</script></head><body><p>Dear customer</p>"
        b'<a href="https://phish.example/login">verify &amp; win</a>'
        b'<img src="https://evil.example/track.gif" alt="logo"></body></html>\r\n'
    )
    entry = world.hold([ALICE], message=raw)
    client = world.client()
    login(client, ALICE)
    page = client.get(f"/messages/{entry.id}").text
    assert "Dear customer" in page
    assert "verify &amp; win &lt;https://phish.example/login&gt;" in page
    assert "steal()" not in page
    assert "background:url" not in page
    assert 'src="https://evil.example' not in page
    assert '<a href="https://phish' not in page


def test_attachment_names_are_escaped_with_their_bidi_tricks_shown(world: World) -> None:
    """An attachment named with markup or a U+202E override is listed inert and visible."""
    raw = (
        b"From: x@example.net\r\nTo: alice@example.com\r\nSubject: files\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b\r\nContent-Type: application/octet-stream;"
        b' name="<img src=x onerror=alert(1)>.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nQUJDRA==\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe\r\n\r\n"
        b"MZ\r\n--b--\r\n"
    )
    entry = world.hold([ALICE], message=raw)
    client = world.client()
    login(client, ALICE)
    page = client.get(f"/messages/{entry.id}").text
    assert "&lt;img src=x onerror=alert(1)&gt;.pdf" in page
    assert "<img src=x" not in page
    assert "invoice\\u202efdp.exe" in page
    assert "\u202e" not in page


def test_every_page_carries_the_strict_headers(world: World) -> None:
    """CSP without script, nosniff, no referrer, no-store: on pages, errors and redirects."""
    entry = world.hold([ALICE])
    client = world.client()
    responses = [client.get("/login"), client.get("/messages"), client.get("/nowhere")]
    login(client, ALICE)
    responses += [client.get("/messages"), client.get(f"/messages/{entry.id}")]
    for response in responses:
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src" not in csp
        assert "frame-ancestors 'none'" in csp
        assert "form-action 'self'" in csp
        assert "base-uri 'none'" in csp
        assert "nosniff" == response.headers["x-content-type-options"]
        assert "no-referrer" == response.headers["referrer-policy"]
        assert "no-store" == response.headers["cache-control"]


def test_no_page_has_script_or_inline_style(world: World) -> None:
    """No script element, event handler or style attribute anywhere (CSP would block them)."""
    entry = world.hold([ALICE])
    client = world.client()
    pages = [client.get("/login").text]
    login(client, "admin@example.com")
    world.hold(["admin@example.com"])
    paths = ["/messages", "/allowed", "/admin", "/admin/requests", "/admin/stats"]
    pages += [client.get(p).text for p in [*paths, f"/admin/messages/{entry.id}"]]
    pages.append(client.get("/admin/stats.svg").text)
    for page in pages:
        assert "<script" not in page
        assert not re.search(r"\son[a-z]+=", page)
        assert " style=" not in page
        assert "<style" not in page


# Sessions


def _session_cookie(client: TestClient) -> str:
    return str(client.cookies.get("mgportal"))


def test_login_issues_a_new_session_id_whatever_the_browser_brought(world: World) -> None:
    """Cookies an attacker planted before login (fixation) are not what the login makes valid."""
    attacker = world.client()
    attacker.get("/login")
    pre = str(attacker.cookies.get("mgportal_pre"))
    victim = world.client()
    victim.cookies.set("mgportal_pre", pre, domain="testserver.local")
    victim.cookies.set("mgportal", "attacker-chosen-id", domain="testserver.local")
    page = victim.get("/login")
    done = victim.post(
        "/login", data={"login": ALICE, "password": "alice pw", "csrf": csrf_of(page.text)}
    )
    issued = next(c for c in done.headers.get_list("set-cookie") if c.startswith("mgportal="))
    assert "attacker-chosen-id" not in issued
    assert pre not in issued
    attacker.cookies.set("mgportal", "attacker-chosen-id", domain="testserver.local")
    assert 303 == attacker.get("/messages").status_code  # nothing the attacker holds works
    assert ALICE in victim.get("/messages").text


def test_a_session_cookie_is_useless_after_logout(world: World) -> None:
    """Logout deletes the server's row: the same cookie, replayed, is sent to the login page."""
    client = world.client()
    token = login(client, ALICE)
    cookie = _session_cookie(client)
    assert 303 == client.post("/logout", data={"csrf": token}).status_code
    replay = world.client()
    replay.cookies.set("mgportal", cookie)
    response = replay.get("/messages")
    assert 303 == response.status_code
    assert response.headers["location"].startswith("/login")


def test_an_idle_session_ends(world: World) -> None:
    """After session_idle seconds without a request, the session is gone."""
    client = world.client()
    login(client, ALICE)
    world.clock.advance(world.portal.cfg.session_idle - 1)
    assert 200 == client.get("/messages").status_code  # use renews it
    world.clock.advance(world.portal.cfg.session_idle)
    assert 303 == client.get("/messages").status_code


def test_a_session_ends_at_its_maximum_age_even_in_use(world: World) -> None:
    """Past session_max seconds since login, the session ends however busy."""
    client = world.client()
    login(client, ALICE)
    step = world.portal.cfg.session_idle / 2
    for _ in range(int(world.portal.cfg.session_max / step) - 1):
        world.clock.advance(step)
        assert 200 == client.get("/messages").status_code
    world.clock.advance(step)
    assert 303 == client.get("/messages").status_code


def test_a_tampered_cookie_is_no_session(world: World) -> None:
    """A cookie whose signature does not match (or that is unsigned) is not logged in."""
    client = world.client()
    login(client, ALICE)
    value = _session_cookie(client)
    for bad in (value[:-2] + "xx", value.split(".")[0], "a" * 500, ""):
        other = world.client()
        other.cookies.set("mgportal", bad)
        assert 303 == other.get("/messages").status_code


def test_cookies_are_httponly_strict_and_secure_under_tls(world: World) -> None:
    """Over HTTPS the session cookie is __Host-, Secure, HttpOnly, SameSite=Strict."""
    client = world.client("https://portal.example")
    page = client.get("/login")
    pre = page.headers["set-cookie"]
    assert pre.startswith("__Host-mgportal_pre=")
    done = client.post(
        "/login", data={"login": ALICE, "password": "alice pw", "csrf": csrf_of(page.text)}
    )
    cookies = done.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("__Host-mgportal="))
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert flag.lower() in session.lower()
    assert "domain" not in session.lower()
    assert "strict-transport-security" in done.headers


def test_cookies_over_plain_http_are_httponly_and_strict(world: World) -> None:
    """Behind a proxy on loopback (plain HTTP) the cookie is still HttpOnly and SameSite=Strict."""
    client = world.client()
    page = client.get("/login")
    done = client.post(
        "/login", data={"login": ALICE, "password": "alice pw", "csrf": csrf_of(page.text)}
    )
    session = next(c for c in done.headers.get_list("set-cookie") if c.startswith("mgportal="))
    assert "httponly" in session.lower()
    assert "samesite=strict" in session.lower()


# next= stays on this site

BAD_NEXT = [
    "//evil.example/",
    "/\\evil.example",
    "\\\\evil.example",
    "https://evil.example/",
    "javascript:alert(1)",
    "/messages\r\nSet-Cookie: x=y",
    "/\tevil",
    "evil.example",
    "///evil.example",
    "/%0d%0aLocation: https://evil.example",
]


@pytest.mark.parametrize("target", BAD_NEXT)
def test_next_never_redirects_off_site(world: World, target: str) -> None:
    """After login, a next= that could leave the site (or split the header) goes to /messages."""
    client = world.client()
    page = client.get("/login", params={"next": target})
    done = client.post(
        "/login",
        data={"login": ALICE, "password": "alice pw", "csrf": csrf_of(page.text), "next": target},
    )
    location = done.headers["location"]
    assert location.startswith("/")
    assert not location.startswith(("//", "/\\"))
    assert "\r" not in location
    assert "\n" not in location
    if target != "/%0d%0aLocation: https://evil.example":
        assert "/messages" == location


def test_next_to_a_local_page_is_followed(world: World) -> None:
    """A protected page asked for before login is where the login lands."""
    entry = world.hold([ALICE])
    client = world.client()
    first = client.get(f"/messages/{entry.id}")
    assert f"/login?next=/messages/{entry.id}" == first.headers["location"]
    page = client.get(first.headers["location"])
    done = client.post(
        "/login",
        data={
            "login": ALICE, "password": "alice pw", "csrf": csrf_of(page.text),
            "next": f"/messages/{entry.id}",
        },
    )  # fmt: skip
    assert f"/messages/{entry.id}" == done.headers["location"]


# Passwords


def test_a_wrong_password_says_so_and_logs_no_password(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """saslimap's NO is "wrong user name or password"; no log line holds the password."""
    caplog.set_level(logging.DEBUG)
    client = world.client()
    page = client.get("/login")
    done = client.post(
        "/login", data={"login": ALICE, "password": "s3cr3t-guess", "csrf": csrf_of(page.text)}
    )
    assert 200 == done.status_code
    assert "Wrong user name or password" in done.text
    assert "s3cr3t-guess" not in done.text
    assert "s3cr3t-guess" not in caplog.text
    assert "action=login by=alice@example.com from=testclient result=wrong" in caplog.text


def test_saslimap_unavailable_is_try_again_later_never_wrong_password(world: World) -> None:
    """When saslimap says "try later" (or is down) the page says so, with 503."""
    world.saslimap.down = True
    client = world.client()
    page = client.get("/login")
    done = client.post(
        "/login", data={"login": ALICE, "password": "alice pw", "csrf": csrf_of(page.text)}
    )
    assert 503 == done.status_code
    assert "try again later" in done.text
    assert "Wrong" not in done.text


def test_the_browsers_address_goes_to_saslimap(world: World) -> None:
    """saslimap is asked with the client's address, so its per-address budget applies."""
    client = world.client()
    login(client, ALICE)
    assert [(ALICE, "testclient")] == world.saslimap.asked


def test_an_internal_error_is_a_plain_page_with_the_same_headers(world: World) -> None:
    """A failing store gives a 500 page that says nothing of the error, with CSP and no-store."""

    def broken(*_args: object) -> object:
        raise RuntimeError("secret internals /var/lib/mail-filter")

    client = TestClient(build(world.portal), raise_server_exceptions=False, follow_redirects=False)
    login(client, ALICE)
    world.store.search = broken  # type: ignore[method-assign,assignment]
    response = client.get("/messages")
    assert 500 == response.status_code
    assert "secret internals" not in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "no-store" == response.headers["cache-control"]


def test_bidi_overrides_in_a_subject_are_escaped_on_every_page_that_lists_it(
    world: World,
) -> None:
    """U+202E in a subject is shown as \\u202e in the list, the message's title, the link page."""

    entry = world.hold([ALICE], subject="invoice\u202efdp.exe")
    client = world.client()
    login(client, ALICE)
    token = make_token(world.portal.link_secret, entry.id, ALICE, 2**40)
    for url in ("/messages", f"/messages/{entry.id}", f"/release/{token}"):
        page = client.get(url).text
        assert "\u202e" not in page, url
        assert "invoice\\u202efdp.exe" in page, url
