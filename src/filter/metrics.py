"""Every Prometheus metric mail-filter exports, on an injected registry.

Labels come only from small fixed sets (outcomes, categories, scanners, error kinds):
never an address, subject or virus name.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from filter.verdicts import Category, Result

OUTCOMES = tuple(result.value for result in Result)
CATEGORIES = tuple(category.value for category in Category)
SCANNERS = ("clamd", "spamd")
ERROR_KINDS = ("connect", "timeout", "protocol", "error")


class Metrics:
    """The filter's metrics; one instance per process (kept across reloads)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "mailfilter_messages", "Messages answered, by outcome.", ["outcome"], registry=r
        )
        self.scan_seconds = Histogram(
            "mailfilter_scan_seconds",
            "Time one scanner took for one message.",
            ["scanner"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.scanner_errors = Counter(
            "mailfilter_scanner_errors",
            "Scans without a verdict, by scanner and kind.",
            ["scanner", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "mailfilter_messages_in_flight", "Messages being scanned or re-injected.", registry=r
        )
        self.reinject_failures = Counter(
            "mailfilter_reinject_failures",
            "Re-injections that did not end with every recipient accepted, by kind.",
            ["kind"],
            registry=r,
        )
        self.message_bytes = Histogram(
            "mailfilter_message_bytes",
            "Size of messages received.",
            buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 5e7),
            registry=r,
        )
        # Counted when the store took a new entry (a retry of one held before is not new):
        # its rate is how fast the quarantine grows, whatever store holds it.
        self.quarantined = Counter(
            "mailfilter_quarantined",
            "Messages newly held in the quarantine, by category.",
            ["category"],
            registry=r,
        )
        self.quarantine_store_up = Gauge(
            "mailfilter_quarantine_store_up",
            "1 while the quarantine store answered its last lookup, else 0 (allow entries"
            " then come from this host's copy; mail to be held gets 451).",
            registry=r,
        )
        self.allow_copy_entries = Gauge(
            "mailfilter_allow_copy_recipients",
            "Recipients with allow entries in this host's copy of the store's table.",
            registry=r,
        )
        for outcome in OUTCOMES:
            self.messages.labels(outcome)
        for category in CATEGORIES:
            self.quarantined.labels(category)
        for scanner in SCANNERS:
            for kind in ERROR_KINDS:
                self.scanner_errors.labels(scanner, kind)
        for kind in ("temporary", "permanent", "partial", "connection"):
            self.reinject_failures.labels(kind)
        self._state_up: Gauge | None = None

    def state_gauge(self) -> Callable[[bool], None]:
        """Export ``mailfilter_state_up`` (only where a shared store is configured); its setter."""
        if self._state_up is None:
            self._state_up = Gauge(
                "mailfilter_state_up",
                "1 while the shared state store (Redis) answers within its deadline, else 0 "
                "(notices are then throttled by this host alone).",
                registry=self.registry,
            )
        gauge = self._state_up
        return lambda up: gauge.set(1 if up else 0)
