"""A blocking saslauthd-protocol client: what libsasl does, for tools and tests.

The client lives in the shared core (:mod:`mailgate.saslauthd`), since the
filter's quarantine portal asks saslimap too; ``saslimap test``, the test suite
and the benchmarks keep importing it from here under the names they always used.
"""

from __future__ import annotations

from mailgate.saslauthd import NoReply as NoReply
from mailgate.saslauthd import query as query
