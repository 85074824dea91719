"""The devstack Prometheus launcher against Debian's real prometheus, scraping a
prometheus_client endpoint of the test's own."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from devstack.ports import free_port
from devstack.prometheus import Prometheus, PrometheusError
from mailgate.metrics_http import MetricsServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus"),
]

RULES = """\
groups:
  - name: test
    rules:
      - alert: AlwaysQuiet
        expr: devstack_test_events_total > 1e9
"""


@pytest.fixture(scope="module")
def endpoint() -> Iterator[int]:
    """The port of a /metrics page with one counter at 3, on loopback."""
    registry = CollectorRegistry()
    Counter("devstack_test_events", "Events.", registry=registry).inc(3)
    port = free_port()
    server = MetricsServer(registry, "127.0.0.1", port)
    yield port
    server.close()


@pytest.fixture(scope="module")
def prometheus(root: Path, endpoint: int) -> Iterator[Prometheus]:
    """A Prometheus scraping the endpoint and a port nothing listens on, every 0.5 s."""
    rules = root / "rules.yml"
    rules.write_text(RULES)
    targets = {"ours": [f"127.0.0.1:{endpoint}"], "nothing": [f"127.0.0.1:{free_port()}"]}
    with Prometheus(root / "prom", targets, rule_files=[rules], scrape_interval=0.5) as server:
        yield server


def test_the_endpoint_is_scraped_and_queried(prometheus: Prometheus) -> None:
    """The counter's value comes back from a query once the target was scraped."""
    prometheus.wait_for_scrapes(count=2, jobs=["ours"])
    [sample] = prometheus.query("devstack_test_events_total")
    assert "3" == sample["value"][1]
    assert "ours" == sample["metric"]["job"]


def test_a_target_that_does_not_answer_is_down(prometheus: Prometheus) -> None:
    """The port nothing listens on is reported down, ours up; waiting for it times out."""
    prometheus.wait_for_scrapes(count=2, jobs=["ours"])
    with pytest.raises(TimeoutError, match="down"):
        prometheus.wait_for_scrapes(count=1, timeout=2)
    health = prometheus.targets_health()
    assert {"up", "down"} == set(health.values())
    assert all(h == "down" for target, h in health.items() if target.startswith("nothing/"))


def test_the_rule_files_are_loaded(prometheus: Prometheus) -> None:
    """The rule file handed over is evaluated (it appears under /api/v1/rules)."""
    groups = prometheus.api("rules")["groups"]
    assert ["AlwaysQuiet"] == [rule["name"] for group in groups for rule in group["rules"]]


def test_a_bad_query_raises_with_prometheus_reason(prometheus: Prometheus) -> None:
    """A query Prometheus cannot parse is a PrometheusError naming its error."""
    with pytest.raises(PrometheusError, match="bad_data"):
        prometheus.query("rate(")
