"""The portal's pages and actions: a Starlette application over the quarantine store.

This module owns the HTTP side of the portal: routes, who may see and do
what, forms and their CSRF check, cookies, redirects, security headers and
rendering (Jinja2, every value escaped).  It knows the store only through
:class:`filter.qstore.QuarantineStore` and acts through :mod:`filter.qactions`
(release, delete, requests, allow entries: each with its audit line); it
knows passwords only as far as handing them to an :class:`filter.portal.auth.Checker`.

Rules every handler follows:

- A user's pages ask the store for entries with ``recipient`` = their own
  address, and every page or action naming an id first reads that entry and
  checks the user is one of its envelope recipients; one that is not theirs
  answers exactly like one that does not exist (404), so ids cannot be probed.
  No other recipient's address is ever put on a user's page.
- Every change is a POST with the session's CSRF token (compared in constant
  time); a GET never changes anything.  The login form has its own token,
  bound to a pre-login cookie.
- Nothing from a message is markup: templates autoescape, HTML bodies arrive
  as text (:mod:`filter.portal.preview`), and the Content-Security-Policy
  allows no script at all, only our stylesheet.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from filter import qactions, release_links
from filter.config import CATEGORIES, NoticesConfig, PortalConfig
from filter.notices import request_text
from filter.portal import chart
from filter.portal.auth import MAX_FIELD, Checker, Verdict
from filter.portal.preview import preview, shown
from filter.portal.redirects import local_path
from filter.portal.sessions import Session, Sessions, same
from filter.qstore import Actor, AlreadyReleased, QuarantineStore, Query
from filter.quarantine import Entry, NotFound, QuarantineError

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# A form is a few fields; an administrator's bulk delete at most a page of ids.
MAX_FORM_BYTES = 128 * 1024
MAX_FORM_FIELDS = 1100
MAX_BULK = 1000
MAX_NOTE = 500
CHART_DAYS = 30
# Lists count their entries up to this; past it they say "more than 10,000".
COUNT_CAP = 10_000
COOKIE = "mgportal"
PRE_COOKIE = "mgportal_pre"
# Messages after a redirect come from this fixed table, never from the URL's text.
DONE = {
    "released": "The message was released to you.",
    "released-admin": "The message was released.",
    "deleted": "Deleted.",
    "requested": "An administrator was asked to release the message.",
    "already-requested": "You already asked for this message; an administrator will look at it.",
    "allowed": "Mail from this sender to you will be accepted from now on.",
    "disallowed": "The sender was removed from your allowed senders.",
}
_LINK_REFUSED = {
    release_links.Refusal.MALFORMED: "This link is not complete; copy it whole from the message.",
    release_links.Refusal.FORGED: "This link is not valid.",
    release_links.Refusal.EXPIRED: "This link has expired; ask an administrator to release it.",
}
_ADDRESS = re.compile(r"[^\s<>,;\"\\@]{1,64}@[^\s<>,;\"\\@]{1,255}")


@dataclass
class Portal:
    """What the pages need: configuration, the store, re-injection, the password check, sessions."""

    cfg: PortalConfig
    notices: NoticesConfig
    hostname: str
    store: QuarantineStore
    sender: qactions.Sender
    checker: Checker
    sessions: Sessions
    link_secret: bytes = b""  # signs the digest's release links (the portal's key)


class Refused(Exception):
    """An action that is not done, with the text the page shows and its status."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.text = text
        self.status = status


# Rendering


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("filter.portal", "templates"),
        autoescape=True,  # every template, whatever its name: values are never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["score"] = lambda s: "" if s is None else f"{s:.1f}"
    env.filters["size"] = _size
    env.filters["label"] = lambda c: str(c).replace("_", " ")
    # A message's own one-line text (subject, sender) outside the preview: controls and
    # bidi overrides escaped there too, so "invoice\u202efdp.exe" reads as it is.
    env.filters["shown"] = shown
    return env


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


STYLESHEET = resources.files("filter.portal").joinpath("static/portal.css").read_bytes()


# Security headers, on every response


