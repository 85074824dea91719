"""What a hostile review of `mail-filter import-amavis` tried that held up: nothing is
run, nothing hangs, nothing is injected (regression guards; the findings' tests moved to
test_amavis_perl.py, test_amavis_regex.py and test_amavis_import.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from filter.amavis_import import Imported, import_amavis, run

pytestmark = pytest.mark.filterwarnings("ignore")


def _import(tmp_path: Path, conf: str) -> Imported:
    """What the import makes of ``conf`` as the file amavisd.conf."""
    path = tmp_path / "amavisd.conf"
    path.write_text(conf, encoding="utf-8")
    return import_amavis([path], tmp_path / "out")


# --- What held up (regression guards) ------------------------------------------------------


def test_side_effects_are_never_run(tmp_path: Path) -> None:
    """Backticks, system, qx, open, do and require in a config are read, never run."""
    marker = tmp_path / "pwned"
    (tmp_path / "amavisd.conf").write_text(
        f"`touch {marker}1`; system('touch {marker}2'); qx{{touch {marker}3}};"
        f" open(F, '>{marker}4'); do '{marker}5'; require '{marker}6';\n1;\n"
    )
    run([tmp_path / "amavisd.conf"], tmp_path / "out", out=io.StringIO(), err=io.StringIO())
    assert not list(tmp_path.glob("pwned*"))


def test_fifo_and_device_as_read_hash_targets_do_not_hang(tmp_path: Path) -> None:
    """read_hash of a FIFO or /dev/zero, and an include of itself: reported, no hang (exit 1)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "amavisd.conf").write_text(
        f"read_hash(\\%whitelist_sender, '{fifo}');\n"
        f"read_hash(\\%blacklist_sender, '{tmp_path / 'zero'}');\n"
        f"include_config_files('{tmp_path / 'amavisd.conf'}');\n1;\n"
    )
    code = run([tmp_path / "amavisd.conf"], tmp_path / "out", out=io.StringIO(), err=io.StringIO())
    assert code == 1


def test_subject_tag_cannot_inject_toml(tmp_path: Path) -> None:
    """A subject tag holding a quote, a newline and a section header stays one TOML string."""
    import tomllib

    imported = _import(tmp_path, '$sa_spam_subject_tag = "\\"]\\n[server]\\nx=1 ";\n1;\n')
    parsed = tomllib.loads(imported.files["filter.toml"])
    assert "x" not in parsed.get("server", {})
