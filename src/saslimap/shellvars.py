"""Reading a shell-variable file such as ``/etc/default/saslauthd`` without running it.

This module owns the small part of POSIX ``sh`` that such files use: ``NAME=value``
assignments (several on a line, or after ``export``), single and double quotes,
backslash escapes and line continuations, ``#`` comments, ``;`` between
commands, and ``$NAME`` / ``${NAME}`` references to variables the file set
earlier.  Nothing is ever executed: a command substitution (``$(...)``,
backquotes), arithmetic, any other command, and every assignment inside an
``if``/``case``/loop/function body is left unread and listed in
:attr:`ShellFile.skipped` with its line number and why, so a caller can say
what it could not carry over.  A variable whose value could not be worked out
is listed in :attr:`ShellFile.unreadable` instead of being guessed.

Pure functions over ``str``: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The longest value a variable may take once $VAR references are expanded: the file
# itself is at most 64 KiB, and no saslauthd setting is anywhere near this.
MAX_VALUE = 64 * 1024
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
# Words that open and close a compound command (sh(1), "Compound Commands").
_OPENS = frozenset({"if", "case", "for", "while", "until", "{"})
_CLOSES = frozenset({"fi", "esac", "done", "}"})
# Words after which the rest of the command is another command in the same body.
_CONTINUES = frozenset({"then", "else", "elif", "do"})
_OPERATORS = "&|<>()"
# sh splits unquoted expansions on $IFS, by default space, tab and newline.
_IFS = re.compile(r"[ \t\n]+")


class ShellSyntaxError(ValueError):
    """The file is not valid ``sh``: ``. FILE`` would stop with a syntax error."""


@dataclass(frozen=True)
class Assignment:
    """A variable's value as ``. FILE`` would leave it, and the line that set it last."""

    name: str
    value: str
    line: int


@dataclass(frozen=True)
class Skipped:
    """A command this module did not run, or an assignment it could not read.

    ``what`` is the command's first word or the variable's name (never a
    value, which could be anything), ``reason`` says why.
    """

    line: int
    what: str
    reason: str


@dataclass(frozen=True)
class ShellFile:
    """What reading a file found: its variables, and everything it left unread."""

    variables: dict[str, Assignment] = field(default_factory=dict)
    skipped: tuple[Skipped, ...] = ()
    # name -> why its value is unknown (set by a line that could not be read)
    unreadable: dict[str, Skipped] = field(default_factory=dict)
    # (line, name) of every $NAME the file used before setting it: taken as empty,
    # as sh does for an unset variable (the sourcing script's own are not known)
    unset_references: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class _Part:
    """A piece of a word: literal text, a ``$NAME`` reference, or something not evaluated."""

    text: str
    quoted: bool = False
    variable: str = ""  # set for $NAME and ${NAME}
    unsupported: str = ""  # set for $(...), `...`, ${NAME:-x} and the like: why


@dataclass
class _Word:
    parts: list[_Part] = field(default_factory=list)

    def plain(self) -> str | None:
        """The word's text when it is unquoted literal text only (a keyword candidate)."""
        if all(not p.quoted and not p.variable and not p.unsupported for p in self.parts):
            return "".join(p.text for p in self.parts)
        return None


@dataclass
class _Command:
    line: int
    words: list[_Word] = field(default_factory=list)
    operator: str = ""  # the first &, |, <, >, ( or ) seen in it


def split_fields(value: str) -> list[str]:
    """``value`` split into words as an unquoted ``$VAR`` is (on ``$IFS``; no quote removal)."""
    return [word for word in _IFS.split(value) if word]


def parse(text: str) -> ShellFile:
    """Read ``text`` as ``sh`` would when sourcing it, without running anything.

    Raises :class:`ShellSyntaxError` for an unterminated quote or substitution.
    """
    return _Evaluator().run(_Lexer(text).commands())


