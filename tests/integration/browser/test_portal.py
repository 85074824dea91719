"""The quarantine portal in a real browser, over a real gateway (issue 17 §8).

The module's gateway is the real thing end to end: the session's Dovecot and
saslimap check the passwords, a mail chain (Postfix, mail-filter, clamd,
spamd) holds GTUBE spam and an EICAR virus sent to two users, and
``mail-filter portal`` serves that quarantine and releases through the
chain's re-injection listener to the sink standing in for the internal mail
server.  Headless Chromium logs in, reads, previews, releases and logs out as
a person would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from devstack import heldmail
from devstack.daemons import PortalDaemon, SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.gateway import MailChain
from devstack.sink import Received
from filter.qdir import DirectoryStore
from filter.qstore import Query
from filter.quarantine import Entry
from tests.integration.browser.conftest import Browser
from tests.integration.conftest import USERS

pytestmark = pytest.mark.integration

ALICE, BOB = "alice@example.com", "bob@example.com"
ADMIN, ADMIN_PW = "quarantine-admin@example.com", "admin pw <&>"
SENDER = "offers@spam.test"
RELEASED = "Cheap watches for Alice"
KEPT = "Cheap watches, second offer"
VIRUS = "Your invoice"
BOBS = "Bob has won the lottery"
# Markup and script in the one field every list shows; each part would change the DOM
# (an element, an attribute, a closed tag) if the page ever rendered it.
HOSTILE = '<script>alert("subject")</script><img src=x onerror=alert(1)><b>bold</b> & "q"'
WAIT = 30.0  # seconds a page or a delivery may take on a loaded machine


@dataclass
class Gateway:
    """What the tests look at: the chain (its sink), the portal, the held entries by subject."""

    chain: MailChain
    portal: PortalDaemon
    held: dict[str, Entry]

    def url(self, path: str) -> str:
        """The portal's address for ``path`` (no leading slash)."""
        return self.portal.url + path

    def delivered(self, entry: Entry) -> list[Received]:
        """What the internal mail server received that is this held message."""
        mid = _message_id(self.chain, entry)
        return [m for m in self.chain.sink.messages if mid in m.data]


def _message_id(chain: MailChain, entry: Entry) -> bytes:
    store = DirectoryStore(chain.root / "quarantine")
    try:
        raw = store.message(entry.id)
    finally:
        store.close()
    [line] = [h for h in raw.split(b"\r\n\r\n", 1)[0].splitlines() if h.startswith(b"Message-ID:")]
    return line.split(b":", 1)[1].strip()


@pytest.fixture(scope="module")
def gateway(workroot: Path, dovecot: Dovecot, daemon: SaslimapDaemon) -> Iterator[Gateway]:
    """Spam and a virus held for Alice, spam for Bob, the portal over them (ADMIN its admin)."""
    dovecot.set_password(ADMIN, ADMIN_PW)  # a user of the session's IMAP server, like any
    root = workroot / "browser"
    quarantine = root / "quarantine"
    with MailChain(
        root, filter_settings={"policy": heldmail.HOLD_SPAM}, filter_processes=2
    ) as chain:
        held = {
            RELEASED: heldmail.spam(SENDER, ALICE, RELEASED),
            KEPT: heldmail.spam(SENDER, ALICE, KEPT),
            HOSTILE: heldmail.spam(SENDER, ALICE, HOSTILE),
            VIRUS: heldmail.virus("billing@spam.test", ALICE, VIRUS),
            BOBS: heldmail.spam(SENDER, BOB, BOBS),
        }
        for subject, message in held.items():
            heldmail.send(chain.smtpd_port, SENDER, BOB if subject == BOBS else ALICE, message)
        heldmail.wait_held(quarantine, len(held))
        store = DirectoryStore(quarantine)
        entries = {e.subject: e for e in store.entries(Query())}
        store.close()
        portal = PortalDaemon(
            root / "portal", daemon.socket_path,
            {"portal": {"admins": [ADMIN]}, "quarantine": {"directory": str(quarantine)},
             "reinject": {"address": f"127.0.0.1:{chain.reinject_port}"}},
        )  # fmt: skip
        with portal:
            yield Gateway(chain, portal, entries)


def _log_in(browser: Browser, gateway: Gateway, user: str, password: str) -> None:
    """Fill in and send the login form; wait for the page it leads to."""
    driver = browser.driver
    driver.get(gateway.url("login"))
    driver.find_element(By.ID, "login").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    _wait(driver).until(expected_conditions.url_to_be(gateway.url("messages")))


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    """A wait that polls through a page being replaced: an element found on the old page
    may be gone (stale, or "node does not belong to the document") by the time it is read."""
    return WebDriverWait(
        driver, WAIT,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException,
                            WebDriverException),
    )  # fmt: skip


def _subjects(driver: WebDriver) -> list[str]:
    """The subjects the list on the current page shows."""
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, "table.list td a")]