class SecurityHeaders:
    """ASGI middleware: CSP and friends everywhere, no-store on every page but the stylesheet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope.get("path") == "/static/portal.css"
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                    (b"cache-control", b"max-age=3600" if cacheable else b"no-store"),
                ]
                if https:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                names = {name for name, _ in extra}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# Building the application


def build(portal: Portal) -> ASGIApp:
    """The ASGI application for one configuration, its security headers outermost."""
    env = _environment()
    pages = Pages(portal, env)
    routes = [
        Route("/", pages.home, methods=["GET"]),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/static/portal.css", pages.stylesheet, methods=["GET"]),
        Route("/release/{token}", pages.link_form, methods=["GET"]),
        Route("/release/{token}", pages.link_release, methods=["POST"]),
        Route("/messages", pages.user(pages.messages), methods=["GET"]),
        Route("/messages/{entry_id}", pages.user(pages.message), methods=["GET"]),
        Route("/messages/{entry_id}/release", pages.user(pages.release), methods=["POST"]),
        Route("/messages/{entry_id}/request", pages.user(pages.request), methods=["POST"]),
        Route("/messages/{entry_id}/delete", pages.user(pages.delete), methods=["POST"]),
        Route("/messages/{entry_id}/allow", pages.user(pages.allow), methods=["POST"]),
        Route("/allowed", pages.user(pages.allowed), methods=["GET"]),
        Route("/allowed/remove", pages.user(pages.disallow), methods=["POST"]),
        Route("/admin", pages.admin(pages.search), methods=["GET"]),
        Route("/admin/messages/{entry_id}", pages.admin(pages.admin_message), methods=["GET"]),
        Route(
            "/admin/messages/{entry_id}/release",
            pages.admin(pages.admin_release),
            methods=["POST"],
        ),
        Route("/admin/delete", pages.admin(pages.admin_delete), methods=["POST"]),
        Route("/admin/requests", pages.admin(pages.requests), methods=["GET"]),
        Route("/admin/stats", pages.admin(pages.stats), methods=["GET"]),
        Route("/admin/stats.svg", pages.admin(pages.stats_svg), methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: pages.http_error, Exception: pages.server_error},
    )
    # Around everything, Starlette's own error middleware included: a 500 gets them too.
    return SecurityHeaders(app)


Handler = Callable[[Request, Session], Awaitable[Response]]


class Pages:
    """The handlers, sharing the portal's parts and the template environment."""

    def __init__(self, portal: Portal, env: jinja2.Environment) -> None:
        self.p = portal
        self.env = env

    # Read at each request: a reload (SIGHUP) replaces them in the Portal.
    @property
    def cfg(self) -> PortalConfig:
        return self.p.cfg

    @property
    def store(self) -> QuarantineStore:
        return self.p.store

    @property
    def sessions(self) -> Sessions:
        return self.p.sessions

    # -- plumbing ---------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        session: Session | None = None,
        **values: Any,
    ) -> HTMLResponse:
        page = self.env.get_template(template).render(
            session=session,
            path=request.url.path,
            categories=CATEGORIES,
            count_cap=COUNT_CAP,
            **values,
        )
        return HTMLResponse(page, status_code=status)

    @staticmethod
    def client(request: Request) -> str:
        """The browser's address (a trusted proxy's X-Forwarded-For is applied by uvicorn)."""
        return request.client.host if request.client else "unknown"

    def actor(self, request: Request, session: Session) -> Actor:
        return Actor(session.login, self.client(request))

    @staticmethod
    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def cookie_name(self, request: Request, name: str = COOKIE) -> str:
        # __Host-: the browser keeps it to this host, path /, Secure: no sibling sets it.
        return f"__Host-{name}" if self.secure(request) else name

    def set_cookie(self, response: Response, request: Request, name: str, value: str) -> None:
        response.set_cookie(
            self.cookie_name(request, name), value, path="/", httponly=True,
            samesite="strict", secure=self.secure(request),
        )  # fmt: skip

    def clear_cookie(self, response: Response, request: Request, name: str) -> None:
        response.delete_cookie(
            self.cookie_name(request, name), path="/", httponly=True,
            samesite="strict", secure=self.secure(request),
        )  # fmt: skip

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.lookup(request.cookies.get(self.cookie_name(request)))

    def user(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A page for any logged-in user; others go to the login page (nothing is done)."""

        async def endpoint(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                return self.to_login(request)
            # From the current list: a reload that removes an administrator takes effect now.
            session.admin = session.login in self.cfg.admins
            try:
                return await handler(request, session)
            except Refused as refused:
                return self.render(
                    request, "error.html", refused.status, session, text=refused.text
                )

        return endpoint

    def admin(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A page for administrators only; to anyone else it does not exist."""

        async def only_admins(request: Request, session: Session) -> Response:
            if not session.admin:
                raise Refused("No such page.", 404)
            return await handler(request, session)

        return self.user(only_admins)

    def to_login(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        where = "/login" if request.method != "GET" else f"/login?next={quote(target, safe='/')}"
        return RedirectResponse(where, status_code=303)

    async def form(self, request: Request, session: Session | None) -> FormData:
        """The posted form, bounded in size; its CSRF token checked against the session's."""
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise Refused("A form must say its length.", 411)
        if int(length) > MAX_FORM_BYTES:
            raise Refused("That form is too large.", 413)
        try:
            form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
        except HTTPException as err:
            raise Refused("That form could not be read.", 400) from err
        token = form.get("csrf")
        if session is not None and not (isinstance(token, str) and same(token, session.csrf)):
            qactions.audit("csrf", self.actor(request, session), "refused", path=request.url.path)
            raise Refused("The form has expired. Go back, reload the page and try again.", 403)
        return form

    @staticmethod
    def text(form: FormData, name: str, limit: int = 1000) -> str:
        value = form.get(name, "")
        return value[:limit] if isinstance(value, str) else ""

    def done(self, where: str, what: str) -> RedirectResponse:
        sep = "&" if "?" in where else "?"
        return RedirectResponse(f"{where}{sep}done={what}", status_code=303)

    @staticmethod
    def notice(request: Request) -> str:
        return DONE.get(request.query_params.get("done", ""), "")

    async def stylesheet(self, request: Request) -> Response:
        return Response(STYLESHEET, media_type="text/css")

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        text = "No such page." if exc.status_code == 404 else "That request is not allowed here."
        return self.render(request, "error.html", exc.status_code, None, text=text)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.error("portal: %s %s failed", request.method, request.url.path, exc_info=exc)
        return self.render(request, "error.html", 500, None, text="Something went wrong here.")

    # -- the store, in threads ----------------------------------------------

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    async def own_entry(self, request: Request, session: Session) -> tuple[Entry, str]:
        """The entry the path names and the user's address as it is spelled in it, or 404.

        An entry the user was no envelope recipient of answers as one that does
        not exist, and the attempt is audited.
        """
        entry_id = request.path_params["entry_id"]
        try:
            entry = await self.run(self.store.get, entry_id)
        except QuarantineError:
            entry = None
        mine = (
            next((r for r in entry.recipients if r.lower() == session.address), None)
            if entry is not None
            else None
        )
        if entry is None or mine is None:
            qactions.audit(
                "access", self.actor(request, session), "refused",
                id=entry_id[:80], why="not found or not a recipient",
            )  # fmt: skip
            raise Refused("No such message.", 404)
        return entry, mine

    # -- login and logout ----------------------------------------------------

    async def home(self, request: Request) -> Response:
        session = self.session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        return RedirectResponse("/messages", status_code=303)

    def login_page(
        self, request: Request, target: str, status: int = 200, error: str = "", login: str = ""
    ) -> Response:
        pre = self.sessions.pre_value(request.cookies.get(self.cookie_name(request, PRE_COOKIE)))
        cookie = None
        if pre is None:
            cookie = self.sessions.new_pre()
            pre = self.sessions.pre_value(cookie)
            assert pre is not None
        response = self.render(
            request, "login.html", status, csrf=self.sessions.login_csrf(pre),
            next=local_path(target, ""), error=error, login=login,
        )  # fmt: skip
        if cookie is not None:
            self.set_cookie(response, request, PRE_COOKIE, cookie)
        return response

    async def login_form(self, request: Request) -> Response:
        session = self.session_of(request)
        if session is not None:
            target = local_path(request.query_params.get("next"), "/messages")
            return RedirectResponse(target, status_code=303)
        return self.login_page(request, request.query_params.get("next", ""))

    async def login(self, request: Request) -> Response:
        try:
            form = await self.form(request, None)
        except Refused as refused:
            return self.render(request, "error.html", refused.status, text=refused.text)
        login = self.text(form, "login", 2 * MAX_FIELD).strip()
        password = self.text(form, "password", 2 * MAX_FIELD)
        target = local_path(self.text(form, "next"), "/messages")
        client = self.client(request)
        pre = self.sessions.pre_value(request.cookies.get(self.cookie_name(request, PRE_COOKIE)))
        token = self.text(form, "csrf", 200)
        if pre is None or not same(token, self.sessions.login_csrf(pre)):
            # Never asks saslimap: a login posted from another site, or an old form.
            qactions.audit("login", Actor(login[:MAX_FIELD], client), "refused", why="csrf")
            return self._login_again(request, target, 403, "The form has expired; try again.")
        if (
            not login or not password
            or len(login.encode()) > MAX_FIELD or len(password.encode()) > MAX_FIELD
            or not login.isprintable()
        ):  # fmt: skip
            qactions.audit("login", Actor(login[:MAX_FIELD], client), "wrong")
            return self._login_again(request, target, 200, "Wrong user name or password.", login)
        verdict = await self.p.checker.check(login, password, client)
        del password  # nothing below needs it
        actor = Actor(login, client)
        if verdict is Verdict.UNAVAILABLE:
            qactions.audit("login", actor, "unavailable")
            return self._login_again(
                request, target, 503,
                "The password check is not available right now. Please try again later.", login,
            )  # fmt: skip
        if verdict is Verdict.WRONG:
            qactions.audit("login", actor, "wrong")
            return self._login_again(request, target, 200, "Wrong user name or password.", login)
        name = login.lower()
        address = name if "@" in name or not self.cfg.default_domain else (
            f"{name}@{self.cfg.default_domain.lower()}"
        )  # fmt: skip
        previous = self.session_of(request)
        if previous is not None:
            self.sessions.end(previous)  # one browser, one session: the old cookie ends here
        session, cookie = self.sessions.create(name, address, name in self.cfg.admins)
        qactions.audit("login", actor, admin="yes" if session.admin else None)
        response = RedirectResponse(target, status_code=303)
        self.set_cookie(response, request, COOKIE, cookie)  # a new id: never the one brought
        self.clear_cookie(response, request, PRE_COOKIE)
        return response

    def _login_again(
        self, request: Request, target: str, status: int, error: str, login: str = ""
    ) -> Response:
        return self.login_page(
            request, target if target != "/messages" else "", status, error, login
        )

    async def logout(self, request: Request) -> Response:
        session = self.session_of(request)
        if session is not None:
            try:
                await self.form(request, session)
            except Refused as refused:
                return self.render(
                    request, "error.html", refused.status, session, text=refused.text
                )
            self.sessions.end(session)
            qactions.audit("logout", self.actor(request, session))
        response = RedirectResponse("/login", status_code=303)
        self.clear_cookie(response, request, COOKIE)
        return response

    # -- the digest's release links (no login: the signed link is the permission) ----

    async def link_form(self, request: Request) -> Response:
        """What a link would release, and a button: a GET never releases (mail scanners
        fetch every link in a message)."""
        token = request.path_params["token"]
        try:
            link = release_links.check_token(self.p.link_secret, token, time.time())
            entry = await self.run(self.store.get, link.entry_id)
        except release_links.LinkRefused as refused:
            return self._link_page(request, token, 400, error=_LINK_REFUSED[refused.reason])
        except QuarantineError:
            return self._link_page(request, token, 404, error="This message is not held any more.")
        if link.recipient.lower() not in (r.lower() for r in entry.recipients):
            return self._link_page(request, token, 404, error="This message is not held any more.")
        return self._link_page(request, token, entry=entry, recipient=link.recipient)

    async def link_release(self, request: Request) -> Response:
        """The link's POST: releases once, to the recipient the link names."""
        token = request.path_params["token"]
        try:
            # release_link checks the token and the entry itself, with an audit line each way.
            released = await qactions.release_link(
                self.store, self.p.sender, self.p.link_secret, token, self.client(request),
                self.cfg.user_release,
            )  # fmt: skip
            entry = released.entry
            recipient = ", ".join(released.release.to)
        except release_links.LinkRefused as refused:
            return self._link_page(request, token, 400, error=_LINK_REFUSED[refused.reason])
        except qactions.LinkUsed:
            return self._link_page(request, token, 409, error="This link was used already.")
        except AlreadyReleased as err:
            return self._link_page(
                request, token, 409, error=f"This message was released already ({err.first.when})."
            )
        except QuarantineError:
            return self._link_page(
                request, token, 409,
                error="This message cannot be released from here; ask an administrator.",
            )  # fmt: skip
        return self._link_page(
            request, token, entry=entry, recipient=recipient,
            done=f"Released: the message is on its way to {recipient}.",
        )  # fmt: skip

    def _link_page(
        self, request: Request, token: str, status: int = 200, **values: Any
    ) -> Response:
        values.setdefault("error", "")
        values.setdefault("done", "")
        values.setdefault("entry", None)
        values.setdefault("recipient", "")
        # The token goes back into the form only as path text, escaped by the template.
        return self.render(
            request, "link.html", status, self.session_of(request),
            token=quote(token, safe=""), **values,
        )  # fmt: skip

    # -- a user's own mail ---------------------------------------------------

    def _category(self, request: Request) -> str | None:
        wanted = request.query_params.get("category", "")
        return wanted if wanted in CATEGORIES else None

    async def _page(self, request: Request, query: Query) -> tuple[list[Entry], str | None, int]:
        cursor = request.query_params.get("cursor") or None
        try:
            page = await self.run(self.store.search, query, self.cfg.page_size, cursor)
        except QuarantineError as err:
            raise Refused("That page does not exist (the list may have changed).") from err
        # Counted up to one past the cap: "more than 10,000" costs what 10,001 rows do,
        # not what a million do (bench/qpg_bench.py).
        total = await self.run(self.store.count, query, COUNT_CAP + 1)
        return page.entries, page.next_cursor, total

    async def messages(self, request: Request, session: Session) -> Response:
        category = self._category(request)
        entries, next_cursor, total = await self._page(
            request, Query(recipient=session.address, category=category)
        )
        more = (
            "/messages?" + urlencode({"category": category or "", "cursor": next_cursor})
            if next_cursor
            else ""
        )
        return self.render(
            request, "messages.html", session=session, entries=entries, total=total,
            category=category or "", more=more, first=bool(request.query_params.get("cursor")),
            notice=self.notice(request), mine=self._view(session),
        )  # fmt: skip

    def _view(self, session: Session) -> Callable[[Entry], dict[str, object]]:
        """What a user's page may say about an entry: nothing about other recipients."""

        def view(entry: Entry) -> dict[str, object]:
            first = entry.releases[0] if entry.releases else None
            to = str(first.get("to", "")) if first else ""
            asked = any(str(r.get("by", "")) == session.login for r in entry.requests)
            return {
                "released": bool(first),
                "released_when": str(first.get("when", "")) if first else "",
                "released_to_you": session.address in (a.strip().lower() for a in to.split(",")),
                "shared": len(entry.recipients) > 1,
                "may_release": entry.category in self.cfg.user_release
                and len(entry.recipients) == 1,
                "asked": asked,
            }

        return view

    async def message(self, request: Request, session: Session) -> Response:
        entry, _mine = await self.own_entry(request, session)
        actor = self.actor(request, session)
        try:
            entry, raw = await self.run(qactions.show, self.store, entry.id, actor)
        except QuarantineError as err:
            raise Refused("No such message.", 404) from err
        shown = await self.run(preview, raw, False)
        return self.render(
            request, "message.html", session=session, entry=entry, preview=shown,
            view=self._view(session)(entry), notice=self.notice(request), admin_view=False,
        )  # fmt: skip

    async def release(self, request: Request, session: Session) -> Response:
        await self.form(request, session)
        entry, mine = await self.own_entry(request, session)
        view = self._view(session)(entry)
        if not view["may_release"]:
            raise Refused(
                "You cannot release this message yourself; ask an administrator instead.", 403
            )
        try:
            await qactions.release(
                self.store, self.p.sender, entry.id, self.actor(request, session), [mine]
            )
        except AlreadyReleased as err:
            to_you = session.address in (a.lower() for a in err.first.to)
            raise Refused(
                f"This message was already released ({err.first.when}"
                f"{', to you' if to_you else ''}).", 409,
            ) from err  # fmt: skip
        except QuarantineError as err:
            log.warning("portal: release of %s for %s failed: %s", entry.id, session.login, err)
            raise Refused(
                "The message could not be released just now; try again later.", 503
            ) from err
        return self.done(f"/messages/{entry.id}", "released")

    async def request(self, request: Request, session: Session) -> Response:
        form = await self.form(request, session)
        entry, _mine = await self.own_entry(request, session)
        if entry.releases:
            raise Refused("This message was already released.", 409)
        if self._view(session)(entry)["asked"]:
            return self.done(f"/messages/{entry.id}", "already-requested")
        actor = self.actor(request, session)
        note = self.text(form, "note", MAX_NOTE)
        try:
            await self.run(qactions.request_release, self.store, entry.id, actor, note)
        except QuarantineError as err:
            raise Refused("The request could not be recorded; try again later.", 503) from err
        await self.tell_admins(entry, actor, note)
        return self.done(f"/messages/{entry.id}", "requested")

    async def tell_admins(self, entry: Entry, actor: Actor, note: str) -> None:
        """The notice of a release request, through the re-injection listener (never raises)."""
        admins = list(self.p.notices.admins)
        if not admins:
            return
        sender = self.p.notices.sender or f"mail-filter@{self.p.hostname}"
        text = request_text(entry, actor.name, actor.address, note, sender, admins, self.p.hostname)
        delivery = await self.p.sender.send(sender, admins, text)
        if delivery.error or delivery.data is None or not delivery.data.ok:
            log.warning(
                "release request notice about %s not sent: %s",
                entry.id, delivery.error or delivery.data,
            )  # fmt: skip

    async def delete(self, request: Request, session: Session) -> Response:
        await self.form(request, session)
        entry, _mine = await self.own_entry(request, session)
        if len(entry.recipients) > 1:
            # The held copy is everybody's: one recipient does not delete the others' copy.
            raise Refused(
                "Other people received this message too, so it stays until it expires.", 403
            )
        refused: list[QuarantineError] = []
        deleted = await self.run(
            qactions.delete, self.store, [entry.id], self.actor(request, session), refused.append
        )
        if not deleted:
            raise Refused("The message could not be deleted.", 409)
        return self.done("/messages", "deleted")

    async def allow(self, request: Request, session: Session) -> Response:
        await self.form(request, session)
        entry, _mine = await self.own_entry(request, session)
        if not entry.mail_from:
            raise Refused("This message has no sender address (a bounce); nothing to allow.")
        try:
            await self.run(
                qactions.allow, self.store, session.address, entry.mail_from,
                self.actor(request, session),
            )  # fmt: skip
        except QuarantineError as err:
            raise Refused("The sender could not be added; try again later.", 503) from err
        return self.done(f"/messages/{entry.id}", "allowed")

    async def allowed(self, request: Request, session: Session) -> Response:
        entries = await self.run(self.store.allowed_senders, session.address)
        return self.render(
            request, "allowed.html", session=session, entries=entries,
            notice=self.notice(request),
        )  # fmt: skip

    async def disallow(self, request: Request, session: Session) -> Response:
        form = await self.form(request, session)
        sender = self.text(form, "sender", 320)
        # Always the session's own address: a form cannot name another recipient.
        await self.run(
            qactions.disallow, self.store, session.address, sender, self.actor(request, session)
        )
        return self.done("/allowed", "disallowed")

    # -- administrators ------------------------------------------------------

    def _search_query(self, request: Request) -> tuple[Query, dict[str, str]]:
        params = request.query_params
        fields = {
            name: params.get(name, "").strip()[:320]
            for name in ("sender", "recipient", "subject", "category", "since", "until", "id")
        }
        since = _day(fields["since"])
        until = _day(fields["until"])
        query = Query(
            recipient_contains=fields["recipient"] or None,
            sender=fields["sender"] or None,
            subject=fields["subject"] or None,
            category=fields["category"] if fields["category"] in CATEGORIES else None,
            since=since,
            until=until + 86400 if until is not None else None,  # the whole last day
            id=fields["id"].lower() or None,
        )
        return query, fields

    async def search(self, request: Request, session: Session) -> Response:
        query, fields = self._search_query(request)
        if query.id is not None and not re.fullmatch(r"[0-9a-f-]{1,64}", query.id):
            raise Refused("A quarantine id is made of 0-9, a-f and '-'.")
        entries, next_cursor, total = await self._page(request, query)
        more = "/admin?" + urlencode({**fields, "cursor": next_cursor}) if next_cursor else ""
        return self.render(
            request, "admin.html", session=session, entries=entries, total=total,
            fields=fields, more=more, notice=self.notice(request), csrf=session.csrf,
            first=bool(request.query_params.get("cursor")),
        )  # fmt: skip

    async def admin_message(self, request: Request, session: Session) -> Response:
        entry_id = request.path_params["entry_id"]
        try:
            entry, raw = await self.run(
                qactions.show, self.store, entry_id, self.actor(request, session)
            )
        except NotFound as err:
            raise Refused("No such message.", 404) from err
        except QuarantineError as err:
            raise Refused(str(err), 409) from err
        shown = await self.run(preview, raw, True)
        return self.render(
            request, "admin_message.html", session=session, entry=entry, preview=shown,
            notice=self.notice(request),
        )  # fmt: skip

    async def admin_release(self, request: Request, session: Session) -> Response:
        form = await self.form(request, session)
        entry_id = request.path_params["entry_id"]
        to = _addresses(self.text(form, "to", 5000))
        try:
            await qactions.release(
                self.store, self.p.sender, entry_id, self.actor(request, session), to or None
            )
        except QuarantineError as err:
            raise Refused(str(err), 409) from err
        return self.done(f"/admin/messages/{entry_id}", "released-admin")

    async def admin_delete(self, request: Request, session: Session) -> Response:
        form = await self.form(request, session)
        ids = [i for i in form.getlist("id") if isinstance(i, str)][:MAX_BULK]
        if not ids:
            raise Refused("Nothing was selected.")
        refused: list[QuarantineError] = []
        await self.run(
            qactions.delete, self.store, ids, self.actor(request, session), refused.append
        )
        if refused:
            raise Refused("Not deleted: " + "; ".join(str(e) for e in refused[:5]), 409)
        back = local_path(self.text(form, "back"), "/admin")
        return self.done(back if back.startswith("/admin") else "/admin", "deleted")

    async def requests(self, request: Request, session: Session) -> Response:
        found = await self.run(self.store.release_requests, 200)
        return self.render(
            request, "requests.html", session=session, requests=found, csrf=session.csrf,
            notice=self.notice(request),
        )  # fmt: skip

    async def stats(self, request: Request, session: Session) -> Response:
        counts = await self.run(self.store.daily_counts, CHART_DAYS)
        totals: dict[str, int] = {}
        for row in counts:
            totals[row.category] = totals.get(row.category, 0) + row.count
        return self.render(
            request, "stats.html", session=session, totals=sorted(totals.items()),
            days=CHART_DAYS,
        )  # fmt: skip

    async def stats_svg(self, request: Request, session: Session) -> Response:
        counts = await self.run(self.store.daily_counts, CHART_DAYS)
        return Response(chart.svg(counts, CHART_DAYS, date.today()), media_type="image/svg+xml")


def _day(text: str) -> float | None:
    """``YYYY-MM-DD`` as the Unix time of that local midnight; None for anything else."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").timestamp()
    except ValueError:
        return None


def _addresses(text: str) -> list[str]:
    """Addresses typed by an administrator, split at commas and spaces; odd ones refused."""
    found = [a for a in re.split(r"[\s,;]+", text) if a]
    for address in found:
        if not _ADDRESS.fullmatch(address):
            raise Refused(f"Not an address: {address[:100]}")
    return found
