"""The Grafana dashboard: a well-formed dashboard covering what issue 19 lists and every
metric the daemons export, and every panel's query answered by a real Prometheus scraping
a real gateway (saslimap, Postfix, mail-filter, clamd, spamd, with Redis as [state])."""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import heldmail
from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.gateway import MailChain
from devstack.prometheus import Prometheus
from devstack.redis import Redis
from devstack.tls import TlsFiles
from saslimap import saslauthd_client
from tests.integration.conftest import USERS
from tests.integration.monitoring.shipped import DASHBOARD, RULES, exported_names

pytestmark = pytest.mark.integration

# What the issue asks the dashboard to show, and the series each of those reads.
SUBJECTS = {
    "auth results": ["saslimap_requests_total"],
    "cache hit ratio": ["saslimap_cache_hits_total", "saslimap_cache_misses_total"],
    "IMAP latency": ["saslimap_imap_login_seconds_bucket"],
    "IMAP errors": ["saslimap_imap_errors_total"],
    "messages by outcome": ["mailfilter_messages_total"],
    "scan times": ["mailfilter_scan_seconds_bucket"],
    "in-flight work": ["saslimap_checks_in_flight", "mailfilter_messages_in_flight"],
    "quarantine": ["mailfilter_quarantined_total", "mailfilter_quarantine_store_up"],
}

# Grafana's variables as the test's Prometheus query needs them: every host, and a rate
# window that covers the whole test (traffic is sent within its first minute).
VARIABLES = {"$__rate_interval": "5m", "$saslimap": ".*", "$filter": ".*"}

ALICE = "alice@example.com"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel but the rows."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    """(panel title, query) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def for_prometheus(expr: str) -> str:
    """The query with Grafana's variables replaced by what the test runs it with."""
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


# -- the file ---------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_with_its_data_source_as_a_variable() -> None:
    """Schema 39, a uid and title, every panel and query on the ${datasource} variable."""
    board = dashboard()
    assert (39, "mailgate") == (board["schemaVersion"], board["uid"])
    [source] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert ("datasource", "prometheus") == (source["name"], source["query"])
    wanted = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels():
        assert wanted == panel["datasource"], panel["title"]
        assert all(wanted == t["datasource"] for t in panel["targets"]), panel["title"]
        assert panel["description"], panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    """Ids are unique, and no two panels share a cell of the 24-column grid."""
    every = dashboard()["panels"]
    assert len(every) == len({p["id"] for p in every})
    taken: dict[tuple[int, int], str] = {}
    for panel in every:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[x, y] = panel["title"]


def test_everything_the_issue_lists_has_a_panel() -> None:
    """Auth results, cache hit ratio, IMAP latency and errors, outcomes, scan times,
    in-flight work and the quarantine each appear in some panel's query."""
    queries = " ".join(expr for _, expr in exprs())
    for subject, series in SUBJECTS.items():
        for name in series:
            assert name in queries, subject


def test_every_metric_the_daemons_export_is_on_the_dashboard() -> None:
    """A metric added to either daemon needs a panel (or this test says which is missing)."""
    queries = " ".join(expr for _, expr in exprs())
    shown = set(re.findall(r"\b(?:saslimap|mailfilter)_[a-z_]+", queries))
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in exported_names()}
    missing = {f for f in families if not any(s.startswith(f) for s in shown)}
    assert set() == missing


# -- against a real Prometheus -------------------------------------------------------------


def _state(redis: Redis, secret: Path) -> dict[str, object]:
    return {
        "url": redis.url, "password_file": str(redis.password_file),
        "secret_file": str(secret), "key_prefix": f"dash{secrets.token_hex(4)}:",
        "timeout": 0.5,  # generous for a loaded test machine
    }  # fmt: skip


def _until_query(prometheus: Prometheus, expr: str, what: str) -> None:
    """Wait (up to 60 s) until ``expr`` has a sample."""
    try:
        prometheus.wait_for(expr)
    except TimeoutError as err:
        raise AssertionError(f"{what}: {expr} never had data") from err