class _Lexer:
    """Splits the text into commands of words, keeping quotes and ``$`` references apart."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1

    def _peek(self, offset: int = 0) -> str:
        at = self.pos + offset
        return self.text[at] if at < len(self.text) else ""

    def _advance(self, count: int = 1) -> str:
        taken = self.text[self.pos : self.pos + count]
        self.line += taken.count("\n")
        self.pos += count
        return taken

    def commands(self) -> list[_Command]:
        out: list[_Command] = []
        command = _Command(self.line)
        word: _Word | None = None

        def finish_word() -> None:
            nonlocal word
            if word is not None:
                command.words.append(word)
                word = None

        def finish_command() -> None:
            nonlocal command
            finish_word()
            if command.words or command.operator:
                out.append(command)
            command = _Command(self.line)

        while self.pos < len(self.text):
            char = self._peek()
            if char == "\\" and self._peek(1) == "\n":  # line continuation
                self._advance(2)
            elif char in " \t":
                finish_word()
                self._advance()
            elif char in "\n;":
                finish_command()
                self._advance()
            elif char == "#" and word is None:  # a comment starts only a word
                while self.pos < len(self.text) and self._peek() != "\n":
                    self._advance()
            elif char in _OPERATORS:
                finish_word()
                command.operator = command.operator or char
                self._advance()
            else:
                if word is None:
                    if not command.words:
                        command.line = self.line
                    word = _Word()
                word.parts.extend(self._word_part())
        finish_command()
        return out

    def _word_part(self) -> list[_Part]:
        char = self._peek()
        if char == "'":
            start = self.line
            self._advance()
            end = self.text.find("'", self.pos)
            if end < 0:
                raise ShellSyntaxError(f"line {start}: a single quote is never closed")
            literal = self._advance(end - self.pos)
            self._advance()  # the closing quote
            return [_Part(literal, quoted=True)]
        if char == '"':
            return self._double_quoted()
        if char == "\\":
            self._advance()
            return [_Part(self._advance())]
        if char in "$`":
            return [self._expansion(quoted=False)]
        start = self.pos
        while self.pos < len(self.text):
            char = self._peek()
            if char in " \t\n;'\"\\$`" or char in _OPERATORS:
                break
            self._advance()
        return [_Part(self.text[start : self.pos])]

    def _double_quoted(self) -> list[_Part]:
        start = self.line
        self._advance()
        parts: list[_Part] = []
        text: list[str] = []
        while True:
            char = self._peek()
            if not char:
                raise ShellSyntaxError(f"line {start}: a double quote is never closed")
            if char == '"':
                self._advance()
                break
            if char == "\\" and self._peek(1) in '$`"\\\n':
                self._advance()
                escaped = self._advance()
                if escaped != "\n":  # backslash-newline inside quotes joins lines
                    text.append(escaped)
            elif char in "$`":
                parts.append(_Part("".join(text), quoted=True))
                text = []
                parts.append(self._expansion(quoted=True))
            else:
                text.append(self._advance())
        parts.append(_Part("".join(text), quoted=True))
        return parts

    def _expansion(self, *, quoted: bool) -> _Part:
        start = self.line
        if self._peek() == "`":
            self._advance()
            self._skip_until_backquote(start)
            return _Part("", quoted, unsupported="a command substitution (`...`)")
        after = self._peek(1)
        if after == "(":
            self._advance(2)
            self._skip_parenthesised(start)
            return _Part("", quoted, unsupported="a command substitution or arithmetic ($(...))")
        if after == "{":
            end = self.text.find("}", self.pos)
            if end < 0:
                raise ShellSyntaxError(f"line {start}: a ${{ is never closed")
            inner = self.text[self.pos + 2 : end]
            self._advance(end + 1 - self.pos)
            if _NAME.fullmatch(inner):
                return _Part("", quoted, variable=inner)
            return _Part("", quoted, unsupported=f"the expansion ${{{inner}}}")
        match = _NAME.match(self.text, self.pos + 1)
        if match:
            self._advance(match.end() - self.pos)
            return _Part("", quoted, variable=match.group())
        if after and after in "0123456789@*#?$!-":
            self._advance(2)
            return _Part("", quoted, unsupported=f"the special parameter ${after}")
        self._advance()
        return _Part("$", quoted)  # a lone $ is literal

    def _skip_until_backquote(self, start: int) -> None:
        while True:
            char = self._peek()
            if not char:
                raise ShellSyntaxError(f"line {start}: a backquote is never closed")
            self._advance(2 if char == "\\" else 1)
            if char == "`":
                return

    def _skip_parenthesised(self, start: int) -> None:
        # Only to find where $( ... ) ends: quotes inside are skipped whole.
        depth = 1
        while depth:
            char = self._peek()
            if not char:
                raise ShellSyntaxError(f"line {start}: a $( is never closed")
            if char in "'\"":
                end = self.text.find(char, self.pos + 1)
                if end < 0:
                    raise ShellSyntaxError(f"line {start}: a quote inside $( is never closed")
                self._advance(end + 1 - self.pos)
                continue
            depth += {"(": 1, ")": -1}.get(char, 0)
            self._advance(2 if char == "\\" else 1)


class _Evaluator:
    """Runs the assignments of each command in order; everything else is only recorded."""

    def __init__(self) -> None:
        self.variables: dict[str, Assignment] = {}
        self.unreadable: dict[str, Skipped] = {}
        self.skipped: list[Skipped] = []
        self.unset: list[tuple[int, str]] = []
        self.depth = 0  # compound commands open (if ... fi): their bodies may not run

    def run(self, commands: list[_Command]) -> ShellFile:
        for command in commands:
            self._command(command)
        return ShellFile(self.variables, tuple(self.skipped), self.unreadable, tuple(self.unset))

    def _skip(self, line: int, what: str, reason: str) -> Skipped:
        skipped = Skipped(line, what, reason)
        self.skipped.append(skipped)
        return skipped

    def _unknown(self, name: str, why: Skipped) -> None:
        self.unreadable[name] = why
        self.variables.pop(name, None)

    def _command(self, command: _Command) -> None:
        words = list(command.words)
        first = words[0].plain() if words else None
        while first in _CONTINUES and len(words) > 0:
            words = words[1:]
            first = words[0].plain() if words else None
        if command.operator:
            reason = f"holds {command.operator!r}: not run"
            skipped = self._skip(command.line, first or command.operator, reason)
            # [ -f x ] && NAME=...: whether NAME is set depends on what was not run.
            for word in words:
                split = _split_assignment(word)
                if split is not None:
                    self._unknown(split[0], skipped)
            if words and words[-1].plain() == "{":  # name() { ... }: a function body follows
                self.depth += 1
            return
        if not words:
            return
        if first in _OPENS:
            self.depth += 1
            self._skip(command.line, first, "a compound command: its body is not read")
            return
        if first in _CLOSES:
            self.depth = max(0, self.depth - 1)
            return
        if first == "export":
            self._export(command.line, words[1:])
            return
        if first == "unset":
            for word in words[1:]:
                self.variables.pop(word.plain() or "", None)
                self.unreadable.pop(word.plain() or "", None)
            return
        if first in (".", "source"):
            self._skip(command.line, first, "reads another file: not followed")
            return
        assignments = []
        for word in words:
            split = _split_assignment(word)
            if split is None:
                break
            assignments.append(split)
        if len(assignments) < len(words):
            name = words[len(assignments)].plain() or "a command"
            self._skip(command.line, name, "a command: not run")
            return
        for name, value in assignments:
            self._assign(command.line, name, value)

    def _export(self, line: int, words: list[_Word]) -> None:
        for word in words:
            split = _split_assignment(word)
            if split is not None:
                self._assign(line, *split)
            elif word.plain() is None or not _NAME.fullmatch(word.plain() or ""):
                self._skip(line, "export", "an argument that is not NAME or NAME=value")

    def _assign(self, line: int, name: str, value: list[_Part]) -> None:
        if self.depth:
            reason = "set inside an if, case, loop or function: not read"
            self._unknown(name, self._skip(line, name, reason))
            return
        text = []
        for part in value:
            if part.unsupported:
                reason = f"its value uses {part.unsupported}: not run"
                self._unknown(name, self._skip(line, name, reason))
                return
            if part.variable:
                if part.variable in self.unreadable:
                    reason = f"its value uses ${part.variable}, which was not read"
                    self._unknown(name, self._skip(line, name, reason))
                    return
                known = self.variables.get(part.variable)
                if known is None:
                    self.unset.append((line, part.variable))
                text.append(known.value if known else "")
            else:
                text.append(part.text)
        if sum(map(len, text)) > MAX_VALUE:
            # A=$A$A repeated doubles each time: 40 short lines would be terabytes.
            raise ShellSyntaxError(
                f"line {line}: {name}'s value would be over {MAX_VALUE} characters"
            )
        self.variables[name] = Assignment(name, "".join(text), line)
        self.unreadable.pop(name, None)


def _split_assignment(word: _Word) -> tuple[str, list[_Part]] | None:
    """``(name, value parts)`` when ``word`` is ``NAME=...``; None otherwise."""
    if not word.parts:
        return None
    head = word.parts[0]
    if head.quoted or head.variable or head.unsupported:
        return None
    match = _ASSIGNMENT.match(head.text)
    if match is None:
        return None
    rest = head.text[match.end() :]
    value = ([_Part(rest)] if rest else []) + word.parts[1:]
    return match.group(1), value
