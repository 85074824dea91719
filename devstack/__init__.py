"""Real daemons (Dovecot, Postfix, saslauthd, clamd, spamd) and an SMTP sink on 127.0.0.1.

The package owns nothing but the plumbing to configure, start, observe and
stop throw-away instances; each lives in a directory the caller provides.
"""

from __future__ import annotations
