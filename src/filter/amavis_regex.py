"""amavisd-new's regular expressions, carried over as mail-filter's patterns where safe.

This module owns translating the Perl regular expressions of an amavisd-new
configuration into what mail-filter matches with: shell-style name patterns and
MIME types for banned attachments (``$banned_filename_re``), and list entries
for sender and recipient lists (``$whitelist_sender_re`` and the like).

Only a subset translates: literal characters, ``.``, character classes,
groups with alternatives, anchors and the usual quantifiers.  Every pattern
produced matches at least what the regular expression matched, never less: a
construct that would need more than a shell pattern can say (``[^./]*``, a
lookahead, ``\\b``) is widened, and each widening is named in the result's
notes.  What cannot be widened safely (a back-reference, an unanchored MIME
type pattern, a file(1) type mail-filter does not tell by content) is refused
with the reason.  One narrowing is mail-filter's own and is reported, not
hidden: its matcher lets a double extension ending in a compression or
signature extension through (``x.exe.gz`` against ``*.exe.*``), so the names
of that kind the rule banned are listed as not carried.  Pure: strings in,
patterns out; bounded in pattern length and in the number of alternatives a
pattern expands to.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

from filter.banned import _SAFE_SECOND, DEFAULT_TYPES, name_banned

__all__ = [
    "SHORT_TYPES",
    "Alternative",
    "BannedTranslation",
    "Untranslatable",
    "address_entries",
    "banned_translation",
    "expand",
]

MAX_PATTERN = 4000  # characters of one regular expression
MAX_ALTERNATIVES = 256  # shell patterns one regular expression may expand to
MAX_GROUP_DEPTH = 20
MAX_REPEAT = 64

# amavisd-new's file(1) short types (Amavis::Conf's $map_full_type_to_short_type_re)
# that mail-filter also tells from content (filter.signatures.detect), and how it names them.
SHORT_TYPES = {
    "exe": ("application/x-dosexec", "application/x-executable"),
    "exe-ms": ("application/x-dosexec",),
    "dll": ("application/x-dosexec",),
    "exe-unix": ("application/x-executable",),
    "zip": ("application/zip",),
    "pdf": ("application/pdf",),
}
# Every short type amavisd-new 2.13 gives, for telling what a pattern would have matched.
_ALL_SHORT_TYPES = (  # noqa: SIM905 - a word list reads better as words
    "txt mo pgp pgp.asc pgp.enc mail image jpg gif png tif pcx bmp svg audio mpa mp2 mp3 3gpp "
    "m4a m4b flac oga ogg movie mpv mpg mkv wmv avi ani wav swf html xml sgml ps pdf rtf doc "
    "cdf-ms wmf lat dvi java url kmz f gz bz bz2 xz lzma lrz lzo lz4 z zip 7z rar lha arc arj "
    "ace zoo tar cpio sit deb a rpm tnef cab installshield iso uue hqx asc exe dll exe-ms "
    "exe-unix exe-vms so o zst dat empty dir"
).split()
# MIME types mail-filter detects or bans by default: what an unanchored pattern may also hit.
_KNOWN_TYPES = tuple(dict.fromkeys((*DEFAULT_TYPES, *(t for v in SHORT_TYPES.values() for t in v))))


class Untranslatable(ValueError):
    """A regular expression (or one of its alternatives) that cannot be carried over."""


# Atoms of an expanded alternative.
_ANY = ("?",)  # one character
_STAR = ("*",)  # any characters
_BOL = ("^",)
_EOL = ("$",)
# ("c", char) | ("[", class body[, its characters]) | ("w", ASCII characters: any one,
# for a class with \d, \w or \s) | _ANY | _STAR | _BOL | _EOL, and
# while expanding ("~", characters, as written): any number of those characters.
Atom = tuple[str, ...]
Sequence_ = tuple[Atom, ...]


@dataclass(frozen=True)
class Alternative:
    """One expansion of a regular expression: anchored or not at each end, then atoms."""

    start: bool
    end: bool
    atoms: Sequence_

    def literal(self) -> str | None:
        """The text it matches when it is plain characters only, else None."""
        if all(atom[0] == "c" for atom in self.atoms):
            return "".join(atom[1] for atom in self.atoms)
        return None

    def glob(self) -> str:
        """As a shell pattern (lower case: mail-filter compares lower-cased names)."""
        out = [] if self.start else ["*"]
        for atom in self.atoms:
            if atom[0] == "c":
                char = atom[1].lower()
                out.append(f"[{char}]" if char in "*?[" else char)
            elif atom[0] == "[":
                out.append(f"[{atom[1]}]")
            elif atom[0] == "w":
                out.append("?")
            else:
                out.append(atom[0])
        if not self.end:
            out.append("*")
        return re.sub(r"\*{2,}", "*", "".join(out))


@dataclass(frozen=True)
class Expansion:
    """A regular expression's alternatives, and the widenings made to get them."""

    alternatives: tuple[Alternative, ...]
    notes: tuple[str, ...]


