"""Every Prometheus metric saslimap exports, on an injected registry.

This module owns the metric names, their help texts and label sets, and the
HTTP endpoint.  Labels come only from small fixed sets (results, cache kinds,
error kinds): never a user name, realm or password.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from mailgate.imap import BackendUnavailable

log = logging.getLogger(__name__)

RESULTS = ("ok", "no", "tempfail", "ratelimited", "bad_request")
CACHE_KINDS = ("positive", "negative", "stale", "shared")
IMAP_ERROR_KINDS = BackendUnavailable.KINDS


class _Tally(Collector):
    """A labelled counter bumped as a plain int on the event loop, read at scrape time.

    Every request bumps two of these; prometheus_client's Counter takes a lock
    per increment, which costs more than the rest of a cache hit's bookkeeping.
    Only the event loop's thread writes; the scraping thread only reads.
    """

    def __init__(self, name: str, doc: str, label: str, values: tuple[str, ...]) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.counts = dict.fromkeys(values, 0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, count in list(self.counts.items()):
            family.add_metric([value], count)
        yield family


class Metrics:
    """The daemon's metrics; one instance per process, kept across reloads."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Every label exists from the start, so dashboards see zeros rather than gaps.
        requests = _Tally("saslimap_requests", "Requests answered, by result.", "result", RESULTS)
        hits = _Tally(
            "saslimap_cache_hits", "Checks answered from a cache, by kind.", "kind", CACHE_KINDS
        )
        r.register(requests)
        r.register(hits)
        self._requests, self._hits = requests.counts, hits.counts
        self.cache_misses = Counter(
            "saslimap_cache_misses", "Checks that had to ask the IMAP server.", registry=r
        )
        self.imap_login_seconds = Histogram(
            "saslimap_imap_login_seconds",
            "Time for one IMAP login check that got a verdict (connect to answer).",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.imap_errors = Counter(
            "saslimap_imap_errors", "IMAP checks without a verdict, by kind.", ["kind"], registry=r
        )
        self.in_flight = Gauge(
            "saslimap_checks_in_flight", "Checks currently waiting for the IMAP server.", registry=r
        )
        self.cache_entries = Gauge(
            "saslimap_cache_entries", "Entries held, by cache.", ["cache"], registry=r
        )
        self.connections_refused = Counter(
            "saslimap_connections_refused",
            "Mux connections closed at once because max_connections was reached.",
            registry=r,
        )
        for kind in IMAP_ERROR_KINDS:
            self.imap_errors.labels(kind)
        self._state_up: Gauge | None = None

    def state_gauge(self) -> Callable[[bool], None]:
        """Export ``saslimap_state_up`` (only where a shared store is configured); its setter."""
        if self._state_up is None:
            self._state_up = Gauge(
                "saslimap_state_up",
                "1 while the shared state store (Redis) answers within its deadline, else 0 "
                "(limits and caches are then this host's alone).",
                registry=self.registry,
            )
        gauge = self._state_up
        return lambda up: gauge.set(1 if up else 0)

    def count_request(self, result: str) -> None:
        """One request answered with ``result`` (one of RESULTS)."""
        self._requests[result] += 1

    def count_hit(self, kind: str) -> None:
        """One check answered from a cache of ``kind`` (one of CACHE_KINDS)."""
        self._hits[kind] += 1

    def watch_cache_sizes(self, sizes: Callable[[], dict[str, int]]) -> None:
        """Read cache sizes at scrape time from the current authenticator."""
        for cache in ("positive", "negative"):
            self.cache_entries.labels(cache).set_function(
                lambda cache=cache: float(sizes().get(cache, 0))  # type: ignore[misc]
            )