def test_a_user_sees_previews_and_releases_their_message_which_arrives_once(
    browser: Browser, gateway: Gateway
) -> None:
    """Alice sees her four held messages (not Bob's), previews one, releases it; the internal
    server gets it exactly once, and the same form sent again from a second tab is refused."""
    driver = browser.driver
    _log_in(browser, gateway, ALICE, USERS[ALICE])
    assert f"Held messages for {ALICE}" == driver.find_element(By.TAG_NAME, "h1").text
    assert sorted([RELEASED, KEPT, HOSTILE, VIRUS]) == sorted(_subjects(driver))

    driver.find_element(By.LINK_TEXT, RELEASED).click()
    entry = gateway.held[RELEASED]
    _wait(driver).until(expected_conditions.url_to_be(gateway.url(f"messages/{entry.id}")))
    assert RELEASED == driver.find_element(By.TAG_NAME, "h1").text
    assert "GTUBE" in driver.find_element(By.CSS_SELECTOR, "section.body pre").text
    assert SENDER in driver.find_element(By.CSS_SELECTOR, "dl.facts").text

    first = driver.current_window_handle
    driver.switch_to.new_window("tab")  # the same page, open twice: a double release
    driver.get(gateway.url(f"messages/{entry.id}"))
    second = driver.current_window_handle
    driver.switch_to.window(first)
    driver.find_element(By.XPATH, "//button[text()='Release to me']").click()
    released = _wait(driver).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "p.notice"))
    )
    assert "released" in released.text.lower()
    assert "to you" in driver.find_element(By.CSS_SELECTOR, "div.actions").text
    assert [] == driver.find_elements(By.XPATH, "//button[text()='Release to me']")

    driver.switch_to.window(second)
    driver.find_element(By.XPATH, "//button[text()='Release to me']").click()
    _wait(driver).until(expected_conditions.text_to_be_present_in_element(
        (By.TAG_NAME, "main"), "already released"
    ))  # fmt: skip
    driver.close()
    driver.switch_to.window(first)

    deadline = time.monotonic() + WAIT
    while not (gateway.delivered(entry) and gateway.chain.queue_empty()):
        assert time.monotonic() < deadline, "the released message never left Postfix's queue"
        time.sleep(0.1)
    # Released once, and with Postfix's queue empty no other copy is on its way.
    [delivered] = gateway.delivered(entry)
    assert [ALICE] == delivered.rcpt_tos


def test_another_user_sees_only_their_own_messages(browser: Browser, gateway: Gateway) -> None:
    """Bob's list holds his message only, and Alice's message by its address is "no such
    message", exactly like one that does not exist."""
    driver = browser.driver
    _log_in(browser, gateway, BOB, USERS[BOB])
    assert [BOBS] == _subjects(driver)
    assert ALICE not in driver.page_source
    driver.get(gateway.url(f"messages/{gateway.held[RELEASED].id}"))
    assert RELEASED not in driver.page_source
    assert "No such message" in driver.find_element(By.TAG_NAME, "main").text


def test_the_admin_sees_every_users_messages_and_the_chart(
    browser: Browser, gateway: Gateway
) -> None:
    """The administrator's search lists both users' messages with their recipients; the chart
    page shows the server-drawn SVG, counting what was held."""
    driver = browser.driver
    _log_in(browser, gateway, ADMIN, ADMIN_PW)
    driver.find_element(By.LINK_TEXT, "Search").click()
    _wait(driver).until(expected_conditions.url_to_be(gateway.url("admin")))
    assert sorted(gateway.held) == sorted(_subjects(driver))
    recipients = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "td[data-label=To]")]
    assert {ALICE, BOB} == set(recipients)

    driver.find_element(By.LINK_TEXT, "Chart").click()
    _wait(driver).until(expected_conditions.url_to_be(gateway.url("admin/stats")))
    chart = driver.find_element(By.CSS_SELECTOR, "p.chart img")
    # The browser fetched and decoded the image (an SVG it could not load has no width);
    # waited for, since the page's load event need not have come yet.
    loaded = _wait(driver).until(
        lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", chart
        )
    )
    assert 760 == loaded
    driver.get(gateway.url("admin/stats.svg"))
    svg = driver.find_element(By.TAG_NAME, "svg")
    legend = [t.get_attribute("textContent") for t in svg.find_elements(By.TAG_NAME, "text")]
    assert "spam (4)" in legend
    assert "virus (1)" in legend
    assert svg.find_elements(By.TAG_NAME, "rect")


def test_logging_out_ends_the_session(browser: Browser, gateway: Gateway) -> None:
    """The "Log out" button leads to the login page, and the list is no longer reachable."""
    driver = browser.driver
    _log_in(browser, gateway, BOB, USERS[BOB])
    driver.find_element(By.XPATH, "//button[text()='Log out']").click()
    _wait(driver).until(expected_conditions.url_to_be(gateway.url("login")))
    driver.get(gateway.url("messages"))
    assert driver.current_url.startswith(gateway.url("login"))
    assert BOBS not in driver.page_source
    assert [] == driver.find_elements(By.XPATH, "//button[text()='Log out']")


def test_a_hostile_subject_is_shown_as_text(browser: Browser, gateway: Gateway) -> None:
    """A subject of script and markup is text in the list and the preview's heading: no alert,
    and no element or attribute of it in the DOM."""
    driver = browser.driver
    _log_in(browser, gateway, ALICE, USERS[ALICE])
    assert HOSTILE in _subjects(driver)
    _assert_inert(driver)
    driver.find_element(By.LINK_TEXT, HOSTILE).click()
    entry = gateway.held[HOSTILE]
    _wait(driver).until(expected_conditions.url_to_be(gateway.url(f"messages/{entry.id}")))
    assert HOSTILE == driver.find_element(By.TAG_NAME, "h1").text
    _assert_inert(driver)


def _assert_inert(driver: WebDriver) -> None:
    """No alert is open and the page has no element or handler from the hostile subject."""
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - reading it is the check
    assert [] == driver.find_elements(By.CSS_SELECTOR, "script, img, b, [onerror]")
    assert "&lt;script&gt;alert" in driver.page_source
