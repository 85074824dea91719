"""Generate docs/configuration.md from the commented TOML files in conf/.

The TOML files are the reference (every key with its comment and the value
the shipped file sets, which for a few keys, such as the IMAP URL or the
socket path under Postfix's chroot, is an example rather than the built-in
default); this renders them as Markdown tables.  ``python -m devstack.confdoc`` rewrites
the file; a test fails when it is out of date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (("saslimap", ROOT / "conf/saslimap.toml"), ("mail-filter", ROOT / "conf/filter.toml"))
TARGET = ROOT / "docs/configuration.md"
_SECTION = re.compile(r"^\[([\w.]+)\]\s*$")
_KEY = re.compile(r"^(\w+)\s*=\s*(.*)$")


def render() -> str:
    """The whole Markdown document."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `conf/saslimap.toml` and `conf/filter.toml` by",
        "`python -m devstack.confdoc`; those files are the source (copy them to /etc and",
        "edit). A test keeps this page in step. The middle column is the value the shipped",
        "file sets: for a few keys (the IMAP URL, socket paths, allowed domains) an",
        "example for this gateway, not the built-in default.",
        "",
    ]
    for program, path in SOURCES:
        out += [f"## {program} (`{path.relative_to(ROOT)}`)", ""]
        comment: list[str] = []
        section = ""
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].rstrip()
            if line.startswith("#"):
                comment.append(line.lstrip("#").strip())
            elif match := _SECTION.match(line):
                section = match.group(1)
                out += ["", f"### `[{section}]`", ""]
                if comment and "." in section:
                    out += [" ".join(c for c in comment if c), ""]
                out += ["| key | in conf/ | meaning |", "|---|---|---|"]
                comment = []
            elif match := _KEY.match(line):
                value = match.group(2)
                while value.count("[") > value.count("]") and i + 1 < len(lines):
                    i += 1
                    value += " " + lines[i].strip()
                text = " ".join(c for c in comment if c).replace("|", "\\|")
                default = value.replace("|", "\\|")
                if len(default) > 60:
                    default = default[:57] + "...]"
                out.append(f"| `{match.group(1)}` | `{default}` | {text} |")
                comment = []
            elif not line.strip():
                comment = [] if not section else comment
            i += 1
        out.append("")
    return "\n".join(out) + "\n"


def main() -> int:
    """Rewrite docs/configuration.md."""
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
