"""amavisd-new's regular expressions as mail-filter's banned patterns and list entries."""

from __future__ import annotations

import fnmatch
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter.amavis_regex import Untranslatable, address_entries, banned_translation, expand
from filter.banned import name_banned

DEBIAN_DOUBLE = r"\.[^./]*\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\.?$"
UPSTREAM_DOUBLE = (
    r"^(?!cid:).*\.[^./]*[A-Za-z][^./]*\.\s*(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)[.\s]*$"
)


def test_extension_lists_become_name_patterns() -> None:
    """qr'.\\.(exe|vbs)$'i bans *.exe and *.vbs, nothing widened."""
    found = banned_translation(r".\.(exe|vbs|pif)$", "i")
    assert ("*.exe", "*.vbs", "*.pif") == found.names
    assert () == found.types
    assert () == found.notes


def test_debian_double_extension_rule() -> None:
    """Debian's double-extension rule becomes *.*.exe..., noting the widened [^./]*."""
    found = banned_translation(DEBIAN_DOUBLE, "i")
    assert "*.*.exe" == found.names[0]
    assert 9 == len(found.names)
    assert ["[^./]* is read as any characters (mail-filter bans a little more)"] == list(
        found.notes
    )


def test_upstream_double_extension_rule_drops_its_lookahead_and_trailing_blanks() -> None:
    """(?!cid:) and the trailing [.\\s]* go, each named in the notes."""
    found = banned_translation(UPSTREAM_DOUBLE, "i")
    assert "*.*[a-z]*.*exe" == found.names[0]
    assert any("(?!cid:) is left out" in n for n in found.notes)
    assert any("[.\\s]* at the end is left out" in n for n in found.notes)


def test_mime_types_and_file_types_become_types() -> None:
    """^type/subtype$ is a declared type; ^\\.exe-ms$ is what mail-filter detects as MZ."""
    assert ("application/x-msdownload",) == banned_translation(
        r"^application/x-msdownload$", "i"
    ).types
    assert ("application/x-dosexec",) == banned_translation(r"^\.(exe-ms|dll)$").types


def test_file_types_mail_filter_cannot_detect_are_refused_one_by_one() -> None:
    """^\\.(zip|rar)$: zip carries over, rar is refused with the reason."""
    found = banned_translation(r"^\.(zip|rar)$")
    assert ("application/zip",) == found.types
    assert ("the file(1) type .rar: mail-filter does not tell it by content",) == found.refused


def test_an_unanchored_extension_also_bans_the_file_type_it_matches() -> None:
    """qr'\\.exe$' also matched amavisd-new's short type .exe: detected executables are banned."""
    found = banned_translation(r"\.exe$")
    assert ("*.exe",) == found.names
    assert "application/x-dosexec" in found.types


def test_undecipherable_is_flagged() -> None:
    """qr'^UNDECIPHERABLE$' is no name: the caller explains mail-filter's unchecked."""
    found = banned_translation(r"^UNDECIPHERABLE$")
    assert found.undecipherable
    assert () == found.names


def test_a_pattern_mail_filters_matcher_would_never_fire_is_refused() -> None:
    """*.tar.gz: mail-filter lets compressed files' double extensions through, so say so."""
    found = banned_translation(r".\.tar\.gz$", "i")
    assert () == found.names
    assert "never bans" in found.refused[0]


def test_translated_banned_pattern_bans_what_amavis_banned() -> None:
    """*.exe.[a-z]* lets invoice.exe.gz through in mail-filter: the names it lets are said."""
    found = banned_translation(r"\.(exe|vbs)\.[a-z]+$", "i")
    assert ("*.exe.[a-z]*", "*.vbs.[a-z]*") == found.names  # still bans x.exe.zip
    assert name_banned("invoice.exe.zip", found.names)
    assert name_banned("invoice.exe.gz", found.names) is None
    assert 1 == len(found.refused)
    assert "'x.exe.gz'" in found.refused[0]
    assert "'x.vbs.xz'" in found.refused[0]
    assert "'x.exe.bz2'" not in found.refused[0]  # [a-z]+ never matched bz2


def test_case_sensitive_rule_names_the_spelling_it_banned() -> None:
    """qr'\\.EXE\\.[A-Z]+$' banned x.EXE.GZ (not x.exe.gz): the note names that."""
    found = banned_translation(r"\.EXE\.[A-Z]+$")
    assert "'x.EXE.GZ'" in found.refused[0]
    assert "'x.exe.gz'" not in found.refused[0]


