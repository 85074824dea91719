"""`saslimap import-saslauthd` as an admin runs it: Debian's file and a gateway guide's, exit
codes, the report on stdout, and the written file passing `saslimap check-config`."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saslauthd"
SRC = Path(__file__).resolve().parents[2] / "src"
DEBIAN = FIXTURES / "debian-saslauthd"
GUIDE = FIXTURES / "gateway-guide-saslauthd"


def saslimap(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run this checkout's ``saslimap`` command in a fresh interpreter."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "saslimap.cli", *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``saslimap check-config`` on ``path``; must exit 0."""
    done = saslimap("check-config", path)
    assert 0 == done.returncode, done.stderr
    return done


def test_a_gateway_guides_file_imports_and_passes_check_config(tmp_path: Path) -> None:
    """rimap to the internal server with -c -t 3600 -r in Postfix's chroot: all carried, exit 0."""
    out = tmp_path / "saslimap.toml"
    done = saslimap("import-saslauthd", GUIDE, "--output", out)
    assert 0 == done.returncode, done.stderr
    assert "IMAP server imap://10.0.0.2:143" in check_config(out).stdout
    written = tomllib.loads(out.read_text())
    assert "/var/spool/postfix/var/run/saslauthd/mux" == written["server"]["socket"]
    assert {"realm": "join"} == written["users"]
    assert {"ttl": 3600.0} == written["cache"]
    assert 5 == written["imap"]["max_concurrency"]
    # the report: what changed comes first, the counts last
    lines = done.stdout.splitlines()
    assert f"{GUIDE} -> {out}" == lines[0]
    assert lines[2].startswith("changed      MECH_OPTIONS -O 10.0.0.2")
    assert "0 not carried, 2 changed, 4 carried, 2 ignored" in done.stdout
    assert f"Check it: saslimap check-config {out}" in done.stdout


def test_debians_own_file_needs_an_imap_server(tmp_path: Path) -> None:
    """Debian's file uses pam: exit 78 saying so, and nothing is written."""
    out = tmp_path / "saslimap.toml"
    done = saslimap("import-saslauthd", DEBIAN, "--output", out)
    assert 78 == done.returncode
    assert "MECHANISMS=pam" in done.stderr
    assert "--imap" in done.stderr
    assert "nothing written" in done.stderr
    assert not out.exists()


def test_debians_own_file_with_imap_passes_check_config(tmp_path: Path) -> None:
    """With --imap, Debian's file carries its socket, cache and threads."""
    out = tmp_path / "saslimap.toml"
    done = saslimap("import-saslauthd", DEBIAN, "-o", out, "--imap", "imaps://imap.example.com")
    assert 0 == done.returncode, done.stderr
    check_config(out)
    written = tomllib.loads(out.read_text())
    assert "/var/run/saslauthd/mux" == written["server"]["socket"]
    assert {"ttl": 28800.0} == written["cache"]  # -c without -t: saslauthd's default
    assert {"realm": "ignore"} == written["users"]  # no -r
    assert "START is not set" in done.stdout


def test_settings_not_carried_exit_1_with_the_file_written(tmp_path: Path) -> None:
    """A setting that cannot be carried is reported first; the file is written and loads."""
    source = tmp_path / "saslauthd"
    source.write_text(GUIDE.read_text().replace("-t 3600", "-t 1h"))
    out = tmp_path / "saslimap.toml"
    done = saslimap("import-saslauthd", source, "--output", out)
    assert 1 == done.returncode, done.stderr
    assert done.stdout.splitlines()[2].startswith("not carried  OPTIONS -t 1h")
    check_config(out)


def test_an_existing_output_is_kept_without_force(tmp_path: Path) -> None:
    """Exit 73 and the old file untouched; --force replaces it."""
    out = tmp_path / "saslimap.toml"
    out.write_text("# mine\n")
    refused = saslimap("import-saslauthd", GUIDE, "--output", out)
    assert 73 == refused.returncode
    assert "--force" in refused.stderr
    assert "# mine\n" == out.read_text()
    assert 0 == saslimap("import-saslauthd", GUIDE, "--output", out, "--force").returncode
    check_config(out)
    assert [out] == list(tmp_path.iterdir())  # no partial file left behind


@pytest.mark.parametrize(
    ("content", "code"),
    [(None, 66), ("x" * (64 * 1024 + 1), 78), ('MECHANISMS="rimap\n', 78)],
)
def test_unreadable_inputs_write_nothing(tmp_path: Path, content: str | None, code: int) -> None:
    """A missing file is 66; one too large or not valid sh is 78; no output either way."""
    source = tmp_path / "saslauthd"
    if content is not None:
        source.write_text(content)
    out = tmp_path / "saslimap.toml"
    assert code == saslimap("import-saslauthd", source, "--output", out).returncode
    assert not out.exists()


def test_an_output_in_a_missing_directory_is_73(tmp_path: Path) -> None:
    """The output's directory must exist."""
    done = saslimap("import-saslauthd", GUIDE, "--output", tmp_path / "no" / "saslimap.toml")
    assert 73 == done.returncode