@pytest.fixture(scope="module")
def scraped(
    workroot: Path, dovecot: Dovecot, tls: TlsFiles, redis_server: Redis
) -> Iterator[Prometheus]:
    """A Prometheus scraping, every second, a saslimap and a mail chain with [state] on
    Redis, after a few logins (right and wrong) and clean, spam and virus mail."""
    root = workroot / "dash"
    root.mkdir()
    secret = root / "state.key"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    auth = SaslimapDaemon(
        root / "saslimap",
        {
            "imap": {"url": dovecot.imap_url("imap"), "ca_file": str(tls.ca_cert)},
            "state": _state(redis_server, secret),
        },
    )
    chain = MailChain(
        root / "mail",
        filter_settings={"policy": heldmail.HOLD_SPAM, "state": _state(redis_server, secret)},
        filter_processes=2,
    )
    with auth, chain:
        targets = {
            "saslimap": [f"127.0.0.1:{auth.metrics_port}"],
            "mail-filter": [f"127.0.0.1:{chain.filter.metrics_port}"],
        }
        with Prometheus(root / "prom", targets, rule_files=[RULES]) as prometheus:
            prometheus.wait_for_scrapes(count=2, timeout=30)
            port, sender, user = chain.smtpd_port, "news@sender.test", "user@example.com"
            # One message first: a series that first appears already counting every
            # message would show no rate, and a quantile of no rate is NaN.
            heldmail.send(port, sender, user, heldmail.spam(sender, user, "first"))
            _until_query(prometheus, 'mailfilter_scan_seconds_count{scanner="spamd"}', "a scan")
            for password in (USERS[ALICE], USERS[ALICE], "wrong", "wrong"):  # miss, hit; NO, NO hit
                saslauthd_client.query(auth.socket_path, ALICE.encode(), password.encode(), b"smtp")
            heldmail.send(port, sender, user, heldmail.virus(sender, user, "virus"))
            heldmail.send(port, sender, user, b"Subject: clean\r\n\r\nHello.\r\n")
            # Scraped after the last of it: every rate has a sample before and after.
            _until_query(prometheus, "sum(saslimap_requests_total) >= 4", "four logins")
            _until_query(prometheus, "sum(mailfilter_messages_total) >= 3", "three messages")
            yield prometheus


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def test_every_panels_query_returns_data(scraped: Prometheus) -> None:
    """Each target's query, variables filled in, has at least one sample that is a number."""
    empty = []
    for title, expr in exprs():
        values = _values(scraped.query(for_prometheus(expr)))
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {expr} -> {values}")
    assert [] == empty


def test_the_traffic_sent_shows_where_an_admin_looks(scraped: Prometheus) -> None:
    """Logins ok and no, clean, spam and virus mail, spam and virus held: all above zero."""
    query = scraped.query

    def by(label: str, expr: str) -> dict[str, float]:
        return {s["metric"][label]: float(s["value"][1]) for s in query(for_prometheus(expr))}

    [auth] = [e for t, e in exprs() if t == "Authentication results"]
    [outcomes] = [e for t, e in exprs() if t == "Messages by outcome"]
    [held] = [e for t, e in exprs() if t == "Held per hour, by category"]
    assert all(by("result", auth)[r] > 0 for r in ("ok", "no"))
    assert all(by("outcome", outcomes)[o] > 0 for o in ("clean", "spam", "virus"))
    assert all(by("category", held)[c] > 0 for c in ("spam", "virus"))


def test_the_alert_rules_evaluate_cleanly_and_stay_quiet(scraped: Prometheus) -> None:
    """Prometheus evaluates every shipped rule on the real series without an error, and
    none is pending or firing on this healthy gateway."""
    groups = scraped.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert 10 <= len(rules)
    assert [] == [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"]
    assert [] == [r["name"] for r in rules if r["state"] != "inactive"]