def test_no_compressed_note_when_the_rule_never_matched_one() -> None:
    """A rule ending in .exe, or one already refused for .gz, gets no second note."""
    assert () == banned_translation(DEBIAN_DOUBLE, "i").refused
    assert 1 == len(banned_translation(r"\.exe\.(zip|gz)$", "i").refused)


def test_counted_repeats_and_classes_are_spelled_out() -> None:
    """Debian's CLSID rule: {n} repeats and [0-9a-f] classes become a shell pattern."""
    found = banned_translation(r"\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?$", "i")
    assert 2 == len(found.names)
    assert fnmatch.fnmatchcase("x{0123abcd-0000-1111-2222-0123456789ab}", found.names[1])


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a+)+\1", r"\1"),
        ("(" * 30 + "a" + ")" * 30, "nested deeper"),
        ("(a|b|c|d)(a|b|c|d)(a|b|c|d)(a|b|c|d)(a|b|c|d)", "more than 256"),
        (r"a$b", "in the middle"),
        (r"[[:alpha:]]", "POSIX"),
        (r"x{100}", "too often"),
    ],
)
def test_what_cannot_be_translated_says_why(pattern: str, reason: str) -> None:
    """Back-references, deep groups, explosions, misplaced anchors: refused with the reason."""
    with pytest.raises(Untranslatable, match=re.escape(reason)):
        banned_translation(pattern)


def test_extended_mode_ignores_blanks_and_comments() -> None:
    """The x flag: Debian's long commented-out list reads as its alternatives."""
    found = banned_translation(".\\.(ade|adp|\n  bat|cmd)$  # long list", "ix")
    assert ("*.ade", "*.adp", "*.bat", "*.cmd") == found.names


@pytest.mark.parametrize(
    ("pattern", "entries"),
    [
        (r"^user@example\.com$", ["user@example.com"]),
        (r"@example\.com$", ["example.com"]),
        (r"^.*@example\.com$", ["example.com"]),
        (r"(?i)^(a|b)@x\.org$", ["a@x.org", "b@x.org"]),
        (r"^postmaster@", ["postmaster@"]),
    ],
)
def test_exact_address_patterns_become_list_entries(pattern: str, entries: list[str]) -> None:
    """Only exact forms: an address, @domain (that domain) and user@ (any domain)."""
    assert (entries, []) == address_entries(pattern, "i")


def test_inexact_address_patterns_are_refused() -> None:
    """\\.example\\.com$ matches subdomains only, which no list entry says: refused."""
    assert ([], ["*.example.com: not one exact address, user@ or @domain"]) == address_entries(
        r"\.example\.com$", "i"
    )
    with pytest.raises(Untranslatable):
        address_entries(r"^[a-z]+@example\.com$")


_PATTERNS = [
    DEBIAN_DOUBLE,
    UPSTREAM_DOUBLE,
    r".\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$",
    r"\{[0-9a-f]{2}(-[0-9a-f]{1}){2}\}?$",
    r"^[^.]+\.(x|y)q?$",
    r"a\d+\.b$",
    r"^\s*evil\.ab$",
    r"[A-Z]c\.x\b",
    r"^(a|b)?c{1,3}\.[xyz]+$",
    r"^[\w.-]+\.(js|vbs)$",
    r"(foo|bar)+\.exe",
    r"[\d\s]{2}z$",
    r"x\.(?:exe|com)\b",
]


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_whatever_the_regex_bans_by_name_mail_filter_bans_too(data: st.DataObject) -> None:
    """Never narrower: every name the regex matches is banned by the translated patterns.

    mail-filter compares names without white space around them and without trailing
    dots: names that begin with white space, or end in white space other than a blank,
    are the one documented exception.
    """
    pattern = data.draw(st.sampled_from(_PATTERNS))
    name = data.draw(st.from_regex(re.compile(pattern, re.I)))
    stripped = name.rstrip(". ")
    if not stripped.strip() or stripped[-1].isspace() or name[0].isspace():
        return
    found = banned_translation(pattern, "i")
    assert () == found.refused
    assert name_banned(name, found.names) is not None, (pattern, name, found)


def test_expansion_keeps_anchors_apart_from_atoms() -> None:
    """^ and $ become the alternative's anchors, not characters."""
    (alternative,) = expand(r"^ab$").alternatives
    assert (True, True, "ab") == (alternative.start, alternative.end, alternative.literal())


def test_a_rule_slow_to_match_is_not_run_on_types() -> None:
    """A nested quantifier (exponential for a backtracking matcher) takes no time here."""
    started = time.monotonic()
    found = banned_translation(r"^(a+)+\.(x|a+a+)+$")
    assert time.monotonic() - started < 2
    assert found.names