# ---------------------------------------------------------------------------
# Parsing a regular expression into alternatives
# ---------------------------------------------------------------------------

_CLASS_ESCAPES = {
    "d": "0123456789",
    "w": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
    "s": " \t\n\r\f\v",
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "e": "\x1b", "a": "\a", "0": "\0"}
_WIDER = " (mail-filter bans a little more)"
_TRAILING = frozenset(". \t\n\r\f\v")
_ZERO_WIDTH = "bB"  # \b, \B: dropped (widening)
_REFUSED_ESCAPES = "QElLuUpPkgKGNhvRXCxo123456789"


class _Parser:
    def __init__(self, pattern: str, flags: str) -> None:
        self.p = pattern
        self.i = 0
        self.extended = "x" in flags
        self.notes: list[str] = []
        self.depth = 0

    def fail(self, reason: str) -> Untranslatable:
        return Untranslatable(reason)

    def peek(self) -> str:
        self.skip_blanks()
        return self.p[self.i] if self.i < len(self.p) else ""

    def skip_blanks(self) -> None:
        if not self.extended:
            return
        while self.i < len(self.p):
            c = self.p[self.i]
            if c.isspace():
                self.i += 1
            elif c == "#":
                end = self.p.find("\n", self.i)
                self.i = len(self.p) if end < 0 else end + 1
            else:
                return

    def alternation(self) -> list[Sequence_]:
        out = self.sequence()
        while self.peek() == "|":
            self.i += 1
            out = _unique(out + self.sequence())
            _bound(out)
        return out

    def sequence(self) -> list[Sequence_]:
        out: list[Sequence_] = [()]
        while True:
            c = self.peek()
            if c in ("", "|", ")"):
                return out
            start = self.i
            piece = self.atom()
            piece = self.quantified(piece, start)
            out = _unique([a + b for a in out for b in piece])
            _bound(out)

    def atom(self) -> list[Sequence_]:
        c = self.p[self.i]
        if c == "(":
            return self.group()
        if c == "[":
            return self.char_class()
        self.i += 1
        if c == ".":
            return [(_ANY,)]
        if c == "^":
            return [(_BOL,)]
        if c == "$":
            return [(_EOL,)]
        if c in "*+?{":
            raise self.fail(f"a quantifier {c!r} with nothing before it")
        if c == "\\":
            return self.escape()
        return [(("c", c),)]

    def escape(self) -> list[Sequence_]:
        if self.i >= len(self.p):
            raise self.fail("a pattern ending in a backslash")
        c = self.p[self.i]
        self.i += 1
        if c == "A":
            return [(_BOL,)]
        if c in "zZ":
            return [(_EOL,)]
        if c in _ZERO_WIDTH:
            self.notes.append(f"\\{c} (a word boundary) is left out{_WIDER}")
            return [()]
        if c in _CLASS_ESCAPES:
            # Perl's \d, \w and \s also match Unicode digits, letters and spaces, which
            # no shell class lists: any one character (the ASCII ones kept for "\s*$").
            return [(("w", "".join(sorted(_CLASS_ESCAPES[c]))),)]
        if c in "DWS":
            return [(("[", _class_body(set(_CLASS_ESCAPES[c.lower()]), negated=True)),)]
        if c == "x":
            return [(("c", self.hex_escape()),)]
        if c in _CHAR_ESCAPES:
            return [(("c", _CHAR_ESCAPES[c]),)]
        if c.isalnum() or c in _REFUSED_ESCAPES:
            raise self.fail(f"the escape \\{c}")
        return [(("c", c),)]

    def hex_escape(self) -> str:
        braced = re.compile(r"\{([0-9a-fA-F]{1,6})\}|([0-9a-fA-F]{1,2})").match(self.p, self.i)
        if not braced:
            raise self.fail("a \\x escape without digits")
        self.i = braced.end()
        return chr(min(int(braced.group(1) or braced.group(2), 16), 0x10FFFF))

    def group(self) -> list[Sequence_]:
        self.i += 1
        self.depth += 1
        if self.depth > MAX_GROUP_DEPTH:
            raise self.fail(f"groups nested deeper than {MAX_GROUP_DEPTH}")
        try:
            lookaround = False
            if self.p.startswith("?", self.i):
                flags = re.compile(r"\?\^?([a-zA-Z]*)(?:-[a-zA-Z]*)?([:)])").match(self.p, self.i)
                if self.p.startswith("?#", self.i):
                    end = self.p.find(")", self.i)
                    if end < 0:
                        raise self.fail("a (?# comment without its )")
                    self.i = end + 1
                    return [()]
                if flags:
                    if "x" in flags.group(1):
                        self.extended = True
                    self.i = flags.end()
                    if flags.group(2) == ")":
                        return [()]  # (?i) and the like: flags for the rest
                elif self.p.startswith(("?=", "?!"), self.i):
                    self.i += 2
                    lookaround = True
                elif self.p.startswith(("?<=", "?<!"), self.i):
                    self.i += 3
                    lookaround = True
                else:
                    named = re.compile(r"\?(?:P?<[A-Za-z_]\w*>|'[A-Za-z_]\w*')").match(
                        self.p, self.i
                    )
                    if not named:
                        raise self.fail(f"the group ({self.p[self.i : self.i + 3]}...")
                    self.i = named.end()
            start = self.i
            inner = self.alternation()
            if self.peek() != ")":
                raise self.fail("a group without its )")
            self.i += 1
            if lookaround:
                condition = self.p[start - 2 : self.i]
                self.notes.append(f"the condition ({condition} is left out{_WIDER}")
                return [()]
            return inner
        finally:
            self.depth -= 1

    def char_class(self) -> list[Sequence_]:
        self.i += 1
        negated = self.p.startswith("^", self.i)
        if negated:
            self.i += 1
        chars: set[str] = set()
        wide = False  # holds \d, \w or \s, which match Unicode characters too
        first = True
        while True:
            if self.i >= len(self.p):
                raise self.fail("a character class without its ]")
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[" and self.p.startswith(("[:", "[=", "[."), self.i):
                raise self.fail("a POSIX class [:...:]")
            low = self.class_char()
            if isinstance(low, set):
                chars |= low
                wide = True
                continue
            if self.p.startswith("-", self.i) and not self.p.startswith("-]", self.i):
                self.i += 1
                high = self.class_char()
                if isinstance(high, set):
                    raise self.fail("a range ending in a class escape")
                if ord(high) < ord(low):
                    raise self.fail(f"the range {low}-{high}")
                if ord(high) > 0x7F or ord(high) - ord(low) > 0x7F:
                    raise self.fail(f"the range {low}-{high} beyond ASCII")
                chars |= {chr(n) for n in range(ord(low), ord(high) + 1)}
            else:
                chars.add(low)
        if wide and not negated:
            return [(("w", "".join(sorted(chars))),)]
        body = _class_body(chars, negated)
        if not negated and len(chars) == 1:
            return [(("c", next(iter(chars))),)]
        if negated:
            return [(("[", body),)]
        return [(("[", body, "".join(sorted(chars))),)]

    def class_char(self) -> str | set[str]:
        c = self.p[self.i]
        self.i += 1
        if c != "\\":
            return c
        if self.i >= len(self.p):
            raise self.fail("a character class ending in a backslash")
        e = self.p[self.i]
        self.i += 1
        if e in _CLASS_ESCAPES:
            return set(_CLASS_ESCAPES[e])
        if e == "x":
            return self.hex_escape()
        if e in _CHAR_ESCAPES:
            return _CHAR_ESCAPES[e]
        if e.isalnum():
            raise self.fail(f"the escape \\{e} in a character class")
        return e

    def quantified(self, piece: list[Sequence_], start: int) -> list[Sequence_]:
        c = self.peek()
        written = self.p[start : self.i]
        if not c:
            return piece
        if c == "?":
            self.i += 1
            out = _unique([(), *piece])
        elif c in "*+":
            self.i += 1
            star = self.star(piece, f"{written}{c}")
            out = [(star,)] if c == "*" else [(*p, star) for p in piece]
        elif c == "{":
            counted = re.compile(r"\{(\d+)(,(\d*))?\}").match(self.p, self.i)
            if not counted:
                return piece  # a literal { in Perl
            self.i = counted.end()
            low = int(counted.group(1))
            high = (
                low
                if counted.group(2) is None
                else (int(counted.group(3)) if counted.group(3) else None)
            )
            if low > MAX_REPEAT:
                raise self.fail(f"{written}{{{low},...}} repeats too often to spell out")
            if high is not None and high < low:
                raise self.fail(f"the count {counted.group()}")
            if high is not None and high - low <= 3:
                out = []
                for count in range(low, high + 1):
                    out = _unique(out + _power(piece, count))
                    _bound(out)
            else:
                star = self.star(piece, f"{written}{counted.group()}")
                out = [(*p, star) for p in _power(piece, low)]
        else:
            return piece
        if self.peek() in ("?", "+"):
            self.i += 1  # lazy or possessive: the same strings match
        _bound(out)
        return out

    def star(self, piece: list[Sequence_], written: str) -> Atom:
        """What ``piece`` repeated any number of times becomes: any characters, noted;
        or, for one character or class, a mark :func:`expand` resolves by position."""
        if piece == [(_ANY,)]:
            return _STAR
        if len(piece) == 1 and len(piece[0]) == 1 and piece[0][0][0] in ("c", "[", "w"):
            atom = piece[0][0]
            chars = atom[1] if atom[0] in ("c", "w") else atom[2] if len(atom) > 2 else ""
            if chars:
                return ("~", chars, written)
        self.notes.append(f"{written} is read as any characters{_WIDER}")
        return _STAR


def _power(piece: list[Sequence_], count: int) -> list[Sequence_]:
    out: list[Sequence_] = [()]
    for _ in range(count):
        out = _unique([a + b for a in out for b in piece])
        _bound(out)
    return out


def _unique(items: list[Sequence_]) -> list[Sequence_]:
    return list(dict.fromkeys(items))


def _bound(items: Sequence[object]) -> None:
    if len(items) > MAX_ALTERNATIVES:
        raise Untranslatable(f"expands to more than {MAX_ALTERNATIVES} patterns")


def _class_body(chars: set[str], negated: bool) -> str:
    """A shell pattern class for what the regular expression's class matches, lower-cased.

    Names are lower-cased before matching: a positive class gets each character's
    lower case; a negated one keeps only characters all of whose upper-case forms
    it also excludes, so no name it did not refuse is refused after lower-casing.
    """
    if negated:
        kept = {c for c in chars if not c.isupper() and (c.upper() in chars or c.upper() == c)}
    else:
        kept = {c.lower() for c in chars}
    if not kept and not negated:
        raise Untranslatable("an empty character class")
    ordered = sorted(kept)
    runs: list[str] = []
    n = 0
    while n < len(ordered):
        m = n
        while m + 1 < len(ordered) and ord(ordered[m + 1]) == ord(ordered[m]) + 1:
            m += 1
        if m - n >= 2 and ordered[n] not in "-]!^" and ordered[m] not in "-]!^":
            runs.append(f"{ordered[n]}-{ordered[m]}")
        else:
            runs += [c for c in ordered[n : m + 1]]
        n = m + 1
    # ] first (literal there), - last, ! and ^ never first of a positive class.
    body = [r for r in runs if r not in ("]", "-", "!", "^")]
    front = ["]"] if "]" in runs else []
    tail = [c for c in ("!", "^") if c in runs] + (["-"] if "-" in runs else [])
    text = "".join(front + body + tail)
    if not negated and text.startswith(("!", "^")):
        text = text[1:] + text[0]
    return ("!" if negated else "") + text


def expand(pattern: str, flags: str = "") -> Expansion:
    """The alternatives a regular expression matches, as shell-pattern atoms.

    Raises :class:`Untranslatable` for what the subset does not cover.
    """
    if len(pattern) > MAX_PATTERN:
        raise Untranslatable(f"longer than {MAX_PATTERN} characters")
    parser = _Parser(pattern, flags)
    sequences = parser.alternation()
    if parser.peek() == ")":
        raise Untranslatable("a ) without its (")
    out: list[Alternative] = []
    for sequence in sequences:
        atoms = list(sequence)
        start = end = False
        while atoms and atoms[0] == _BOL:
            start = True
            atoms.pop(0)
        while atoms and atoms[-1] == _EOL:
            end = True
            atoms.pop()
        if _BOL in atoms or _EOL in atoms:
            raise Untranslatable("a ^ or $ in the middle of the pattern")
        notes = parser.notes
        if end:
            while atoms and atoms[-1][0] == "~" and set(atoms[-1][1]) <= _TRAILING:
                # mail-filter strips dots and spaces from the end of a name, and no other
                # white space can end a Windows file name.
                notes.append(
                    f"{atoms[-1][2]} at the end is left out: names are compared without"
                    " trailing dots and spaces (one ending in a tab or line break, which"
                    " Windows refuses, is not caught)"
                )
                atoms.pop()
        for n, atom in enumerate(atoms):
            if atom[0] == "~":
                notes.append(f"{atom[2]} is read as any characters{_WIDER}")
                atoms[n] = _STAR
        if any(atom[0] == "w" for atom in atoms):
            notes.append(
                f"\\d, \\w and \\s are read as any character (Perl's also match"
                f" Unicode ones){_WIDER}"
            )
        collapsed: list[Atom] = []
        for atom in atoms:
            if not (atom == _STAR and collapsed and collapsed[-1] == _STAR):
                collapsed.append(atom)
        # "^.*x" is "x" anywhere, "x.*$" is "x" followed by anything: say so once.
        if start and collapsed and collapsed[0] == _STAR:
            start = False
            collapsed.pop(0)
        if end and collapsed and collapsed[-1] == _STAR:
            end = False
            collapsed.pop()
        out.append(Alternative(start, end, tuple(collapsed)))
    return Expansion(tuple(dict.fromkeys(out)), tuple(dict.fromkeys(parser.notes)))


# ---------------------------------------------------------------------------
# Banned names and types
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BannedTranslation:
    """What one banned-file regular expression becomes in ``[banned]``."""

    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # widenings: mail-filter bans somewhat more
    refused: tuple[str, ...] = ()  # alternatives not carried over, each with why
    undecipherable: bool = False  # qr'^UNDECIPHERABLE$'


_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_SHORT_TYPE = re.compile(r"\.[a-z0-9][a-z0-9.+-]*")


# A group with a quantifier inside, itself quantified: Python's matcher could take
# exponential time on it; such a rule is compared by its shell patterns instead.
_NESTED = re.compile(r"\((?:[^()\\]|\\.)*[*+}](?:[^()\\]|\\.)*\)\s*[*+{]")
_FLAGS = {"i": re.I, "x": re.X, "s": re.S, "m": re.M}


def _also_matches(pattern: str, flags: str, alternatives: Sequence[Alternative], text: str) -> bool:
    """Whether the rule matches ``text`` (a short type or a MIME type), as Perl would.

    Python's ``re`` reads this subset as Perl does; where it cannot (or could be
    slow), the rule's shell patterns answer, which match at least as much.
    """
    if not _NESTED.search(pattern):
        flag = 0
        for letter in flags:
            flag |= _FLAGS.get(letter, 0)
        try:
            compiled = re.compile(pattern.replace("\\z", "\\Z"), flag)
        except (re.error, OverflowError, RecursionError):
            compiled = None
        if compiled is not None:
            return compiled.search(text) is not None
    return any(fnmatch.fnmatchcase(text, a.glob()) for a in alternatives)


def _representative(alternative: Alternative, *, lower: bool = True) -> str:
    """A name the alternative matches (what to check mail-filter's matcher against)."""
    out = []
    for atom in alternative.atoms:
        if atom[0] == "c":
            out.append(atom[1].lower() if lower else atom[1])
        elif atom[0] == "[":
            out.append(next((c for c in "xa0_-.$" if fnmatch.fnmatchcase(c, f"[{atom[1]}]")), "x"))
        elif atom[0] == "w":
            out.append(atom[1][0] if atom[1] else "x")
        else:
            out.append("x")
    return "".join(out)


def _compressed_names(alternative: Alternative) -> list[str]:
    """Names like the alternative's, ending in a compression or signature extension.

    mail-filter's matcher lets ``report.pdf.gz`` through a pattern with two dots
    (:func:`filter.banned.name_banned`); these are the names to ask the rule
    whether amavisd-new banned one of them all the same.
    """
    names: list[str] = []
    for lower in (True, False):
        example = _representative(alternative, lower=lower) or "x"
        if not alternative.start:
            example = "x" + example
        base = example.rsplit(".", 1)[0] if "." in example else ""
        for second in sorted(_SAFE_SECOND):
            for ending in (second, second.upper()) if not lower else (second,):
                names.append(f"{example}.{ending}")
                if base:
                    names.append(f"{base}.{ending}")
    return list(dict.fromkeys(names))


def _trimmed(alternative: Alternative) -> Alternative:
    """Without trailing literal dots and spaces: mail-filter strips them from names first."""
    atoms = list(alternative.atoms)
    if alternative.end:
        while atoms and atoms[-1] in (("c", "."), ("c", " ")):
            atoms.pop()
    return Alternative(alternative.start, alternative.end, tuple(atoms))


def banned_translation(pattern: str, flags: str = "") -> BannedTranslation:
    """``[banned]`` names and types for one amavisd-new banned-file regular expression.

    amavisd-new matches each rule against every part's names, declared MIME
    type and file(1) short type (``.exe``, ``.exe-ms``...); an alternative
    anchored at both ends to a MIME type or to a short type becomes a type,
    everything else a name pattern.  Raises :class:`Untranslatable` when the
    expression as a whole is beyond the subset.
    """
    expansion = expand(pattern, flags)
    names: list[str] = []
    types: list[str] = []
    notes = list(expansion.notes)
    refused: list[str] = []
    kept: list[Alternative] = []  # the alternatives carried as name patterns
    dropped: list[str] = []  # name patterns refused for a double extension (said already)
    undecipherable = False
    for alternative in expansion.alternatives:
        literal = alternative.literal()
        whole = alternative.start and alternative.end
        lowered = literal.lower() if literal is not None else None
        if whole and lowered == "undecipherable":
            undecipherable = True
            continue
        if whole and lowered is not None and _SHORT_TYPE.fullmatch(lowered):
            found = SHORT_TYPES.get(lowered[1:])
            if found is None:
                refused.append(
                    f"the file(1) type {lowered}: mail-filter does not tell it by content"
                )
            else:
                types += found
            continue
        if whole and lowered is not None and _MIME_TYPE.fullmatch(lowered):
            types.append(lowered)
            continue
        if any(atom == ("c", "/") for atom in alternative.atoms):
            refused.append(
                f"{alternative.glob()}: a MIME type pattern (mail-filter compares "
                "whole types) or a name with a /"
            )
            continue
        glob = alternative.glob()
        trimmed = _trimmed(alternative)
        name_glob = trimmed.glob()
        if name_glob.startswith("*?"):
            name_glob = "*" + name_glob[2:]  # "one character, then ..." at the start: any
        if name_glob in ("", "*"):
            refused.append(f"{glob}: it would ban every part that has a name")
            continue
        example = _representative(trimmed) or "x"
        if not alternative.start:
            example = "x" + example
        if name_banned(example, (name_glob,)) is None:
            refused.append(
                f"{name_glob}: mail-filter never bans a name like {example!r} by a"
                " pattern (a compressed file's double extension is allowed)"
            )
            dropped.append(name_glob)
            continue
        names.append(name_glob)
        kept.append(trimmed)
    # A compressed file's double extension is allowed by mail-filter (x.exe.gz against
    # *.exe.*): say which names amavisd-new banned that it now lets through.
    let_through = [
        name
        for alternative in kept
        for name in _compressed_names(alternative)
        if _also_matches(pattern, flags, expansion.alternatives, name)
        and name_banned(name, names) is None
        and not any(fnmatch.fnmatchcase(name.lower(), glob) for glob in dropped)
    ]
    if let_through:
        first: dict[str, str] = {}  # each name once, as the rule spells it
        for name in let_through:
            first.setdefault(name.lower(), name)
        shown = ", ".join(repr(n) for n in first.values())
        second = ", ".join(f".{s}" for s in sorted(_SAFE_SECOND))
        refused.append(
            f"names like {shown}: amavisd-new banned them, mail-filter does not (it lets a"
            f" double extension ending {second} through as a compressed or signed file)"
        )
    # amavisd-new also tries every rule on file(1) short types and on MIME types.
    spelled = {(a.literal() or "").lower() for a in expansion.alternatives if a.start and a.end}
    for text in (*(f".{short}" for short in _ALL_SHORT_TYPES), *_KNOWN_TYPES):
        if text in spelled or not _also_matches(pattern, flags, expansion.alternatives, text):
            continue
        short = text[1:] if text.startswith(".") else None
        if short is None:
            types.append(text)
            notes.append(f"it also matches the MIME type {text}")
        elif short in SHORT_TYPES:
            types += SHORT_TYPES[short]
            notes.append(f"it also matches amavisd-new's file(1) type {text}")
        else:
            refused.append(
                f"it also matches amavisd-new's file(1) type {text}, which"
                " mail-filter does not tell by content"
            )
    return BannedTranslation(
        tuple(dict.fromkeys(names)), tuple(dict.fromkeys(types)), tuple(dict.fromkeys(notes)),
        tuple(dict.fromkeys(refused)), undecipherable,
    )  # fmt: skip


# ---------------------------------------------------------------------------
# List entries
# ---------------------------------------------------------------------------


def address_entries(pattern: str, flags: str = "") -> tuple[list[str], list[str]]:
    """List entries (``user@dom``, ``dom``, ``user@``) for an address regular expression,
    and the alternatives refused, each with why.

    Only exact forms translate: ``^user@example\\.com$``, ``@example\\.com$`` (that
    domain) and ``^user@`` (that user at any domain).
    """
    entries: list[str] = []
    refused: list[str] = []
    expansion = expand(pattern, flags)
    if expansion.notes:
        raise Untranslatable("; ".join(expansion.notes) + ": a list entry must be exact")
    for alternative in expansion.alternatives:
        literal = alternative.literal()
        text = literal.lower() if literal is not None else None
        if text is None or text.count("@") != 1 or any(c.isspace() for c in text):
            refused.append(f"{alternative.glob()}: not one exact address, user@ or @domain")
            continue
        user, _, domain = text.partition("@")
        if domain and (domain.startswith(".") or domain.endswith(".") or ".." in domain):
            # "@\.$" or "@\.example\.com$" match no real address in Perl; as list
            # entries "." and ".example.com" would mean every sender, or every subdomain.
            refused.append(f"{alternative.glob()}: a domain starting or ending with a dot")
            continue
        if alternative.start and alternative.end and user and domain:
            entries.append(text)
        elif not alternative.start and alternative.end and not user and domain:
            entries.append(domain)
        elif alternative.start and not alternative.end and user and not domain:
            entries.append(f"{user}@")
        else:
            refused.append(f"{alternative.glob()}: not one exact address, user@ or @domain")
    return entries, refused
