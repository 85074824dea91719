"""Real daemons (Dovecot, Postfix, saslauthd) started on 127.0.0.1 for tests and demos.

The package owns nothing but the plumbing to configure, start, observe and
stop throw-away instances; each lives in a directory the caller provides.
"""

from __future__ import annotations
