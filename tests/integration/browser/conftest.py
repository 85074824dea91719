"""One headless Chromium for the session, driven by Selenium through Debian's chromedriver.

``chromium`` starts the browser once per test session (Debian's ``chromium``
and ``chromium-driver``, paths given explicitly so Selenium Manager never runs
or downloads anything), with a fresh profile in a temporary directory and
every background service that would phone home turned off: this runs on
loopback only.  ``browser`` hands each test that browser with an empty cookie
jar; when the test fails, a screenshot, the page source and the URL are
saved (under ``$MAILGATE_BROWSER_ARTIFACTS`` if set, else the test's tmp_path)
and the failure report names them.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS_ENV = "MAILGATE_BROWSER_ARTIFACTS"
# A fresh headless profile that talks to nothing but the pages it is sent to: without
# the background-networking flags Chromium keeps trying Google's services, and on a
# machine without outside network that is a stream of refused connections.
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers' /dev/shm is often 64 MB
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
)


@dataclass
class Browser:
    """The session's browser as one test sees it, and where its failure artifacts go."""

    driver: WebDriver
    artifacts: Path

    def keep(self, name: str) -> list[Path]:
        """Save a screenshot, the page source and the URL of what the browser shows now."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        shot = self.artifacts / f"{name}.png"
        source = self.artifacts / f"{name}.html"
        url = self.artifacts / f"{name}.url"
        url.write_text(self.driver.current_url + "\n")
        source.write_text(self.driver.page_source)
        self.driver.save_screenshot(str(shot))
        return [shot, source, url]


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, started once for every browser test."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"needs Debian's chromium and chromium-driver ({', '.join(missing)})")
    home = tmp_path_factory.mktemp("chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={home / 'profile'}"):
        options.add_argument(flag)
    # chromedriver's log, and Chromium's stderr with it (Debian's launcher script is chatty).
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(home / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: WebDriver, tmp_path: Path, request: pytest.FixtureRequest) -> Browser:
    """The session's browser with no cookies (a fresh jar: nobody is logged in)."""
    chromium.get("about:blank")
    # WebDriver's delete_all_cookies only reaches the current page's site; this is all of them.
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    chosen = os.environ.get(ARTIFACTS_ENV)
    artifacts = Path(chosen) / request.node.name if chosen else tmp_path / "browser"
    return Browser(chromium, artifacts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed browser test's report names the screenshot and page source saved for it."""
    report = yield
    browser = getattr(item, "funcargs", {}).get("browser")
    if report.when == "call" and report.failed and isinstance(browser, Browser):
        try:
            kept = "\n".join(str(p) for p in browser.keep("failure"))
        except (WebDriverException, OSError) as err:
            kept = f"(could not save what the browser showed: {err})"
        report.sections.append(("browser artifacts", kept))
    return report
