"""The ``mail-filter`` command (content filter, quarantine, learning).

Placeholder until the content filter issue: the console script exists so its
name is stable, and says plainly that nothing is implemented yet.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mail-filter`` console script."""
    print("mail-filter: not implemented yet (see the content filter issue)", file=sys.stderr)
    return 69  # EX_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
