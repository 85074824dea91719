"""Perl tokens, for the subset of Perl that amavisd-new's configuration files use.

This module owns cutting Perl source text into tokens the way perl would:
quoting constructs with any delimiter (``q()``, ``qq{}``, ``qw//``, ``qr'...'``,
``s{..}{..}``), here-documents, POD blocks, comments, ``__END__``, and telling a
``/`` that divides from one that starts a pattern by what came before.  A
construct left open (a string without its closing quote) or a file past the
token limit raises :class:`~filter.amavis_values.Trouble` with its line.  Pure:
text in, tokens out.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, replace

from filter.amavis_values import Limits, Trouble


@dataclass(frozen=True)
class Token:
    """One lexical token: kind, text (unescaped for literals), line, and extra details."""

    kind: str  # var word num sq dq qw re cmd code op end
    text: str
    line: int
    extra: str = ""  # regex: flags; re op ('qr', 'm', 's', 'tr', '/'); dq: 'heredoc'


_IDENT = re.compile(r"[A-Za-z_]\w*(?:(?:::|')[A-Za-z_]\w*)*(?:::)?")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F_]+|0[bB][01_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?")
_OPERATORS = sorted(
    (
        "<=>", "**=", "||=", "&&=", "//=", "...", "<<=", ">>=", "=>", "==", "!=", "<=",
        ">=", "=~", "!~", "->", "++", "--", "**", "||", "&&", "//", "..", "::", "+=", "-=",
        "*=", "/=", ".=", "%=", "x=", "|=", "&=", "^=", "<<", ">>", "=", "+", "-", "*",
        "/", ".", "%", "<", ">", "!", "~", "\\", "?", ":", ",", ";", "(", ")", "[", "]",
        "{", "}", "|", "&", "^", "@", "$",
    ),
    key=len,
    reverse=True,
)  # fmt: skip
_OPERATOR = re.compile("|".join(re.escape(op) for op in _OPERATORS))  # longest first
_POD_END = re.compile(r"^=cut\b.*$", re.M)
_CLOSERS = {"(": ")", "[": "]", "{": "}", "<": ">"}
# After these words an expression starts, so a / begins a pattern, not a division.
_EXPRESSION_WORDS = frozenset((
    "and", "or", "not", "xor", "if", "unless", "while", "until", "return", "split", "grep",
    "map", "join", "push", "unshift", "lt", "gt", "le", "ge", "eq", "ne", "cmp", "x",
    "print", "die", "warn",
))  # fmt: skip
_QUOTE_WORDS = frozenset({"q", "qq", "qw", "qr", "m", "s", "tr", "y"})


class _Lexer:
    """Perl tokens out of text, with here-documents, POD and ``__END__`` handled."""

    def __init__(self, text: str, limits: Limits) -> None:
        self.text = text
        self.limits = limits
        self.newlines = [n for n, c in enumerate(text) if c == "\n"]
        self.tokens: list[Token] = []
        # Here-documents announced on the current line: (token index, terminator, indented).
        self.pending: list[tuple[int, str, bool]] = []

    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def value_ended(self) -> bool:
        """Whether the previous token ends a value (so / is a division, % a modulo)."""
        if not self.tokens:
            return False
        last = self.tokens[-1]
        if last.kind in ("var", "num", "sq", "dq", "qw", "re", "cmd"):
            return True
        if last.kind == "word":
            return last.text not in _EXPRESSION_WORDS
        return last.kind == "op" and last.text in (")", "]", "}")

    def emit(self, kind: str, text: str, pos: int, extra: str = "") -> None:
        if len(self.tokens) >= self.limits.max_tokens:
            raise Trouble(f"more than {self.limits.max_tokens} tokens", self.line_at(pos))
        self.tokens.append(Token(kind, text, self.line_at(pos), extra))

    def delimited(self, pos: int, opener: str) -> tuple[str, int]:
        """The text between ``opener`` at ``pos`` and its closer (escapes kept), and the end."""
        closer = _CLOSERS.get(opener, opener)
        depth = 1
        i = pos + 1
        text = self.text
        while i < len(text):
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == closer:
                depth -= 1
                if depth == 0:
                    return text[pos + 1 : i], i + 1
            elif c == opener and closer != opener:
                depth += 1
            i += 1
        raise Trouble(f"no closing {closer!r} for the {opener!r}", self.line_at(pos))

    def run(self) -> list[Token]:
        text = self.text
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\n":
                i = self.heredoc_bodies(i) if self.pending else i + 1
                continue
            if c in " \t\r\f\v":
                i += 1
                continue
            if c == "#":
                end = text.find("\n", i)
                i = n if end < 0 else end
                continue
            at_line_start = i == 0 or text[i - 1] == "\n"
            if at_line_start and c == "=" and i + 1 < n and text[i + 1].isalpha():
                # POD documentation, up to a line starting with =cut.
                found = _POD_END.search(text, i)
                i = n if found is None else found.end()
                continue
            i = self.token(i)
        if self.pending:
            raise Trouble(
                f"here-document without its terminator {self.pending[0][1]!r}",
                self.tokens[self.pending[0][0]].line,
            )
        self.emit("end", "", n)
        return self.tokens

    def heredoc_bodies(self, newline: int) -> int:
        """Read the bodies of the here-documents announced on the line that ends here."""
        start = newline + 1
        for index, terminator, indented in self.pending:
            lines: list[str] = []
            pos = start
            while True:
                if pos >= len(self.text):
                    raise Trouble(
                        f"here-document without its terminator {terminator!r}",
                        self.tokens[index].line,
                    )
                end = self.text.find("\n", pos)
                end = len(self.text) if end < 0 else end
                line = self.text[pos:end]
                pos = end + 1
                if (line.strip() if indented else line.rstrip("\r")) == terminator:
                    break
                lines.append(line)
            old = self.tokens[index]
            body = "".join(f"{x}\n" for x in lines)
            self.tokens[index] = replace(old, text=body)
            start = pos
        self.pending = []
        return start

    def token(self, i: int) -> int:
        text = self.text
        c = text[i]
        if c == "'":
            body, end = self.delimited(i, "'")
            self.emit("sq", _unescape_single(body), i)
            return end
        if c == '"':
            body, end = self.delimited(i, '"')
            self.emit("dq", body, i)
            return end
        if c == "`":
            body, end = self.delimited(i, "`")
            self.emit("cmd", body, i)
            return end
        if c.isdigit() or (c == "." and text[i + 1 : i + 2].isdigit() and not self.value_ended()):
            found = _NUMBER.match(text, i)
            if found and found.group():  # a number, else an operator below
                self.emit("num", found.group().replace("_", ""), i)
                return found.end()
        if c.isalpha() or c == "_":
            return self.word(i)
        if c == "$":
            return self.scalar(i)
        if c in "@%&*" and not self.value_ended():
            found = _IDENT.match(text, i + 1)
            if found:
                kind = {"@": "var", "%": "var", "&": "code", "*": "glob"}[c]
                name = found.group().rstrip(":")
                self.emit(kind, (c + name) if kind == "var" else name, i)
                return found.end()
        if c == "/" and not self.value_ended():
            body, end = self.delimited(i, "/")
            flags, end = self.flags(end)
            self.emit("re", body, i, f"/{flags}")
            return end
        if c == "<" and text.startswith("<<", i) and not self.value_ended():
            heredoc = re.compile(r"<<(~?)(?:\"([^\"\n]*)\"|'([^'\n]*)'|([A-Za-z_]\w*))").match(
                text, i
            )
            if heredoc:
                indented = bool(heredoc.group(1))
                literal = heredoc.group(3) is not None
                terminator = next(g for g in heredoc.group(2, 3, 4) if g is not None)
                self.emit("sq" if literal else "dq", "", i, "heredoc")
                self.pending.append((len(self.tokens) - 1, terminator, indented))
                return heredoc.end()
        if c == "<" and not self.value_ended():
            readline = re.compile(r"<\$?\w*>").match(text, i)
            if readline:
                self.emit("cmd", readline.group(), i, "readline")
                return readline.end()
        found = _OPERATOR.match(text, i)
        if found:
            self.emit("op", found.group(), i)
            return found.end()
        self.emit("op", c, i)  # anything else: a character the parser will refuse
        return i + 1

    def flags(self, pos: int) -> tuple[str, int]:
        found = re.compile(r"[a-zA-Z]*").match(self.text, pos)
        assert found is not None
        return found.group(), found.end()

    def word(self, i: int) -> int:
        text = self.text
        found = _IDENT.match(text, i)
        assert found is not None
        name = found.group()
        end = found.end()
        if name in ("__END__", "__DATA__"):
            self.emit("op", ";", i)
            return len(text)
        if name in _QUOTE_WORDS and not (self.tokens and self.tokens[-1].text in ("->", "{")):
            j = end
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            delimiter = text[j : j + 1]
            fat_comma = text.startswith("=>", j)
            if (
                delimiter
                and not delimiter.isalnum()
                and delimiter not in ",;)]}>_"
                and not fat_comma
                and not (delimiter == "#" and j > end)
                and not (delimiter == "=" and j > end)
            ):
                return self.quoted(name, i, j)
        self.emit("word", name, i)
        return end

    def quoted(self, name: str, start: int, pos: int) -> int:
        opener = self.text[pos]
        body, end = self.delimited(pos, opener)
        if name in ("s", "tr", "y"):
            # A second part: right after a plain delimiter, or in its own brackets.
            if opener in _CLOSERS:
                j = end
                while j < len(self.text) and self.text[j] in " \t\r\n":
                    j += 1
                if j >= len(self.text):
                    raise Trouble(f"{name} without its replacement", self.line_at(start))
                _, end = self.delimited(j, self.text[j])
            else:
                _, end = self.delimited(end - 1, opener)
            flags, end = self.flags(end)
            self.emit("re", body, start, f"{name}/{flags}")
            return end
        if name in ("qr", "m"):
            flags, end = self.flags(end)
            interpolates = "" if opener == "'" else "i"
            self.emit("re", body, start, f"{name}/{flags}/{interpolates}")
            return end
        if name == "q":
            self.emit("sq", _unescape_single(body, opener), start)
        elif name == "qq":
            self.emit("dq", body, start)
        else:
            self.emit("qw", body, start)
        return end

    def scalar(self, i: int) -> int:
        text = self.text
        nxt = text[i + 1 : i + 2]
        found = _IDENT.match(text, i + 1)
        if found:
            self.emit("var", "$" + found.group().rstrip(":"), i)
            return found.end()
        if nxt == "{":
            braced = re.compile(r"\$\{\s*([A-Za-z_]\w*)\s*\}").match(text, i)
            if braced:
                self.emit("var", "$" + braced.group(1), i)
                return braced.end()
            self.emit("op", "$", i)
            return i + 1
        if nxt == "#":
            last = _IDENT.match(text, i + 2)
            if last:
                self.emit("var", "$#" + last.group(), i)
                return last.end()
            self.emit("op", "$", i)
            return i + 1
        if nxt == "$" and _IDENT.match(text, i + 2):
            self.emit("op", "$", i)  # $$name: a dereference
            return i + 1
        if nxt.isdigit():
            digits = re.compile(r"\d+").match(text, i + 1)
            assert digits is not None
            self.emit("var", "$" + digits.group(), i)
            return digits.end()
        if nxt and nxt in "&`'+_./\\,;!0@<>[]^:?\"$|-~=%()":
            self.emit("var", "$" + nxt, i)
            return i + 2
        self.emit("op", "$", i)
        return i + 1


def _unescape_single(body: str, delimiter: str = "'") -> str:
    """A single-quoted string's value: only \\\\ and an escaped delimiter are escapes."""
    closer = _CLOSERS.get(delimiter, delimiter)
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body) and body[i + 1] in ("\\", delimiter, closer):
            out.append(body[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def tokenize(text: str, limits: Limits | None = None) -> list[Token]:
    """The tokens of Perl source text; raises :class:`Trouble` (with a line) past a limit
    or on an unterminated string."""
    return _Lexer(text, limits or Limits()).run()
