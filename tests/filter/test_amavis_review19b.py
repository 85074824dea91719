"""Hostile review 19b of `mail-filter import-amavis`: proving tests for open findings.

Each test states the behaviour the import should have; the ones marked xfail(strict=True)
fail today (the finding is real) and will XPASS -> fail once fixed, so remove the mark then.
F2, F3 and F5 are fixed; their tests moved to test_amavis_perl.py, test_amavis_regex.py
and test_amavis_import.py.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from filter.amavis_import import Imported, import_amavis, run
from filter.lookup import AddressList

pytestmark = pytest.mark.filterwarnings("ignore")


def _import(tmp_path: Path, conf: str) -> Imported:
    """What the import makes of ``conf`` as the file amavisd.conf."""
    path = tmp_path / "amavisd.conf"
    path.write_text(conf, encoding="utf-8")
    return import_amavis([path], tmp_path / "out")


def _whitelist(imported: Imported) -> AddressList:
    """The imported whitelist file, parsed as mail-filter reads it."""
    return AddressList.parse("whitelist", imported.files.get("whitelist", "").splitlines())


# --- F1: whitelist widened to everyone / to every subdomain ---------------------------


@pytest.mark.xfail(strict=True, reason="F1a: '#' inside an entry starts a list-file comment")
def test_hash_entry_with_hash_sign_does_not_whitelist_everyone(tmp_path: Path) -> None:
    imported = _import(tmp_path, "@whitelist_sender_maps = ( { '.#x' => 1 } );\n1;\n")
    assert not _whitelist(imported).contains("spammer@evil.example")


@pytest.mark.xfail(strict=True, reason="F1a: same through an ACL list")
def test_acl_entry_with_hash_sign_does_not_whitelist_everyone(tmp_path: Path) -> None:
    imported = _import(tmp_path, "@whitelist_sender_maps = ( ['.#x'] );\n1;\n")
    assert not _whitelist(imported).contains("spammer@evil.example")


@pytest.mark.xfail(strict=True, reason="F1b: regex '@\\.$' becomes the catch-all entry '.'")
def test_regex_at_dot_end_does_not_whitelist_everyone(tmp_path: Path) -> None:
    imported = _import(tmp_path, "@whitelist_sender_maps = ( new_RE( qr'\\@\\.$'i ) );\n1;\n")
    assert not _whitelist(imported).contains("spammer@evil.example")


@pytest.mark.xfail(strict=True, reason="F1b: regex '@\\.example\\.com$' becomes .example.com")
def test_regex_at_dot_domain_does_not_widen_to_subdomains(tmp_path: Path) -> None:
    conf = "@whitelist_sender_maps = ( new_RE( qr'\\@\\.example\\.com$'i ) );\n1;\n"
    imported = _import(tmp_path, conf)
    # Perl's /@\.example\.com$/ never matches a@sub.example.com or a@example.com
    assert not _whitelist(imported).contains("a@sub.example.com")
    assert not _whitelist(imported).contains("a@example.com")


# --- F4: crash instead of a clean failure -------------------------------------------------


@pytest.mark.xfail(strict=True, reason="F4: a lone surrogate escapes to a UnicodeEncodeError")
def test_surrogate_in_subject_tag_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "amavisd.conf"
    path.write_text('$sa_spam_subject_tag = "\\x{D800}***SPAM*** ";\n1;\n')
    code = run([path], tmp_path / "out", out=io.StringIO(), err=io.StringIO())
    assert code in (0, 1, 73)


# --- F6: --output through a symlink (the command runs as root) ----------------------------


@pytest.mark.xfail(strict=True, reason="F6: an --output that is a symlink is followed")
def test_output_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "amavisd.conf").write_text("$final_banned_destiny = D_REJECT;\n1;\n")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    run([tmp_path / "amavisd.conf"], tmp_path / "out", out=io.StringIO(), err=io.StringIO())
    assert os.listdir(target) == []


# --- What held up (regression guards) ------------------------------------------------------


def test_side_effects_are_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "amavisd.conf").write_text(
        f"`touch {marker}1`; system('touch {marker}2'); qx{{touch {marker}3}};"
        f" open(F, '>{marker}4'); do '{marker}5'; require '{marker}6';\n1;\n"
    )
    run([tmp_path / "amavisd.conf"], tmp_path / "out", out=io.StringIO(), err=io.StringIO())
    assert not list(tmp_path.glob("pwned*"))


def test_fifo_and_device_as_read_hash_targets_do_not_hang(tmp_path: Path) -> None:
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
    import tomllib

    imported = _import(tmp_path, '$sa_spam_subject_tag = "\\"]\\n[server]\\nx=1 ";\n1;\n')
    parsed = tomllib.loads(imported.files["filter.toml"])
    assert "x" not in parsed.get("server", {})
