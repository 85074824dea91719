"""The old name of :mod:`saslimap.saslauthd_client`, kept for importers not yet moved.

``tests/integration/test_systemd.py`` still imports ``saslimap.client``; once
it imports :mod:`saslimap.saslauthd_client`, this module goes.
"""

from __future__ import annotations

from saslimap.saslauthd_client import NoReply, query

__all__ = ["NoReply", "query"]
