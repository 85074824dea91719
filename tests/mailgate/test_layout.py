"""The package boundaries: both daemons build on mailgate, never on each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def imported_packages(package: str) -> set[str]:
    """Top-level packages that any module of ``src/<package>`` imports."""
    found: set[str] = set()
    for path in (SRC / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("filter", {"saslimap"}), ("saslimap", {"filter"}), ("mailgate", {"filter", "saslimap"})],
)
def test_packages_never_import_each_other(package: str, forbidden: set[str]) -> None:
    """src/filter imports nothing from saslimap, and the other way round; the core neither."""
    assert set() == imported_packages(package) & forbidden


def test_building_the_filter_daemon_loads_no_imapclient() -> None:
    """The filter's composition root, built in a fresh interpreter, leaves imapclient unloaded."""
    code = (
        "import asyncio, sys\n"
        "from filter import app, cli\n"
        "from filter.config import Config\n"
        "from filter.metrics import Metrics\n"
        "async def build():\n"
        "    app.build_filter(Config(), Metrics())\n"
        "asyncio.run(build())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('imapclient', 'imaplib', 'saslimap')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "[]" == done.stdout.strip(), done.stderr


def test_the_filter_daemon_loads_no_web_framework() -> None:
    """mail-filter serve never imports the portal's Starlette, Jinja2 or uvicorn."""
    code = (
        "import sys\n"
        "from filter import app, cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'jinja2', 'uvicorn', 'multipart', 'itsdangerous')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "[]" == done.stdout.strip(), done.stderr
