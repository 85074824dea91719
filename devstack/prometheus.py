"""A real Prometheus server (Debian's prometheus 2.42) on loopback, for tests and demos.

This module owns one throw-away Prometheus: its generated configuration
(static scrape targets by job, a short scrape interval, optional rule files),
its data directory and log under a caller-chosen ``workdir``, its life cycle
(start, stop), and the few HTTP API calls tests need: run a query, list the
targets, wait until every target has been scraped a few times or until a query
has data. Prometheus runs
in the foreground as our child process, listening on 127.0.0.1 at a free
port; the Debian package's /etc/prometheus, /etc/default/prometheus and its
systemd unit are not used.

Layout of ``workdir``::

    prometheus.yml   generated configuration (JSON, which is YAML), rewritten on start()
    data/            --storage.tsdb.path
    prometheus.log   the server's stdout and stderr
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devstack.ports import LOOPBACK, free_port
from devstack.proc import ChildLauncher, check_config_path

__all__ = ["Prometheus", "PrometheusError"]

log = logging.getLogger(__name__)


class PrometheusError(RuntimeError):
    """The HTTP API answered with an error (a bad query, an unknown endpoint)."""


class Prometheus(ChildLauncher):
    """One ``prometheus`` on 127.0.0.1 scraping ``targets`` every ``scrape_interval`` s.

    ``targets`` maps a job name to its ``host:port`` endpoints (``/metrics``);
    ``rule_files`` are loaded as they are (absolute paths), and evaluated every
    ``scrape_interval`` too.
    """

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, Sequence[str]],
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: float = 1.0,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir.absolute()
        check_config_path(self.workdir)
        self.targets = {job: list(addresses) for job, addresses in targets.items()}
        self.rule_files = [Path(p).absolute() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.port = port if port is not None else free_port()
        self._process = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the web UI and API root."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        """The configuration start() writes, as a dict."""
        interval = f"{round(self.scrape_interval * 1000)}ms"
        return {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addresses}]}
                for job, addresses in self.targets.items()
            ],
        }

    # -- life cycle ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start prometheus and wait until /-/ready answers 200."""
        self._refuse_if_running("prometheus")
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        argv = [
            "prometheus",
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            # Throw-away data: nothing needs keeping for long.
            "--storage.tsdb.retention.time=1d",
        ]
        self._spawn(
            argv, name="prometheus", output=self.log_path, append=True, ready=self._ready,
            deadline=began + timeout, logs=(self.log_path,), pause=0.05,
        )  # fmt: skip
        log.info("prometheus %s on %s started in %.3f s", self.workdir, self.url,
                 time.monotonic() - began)  # fmt: skip

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM prometheus and wait until it has exited; a no-op if not running."""
        if self._reap(timeout):
            log.warning("prometheus %s ignored SIGTERM for %.1f s; killed it",
                        self.workdir, timeout)  # fmt: skip

    def _get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET ``path`` (with its query string): the status and the body."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def _ready(self, timeout: float) -> bool:
        try:
            return self._get("/-/ready", timeout=min(timeout, 2.0))[0] == 200
        except OSError:
            return False

    # -- the HTTP API -------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/PATH`` with ``params``; its ``data``, or PrometheusError."""
        query = urllib.parse.urlencode(params)
        # Errors (400, 422) carry their reason in the same JSON envelope.
        _, raw = self._get(f"/api/v1/{path}" + (f"?{query}" if query else ""))
        body = json.loads(raw)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (``[]`` when it has no data)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_health(self) -> dict[str, str]:
        """Each active target's ``job/address`` and its health: "up", "down" or "unknown"."""
        active = self.api("targets", state="active")["activeTargets"]
        return {f"{t['labels']['job']}/{t['scrapeUrl']}": t["health"] for t in active}

    def wait_for_scrapes(
        self, count: int = 3, timeout: float = 30.0, jobs: Sequence[str] | None = None
    ) -> None:
        """Wait until every target of ``jobs`` (default: all) is up and was scraped at
        least ``count`` times.

        Allow some seconds: Prometheus hands new targets to its scrapers only after
        its discovery's first update (about 5 s after start).
        """
        jobs = list(self.targets) if jobs is None else list(jobs)
        expected = sum(len(self.targets[job]) for job in jobs)
        selector = "|".join(jobs)
        deadline = time.monotonic() + timeout
        while True:
            # One "up" sample per scrape: its count over a window longer than the wait.
            found = self.query(f'count_over_time(up{{job=~"{selector}"}}[10m])')
            counts = [float(r["value"][1]) for r in found]
            health = {
                target: h for target, h in self.targets_health().items()
                if target.split("/", 1)[0] in jobs
            }  # fmt: skip
            if len(counts) == expected and min(counts) >= count and set(health.values()) == {"up"}:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"targets not scraped {count} times within {timeout} s: {health}"
                )
            time.sleep(self.scrape_interval / 2)

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` has a sample (a scrape brought it); its result."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(expr)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expr!r} had no data within {timeout} s")
            time.sleep(self.scrape_interval / 2)
        return result
