"""The Prometheus HTTP endpoint both daemons serve (prometheus_client's threaded server).

It owns only starting and stopping the endpoint; each daemon's metrics module
owns its metric names on a registry it passes in.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


class MetricsServer:
    """The HTTP endpoint (prometheus_client's threaded WSGI server)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start(listen: str, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve ``registry`` on ``host:port`` (``[v6]:port``), or nothing for ``""``."""
    if not listen:
        return None
    from mailgate.config import split_listen

    host, port = split_listen(listen)
    return MetricsServer(registry, host, port)
