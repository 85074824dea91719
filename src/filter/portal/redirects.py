"""Where a login may send the browser next: a path on this site, or the start page.

This module owns the check on ``next=``, the one place the portal redirects to a
place a request named.  Only a plain absolute path on this site passes: ``/``
then anything but a second ``/`` or ``\\`` (browsers read ``//evil`` and
``/\\evil`` as another host), no scheme, no control characters (CR and LF
would split the Location field; others are refused because no page of ours
has them), and a bounded length.  Anything else becomes the start page.
"""

from __future__ import annotations

from urllib.parse import urlsplit

HOME = "/"
MAX_NEXT = 1000


def local_path(target: str | None, home: str = HOME) -> str:
    """``target`` if it is a local path that stays on this site, else ``home``."""
    if not target or len(target) > MAX_NEXT:
        return home
    if not target.isascii() or not target.isprintable():
        return home  # CR, LF, TAB, NUL, DEL: browsers strip some of them, then read "//"
    if not target.startswith("/") or target[1:2] in ("/", "\\"):
        return home
    if "\\" in target:
        return home  # browsers treat "\" as "/" in paths: nothing of ours needs one
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return home
    return target
