"""A small syntax tree per statement of an amavisd-new configuration file.

This module owns parsing tokens (:mod:`filter.amavis_lexer`) into statements:
assignments, lists, anonymous hashes and arrays, references, calls, the
operators configurations use, and double-quoted strings split into text and
interpolated variables.  Code that only running Perl could make sense of
(``sub {...}``, backticks, method calls) becomes an :class:`Opaque` node; a
statement that cannot be parsed at all (an ``if`` block, a ``map``) is kept as
a :class:`Statement` with the reason it is skipped, and parsing goes on after
it.  Perl's scoping and control flow are followed where they decide what
amavisd-new sees: ``my`` and ``local`` statements become :class:`Declare` nodes,
statements after ``package X;`` (X other than amavisd-new's ``Amavis::Conf``)
are skipped with the reason, and a top-level ``return`` ends the file, as it
ends amavisd-new's ``do FILE``.  Nesting is bounded, so hostile input cannot
exhaust the stack.  Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from filter.amavis_lexer import Token, _Lexer
from filter.amavis_values import (
    CONSTANTS,
    Code,
    Limits,
    Num,
    Regex,
    Str,
    Trouble,
    Undef,
    Value,
    Where,
)


@dataclass(frozen=True)
class Lit:
    """A literal value."""

    value: Value


@dataclass(frozen=True)
class Interp:
    """A double-quoted string: literal pieces and interpolated variables."""

    parts: tuple[str | Var, ...]


@dataclass(frozen=True)
class Var:
    """``$x``, ``@x`` or ``%x``."""

    sigil: str
    name: str


@dataclass(frozen=True)
class Elem:
    """``$x{key}`` (``kind`` "{") or ``$x[index]`` (``kind`` "[")."""

    kind: str
    name: str
    key: Node


@dataclass(frozen=True)
class ListExpr:
    """``(a, b, ...)`` or a comma list."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class AnonHash:
    """``{ key => value, ... }``."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class AnonArray:
    """``[ a, b, ... ]``."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class RefTo:
    """``\\thing``."""

    target: Node


@dataclass(frozen=True)
class Call:
    """A function call with its arguments."""

    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Binary:
    """A binary operator."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Unary:
    """A prefix operator."""

    op: str
    operand: Node


@dataclass(frozen=True)
class Cond:
    """``a ? b : c``."""

    test: Node
    then: Node
    other: Node


@dataclass(frozen=True)
class Assign:
    """``target = value``, or ``target OP= value``."""

    op: str
    target: Node
    value: Node


@dataclass(frozen=True)
class Declare:
    """``my ...`` or ``local ...`` at the start of a statement: seen by the rest of the
    file only, never by amavisd-new (``kind`` "my" or "local")."""

    kind: str
    inner: Node


@dataclass(frozen=True)
class Opaque:
    """Code that is parsed past but never evaluated; its value is unknown."""

    reason: str


Node = (
    Lit | Interp | Var | Elem | ListExpr | AnonHash | AnonArray | RefTo | Call | Binary | Unary
    | Cond | Assign | Declare | Opaque
)  # fmt: skip


@dataclass(frozen=True)
class Statement:
    """One statement: its tree, or why it is skipped; its line and its first words."""

    node: Node | None
    line: int
    subject: str
    skipped: str = ""


# Binary operators by precedence (perlop), loosest first; all left-associative except **.
_BINARY = (
    ("..", "..."),
    ("||", "//"),
    ("&&",),
    ("|", "^"),
    ("&",),
    ("==", "!=", "<=>", "eq", "ne", "cmp"),
    ("<", ">", "<=", ">=", "lt", "gt", "le", "ge"),
    ("<<", ">>"),
    ("+", "-", "."),
    ("*", "/", "%", "x"),
    ("=~", "!~"),
)
_PRECEDENCE = {op: level for level, ops in enumerate(_BINARY) for op in ops}
_ASSIGN_OPS = frozenset((
    "=", ".=", "+=", "-=", "*=", "/=", "||=", "//=", "&&=", "|=", "&=", "^=", "x=", "**=",
    "%=", "<<=", ">>=",
))  # fmt: skip
# amavisd-new evaluates its configuration files in this package: after ``package X;``
# an assignment sets $X::name, which amavisd-new never reads.
CONFIG_PACKAGE = "Amavis::Conf"
# Functions taking a list without parentheses (Perl list operators) that configurations use.
_LIST_OPERATORS = frozenset((
    "push", "unshift", "read_hash", "read_array", "read_text", "read_l10n_templates",
    "include_config_files", "include_optional_config_files", "new_RE", "join",
))  # fmt: skip
# Statements that end with a block's closing brace rather than a semicolon.
_BLOCK_WORDS = frozenset((
    "if", "unless", "while", "until", "for", "foreach", "sub", "BEGIN", "END", "else",
    "elsif", "eval", "do", "package",
))  # fmt: skip
_NAMED_UNARY = frozenset(
    ["lc", "uc", "lcfirst", "ucfirst", "chomp", "chop", "defined", "ref", "undef", "scalar"]
)


class _Parser:
    """Statements of a token list, each a small tree; errors skip one statement."""

    def __init__(self, tokens: list[Token], path: str, limits: Limits) -> None:
        self.tokens = tokens
        self.path = path
        self.pos = 0
        self.limits = limits
        self.depth = 0
        self.package: tuple[str, int] | None = None  # a package switched to, and where

    def at_line(self, line: int) -> Where:
        return Where(self.path, line)

    # -- helpers ---------------------------------------------------------

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def at(self, text: str, kind: str = "op") -> bool:
        token = self.peek()
        return token.kind == kind and token.text == text

    def take(self) -> Token:
        token = self.peek()
        if token.kind != "end":
            self.pos += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.kind != "op" or token.text != text:
            shown = token.text or "the end of the file"
            raise Trouble(f"expected {text!r}, found {shown!r}", token.line)

    def nest(self) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise Trouble(f"nested deeper than {self.limits.max_depth}", self.peek().line)

    def skip_balanced(self) -> None:
        """Past a bracketed group starting at the current token."""
        depth = 0
        while True:
            token = self.take()
            if token.kind == "end":
                raise Trouble("unbalanced brackets", token.line)
            if token.kind == "op" and token.text in "([{":
                depth += 1
            elif token.kind == "op" and token.text in ")]}":
                depth -= 1
                if depth <= 0:
                    return

    def skip_statement(self, start: int) -> None:
        """From ``start``, past the end of the statement (``;`` or a top-level block)."""
        self.pos = start
        depth = 0
        while True:
            token = self.take()
            if token.kind == "end":
                return
            if token.kind != "op":
                continue
            if token.text in "([{":
                depth += 1
            elif token.text in ")]}":
                depth -= 1
                if depth <= 0 and token.text == "}" and self._block_ends_statement(start):
                    return
                depth = max(depth, 0)
            elif token.text == ";" and depth == 0:
                return

    def _block_ends_statement(self, start: int) -> bool:
        first = self.tokens[start]
        block = (first.kind == "word" and first.text in _BLOCK_WORDS) or (
            first.kind == "op" and first.text == "{"
        )
        if not block:
            return False
        nxt = self.peek()
        if nxt.kind == "word" and nxt.text in ("elsif", "else", "continue"):
            return False
        if self.at(";"):
            self.take()
        return True

    # -- statements ------------------------------------------------------

    def statements(self) -> list[Statement]:
        out: list[Statement] = []
        while self.peek().kind != "end":
            if len(out) >= self.limits.max_statements:
                reason = f"more than {self.limits.max_statements} statements: the rest is not read"
                out.append(Statement(None, self.peek().line, "", reason))
                break
            start = self.pos
            first = self.peek()
            subject = " ".join(_shown(t) for t in self.tokens[start : start + 3] if t.text)
            self.depth = 0
            try:
                node = self.statement()
            except Trouble as trouble:
                self.skip_statement(start)
                out.append(Statement(None, first.line, subject, trouble.reason))
                if first.kind == "word" and first.text == "return":
                    break  # a conditional return: what follows may never have been read
                continue
            if node is None:
                continue
            if first.kind == "word" and first.text == "return":
                if self.peek().kind != "end":
                    reason = (
                        "return: amavisd-new's do FILE stops here, so the rest of the file"
                        " is not read"
                    )
                    out.append(Statement(None, first.line, subject, reason))
                break
            if self.package is not None and not isinstance(node, Lit):
                name, line = self.package
                reason = (
                    f"after package {name} (line {line}) this sets ${name}::...,"
                    " which amavisd-new never reads"
                )
                out.append(Statement(None, first.line, subject, reason))
                continue
            out.append(Statement(node, first.line, subject))
        return out

    def statement(self) -> Node | None:
        token = self.peek()
        if token.kind == "op" and token.text == ";":
            self.take()
            return None
        if token.kind == "op" and token.text == "{":
            raise Trouble("a bare block { ... } is not evaluated")
        if token.kind == "word":
            if token.text == "package":
                self.package_switch()
                return None
            if token.text == "return":
                return self.top_level_return()
            if token.text in ("use", "no", "require"):
                return self.pragma()
            if token.text in ("if", "unless", "while", "until", "for", "foreach"):
                raise Trouble(f"{token.text} ... {{ ... }}: code that decides at run time")
            if token.text in ("sub", "BEGIN", "END"):
                raise Trouble(f"{token.text} {{ ... }}: Perl code, not a setting")
            if token.text in ("my", "local"):
                self.take()
                return Declare(token.text, self.end_statement(self.expression()))
            if token.text == "our":
                self.take()  # a package variable: in amavisd-new's package, a setting
        return self.end_statement(self.expression())

    def end_statement(self, node: Node) -> Node:
        """``node`` once the statement's end (``;`` or the file's end) is taken."""
        after = self.peek()
        if after.kind == "word" and after.text in ("if", "unless", "for", "foreach", "while"):
            raise Trouble(f"a statement with {after.text}: decided at run time")
        if not (self.at(";") or after.kind == "end"):
            raise Trouble(f"unexpected {after.text!r}", after.line)
        self.take()
        return node

    def package_switch(self) -> None:
        """``package NAME;``: until ``package Amavis::Conf;`` statements are not carried."""
        word = self.take()
        name = self.take()
        if self.at("{"):
            raise Trouble(f"package {name.text} {{ ... }}: sets ${name.text}::...,"
                          " which amavisd-new never reads")  # fmt: skip
        if not self.at(";") and self.peek().kind != "end":
            self.take()  # a version: package NAME VERSION;
        self.end_statement(Lit(Undef()))
        if name.text == CONFIG_PACKAGE:
            self.package = None
            return
        self.package = (name.text, word.line)
        raise Trouble(
            f"package {name.text}: the statements after it set ${name.text}::...,"
            f" which amavisd-new never reads (until package {CONFIG_PACKAGE};)"
        )

    def top_level_return(self) -> Node:
        """``return ...;`` at the top of a file: amavisd-new's ``do FILE`` ends there."""
        self.take()
        while not (self.at(";") or self.peek().kind == "end"):
            token = self.take()
            if token.kind == "word" and token.text in ("if", "unless"):
                raise Trouble(
                    f"return ... {token.text}: decided at run time; the rest of the file"
                    " is not read"
                )
        self.take()
        return Lit(Undef())

    def pragma(self) -> Node | None:
        word = self.take()
        module = self.peek()
        while not (self.at(";") or self.peek().kind == "end"):
            self.take()
        self.take()
        harmless = ("strict", "warnings", "vars", "utf8", "integer", "re")
        version = module.kind == "num" or re.fullmatch(r"v\d+", module.text) is not None
        if word.text in ("use", "no") and (version or module.text in harmless):
            return None
        raise Trouble(f"{word.text} {module.text}: loads Perl code, which is not run")

    # -- expressions -----------------------------------------------------

    def expression(self) -> Node:
        """The loosest level: ``or``, ``and``, ``not`` over comma lists."""
        left = self.low_and()
        while self.peek().kind == "word" and self.peek().text in ("or", "xor"):
            op = self.take().text
            left = Binary("||" if op == "or" else op, left, self.low_and())
        return left

    def low_and(self) -> Node:
        left = self.low_not()
        while self.peek().kind == "word" and self.peek().text == "and":
            self.take()
            left = Binary("&&", left, self.low_not())
        return left

    def low_not(self) -> Node:
        if self.peek().kind == "word" and self.peek().text == "not":
            self.take()
            return Unary("!", self.low_not())
        return self.comma()

    def comma(self) -> Node:
        items: list[Node] = []
        seen_comma = False
        while True:
            if self.ends_list():
                break
            items.append(self.assign())
            if len(items) > self.limits.max_items:
                raise Trouble(f"a list of more than {self.limits.max_items} items")
            if self.at(",") or self.at("=>"):
                seen_comma = True
                while self.at(",") or self.at("=>"):
                    self.take()
                continue
            break
        if not seen_comma and len(items) == 1:
            return items[0]
        return ListExpr(tuple(items))

    def ends_list(self) -> bool:
        token = self.peek()
        if token.kind == "end":
            return True
        if token.kind == "op" and token.text in (")", "]", "}", ";", ":"):
            return True
        return token.kind == "word" and token.text in ("or", "and", "xor", "if", "unless")

    def assign(self) -> Node:
        self.nest()
        try:
            left = self.ternary()
            token = self.peek()
            if token.kind == "op" and token.text in _ASSIGN_OPS:
                self.take()
                return Assign(token.text, left, self.assign())
            if token.kind == "word" and token.text == "x" and self.peek(1).text == "=":
                raise Trouble("the x= operator is not evaluated")
            return left
        finally:
            self.depth -= 1

    def ternary(self) -> Node:
        test = self.binary(0)
        if not self.at("?"):
            return test
        self.take()
        then = self.assign()
        self.expect(":")
        return Cond(test, then, self.assign())

    def binary(self, level: int) -> Node:
        left = self.unary()
        while True:
            token = self.peek()
            op = token.text if token.kind in ("op", "word") else ""
            if op == "x" and token.kind == "word" and self.peek(1).text == "=":
                return left
            prec = _PRECEDENCE.get(op)
            if prec is None or prec < level:
                return left
            self.take()
            self.nest()
            try:
                right = self.binary(prec + 1)
            finally:
                self.depth -= 1
            left = Binary(op, left, right)

    def unary(self) -> Node:
        token = self.peek()
        if token.kind == "op" and token.text == "-" and self.peek(1).kind == "word":
            word = self.peek(1)
            if word.text not in CONSTANTS and self.peek(2).text not in ("(", "->"):
                self.take()
                self.take()
                return Lit(Str("-" + word.text, self.at_line(word.line)))  # -bareword
        if token.kind == "op" and token.text in ("!", "-", "+", "\\", "~"):
            self.take()
            self.nest()
            try:
                operand = self.unary()
            finally:
                self.depth -= 1
            if token.text == "\\":
                return RefTo(operand)
            if token.text == "+":
                return operand
            return Unary(token.text, operand)
        if token.kind == "op" and token.text in ("++", "--"):
            raise Trouble(f"the {token.text} operator is not evaluated")
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        if self.at("->"):
            raise Trouble("-> (a method call or a dereference) is not evaluated")
        if self.at("++") or self.at("--"):
            raise Trouble(f"the {self.peek().text} operator is not evaluated")
        return node

    def primary(self) -> Node:
        token = self.take()
        kind, text = token.kind, token.text
        where_line = token.line
        if kind == "num":
            return Lit(Num(_perl_number(text), self.at_line(where_line)))
        if kind == "sq":
            return Lit(Str(text, self.at_line(where_line)))
        if kind == "dq":
            return _interpolation(text, where_line)
        if kind == "qw":
            return ListExpr(tuple(Lit(Str(w, self.at_line(where_line))) for w in text.split()))
        if kind == "re":
            return self.regex(token)
        if kind == "cmd":
            what = "reads a file handle" if token.extra == "readline" else f"runs `{text}`"
            return Opaque(f"its value comes from Perl at run time ({what})")
        if kind == "var":
            return self.variable(token)
        if kind == "code":
            if self.at("("):
                self.skip_balanced()
            return Lit(Code(text, self.at_line(where_line)))
        if kind == "glob":
            return Opaque(f"*{text} (a typeglob) is not evaluated")
        if kind == "word":
            return self.word(token)
        if kind == "op" and text == "(":
            return self.bracketed(")", ListExpr)
        if kind == "op" and text == "[":
            return self.bracketed("]", AnonArray)
        if kind == "op" and text == "{":
            return self.bracketed("}", AnonHash)
        if kind == "op" and text in ("$", "@", "%"):
            raise Trouble(f"a dereference ({text}{{...}} or {text}$name) is not evaluated")
        shown = text or "the end of the file"
        raise Trouble(f"unexpected {shown!r}", where_line)

    def bracketed(self, closer: str, build: Callable[[tuple[Node, ...]], Node]) -> Node:
        self.nest()
        try:
            inner = self.expression() if not self.at(closer) else ListExpr(())
        finally:
            self.depth -= 1
        self.expect(closer)
        items = inner.items if isinstance(inner, ListExpr) else (inner,)
        if build is ListExpr and closer == ")":
            if self.at("["):
                raise Trouble("a list slice (...)[...] is not evaluated")
            return ListExpr(items)
        return build(items)

    def regex(self, token: Token) -> Node:
        op, _, rest = token.extra.partition("/")
        flags, _, interp = rest.partition("/")
        if op == "qr":
            shows_var = bool(re.search(r"(?<!\\)[$@][A-Za-z_{]", token.text))
            value = Regex(token.text, flags, self.at_line(token.line), bool(interp) and shows_var)
            return Lit(value)
        if op == "":  # a bare /.../
            return Opaque("a pattern match /.../ is not evaluated")
        return Opaque(f"{op}/.../ (a match or substitution) is not evaluated")

    def variable(self, token: Token) -> Node:
        sigil, name = token.text[0], token.text[1:]
        if name.startswith("#"):
            return Opaque(f"${name} (an array's last index) is not evaluated")
        if sigil == "$" and self.at("{"):
            return Elem("{", name, self.subscript("}"))
        if sigil == "$" and self.at("["):
            return Elem("[", name, self.subscript("]"))
        if sigil in "@%" and (self.at("{") or self.at("[")):
            raise Trouble(f"a slice {token.text}{self.peek().text}...{{}} is not evaluated")
        return Var(sigil, name)

    def subscript(self, closer: str) -> Node:
        self.take()
        first = self.peek()
        if first.kind == "word" and self.peek(1).text == closer:
            self.take()
            self.take()
            return Lit(Str(first.text, self.at_line(first.line)))  # $h{key}: a bareword key
        dash = first.kind == "op" and first.text == "-"
        if dash and self.peek(1).kind == "word" and self.peek(2).text == closer:
            self.take()
            word = self.take()
            self.take()
            return Lit(Str("-" + word.text, self.at_line(first.line)))
        self.nest()
        try:
            key = self.expression()
        finally:
            self.depth -= 1
        self.expect(closer)
        return key

    def word(self, token: Token) -> Node:
        text = token.text
        line = token.line
        if self.at("=>"):
            return Lit(Str(text, self.at_line(line)))  # a bareword before => is a string
        if text in CONSTANTS:
            if self.at("(") and self.peek(1).text == ")":
                self.take()
                self.take()
            return Lit(Num(CONSTANTS[text], self.at_line(line)))
        if text == "undef":
            if self.at("(") and self.peek(1).text == ")":
                self.take()
                self.take()
            elif self.peek().kind == "var" or self.at("("):
                return Call("undef", (self.unary(),))
            return Lit(Undef())
        if text in ("sub", "do", "eval") and self.at("{"):
            self.skip_balanced()
            if text == "sub":
                return Lit(Code("sub {...}", self.at_line(line)))
            return Opaque(f"{text} {{ ... }} (code) is not evaluated")
        if text in (
            "map",
            "grep",
            "sort",
            "reverse",
            "sprintf",
            "exists",
            "delete",
            "keys",
            "values",
            "each",
            "wantarray",
            "local",
            "return",
            "bless",
            "open",
        ):
            raise Trouble(f"{text}(...) is not evaluated")
        if text in ("my", "our"):
            return self.primary()
        if text == "__FILE__" or text == "__LINE__":
            return Opaque(f"{text} is not evaluated")
        if self.at("->"):
            self.take()
            method = self.take()
            if text == "Amavis::Lookup::RE" and method.text == "new" and self.at("("):
                return Call("new_RE", self.arguments())
            raise Trouble(f"{text}->{method.text}(...): a method call is not evaluated")
        if self.at("("):
            return Call(text, self.arguments())
        if text in _NAMED_UNARY:
            if self.ends_list() or self.at(","):
                return Call(text, ())
            return Call(text, (self.unary(),))
        if text in _LIST_OPERATORS:
            inner = self.comma()
            return Call(text, inner.items if isinstance(inner, ListExpr) else (inner,))
        if text in ("x", "lt", "gt", "le", "ge", "eq", "ne", "cmp"):
            raise Trouble(f"unexpected operator {text!r}", line)
        return Opaque(f"the bareword {text} (a function or constant not known here)")

    def arguments(self) -> tuple[Node, ...]:
        self.take()  # (
        self.nest()
        try:
            inner = self.expression() if not self.at(")") else ListExpr(())
        finally:
            self.depth -= 1
        self.expect(")")
        return inner.items if isinstance(inner, ListExpr) else (inner,)


def _shown(token: Token) -> str:
    """A token for a statement's subject in the report: strings are never shown (a
    statement that is not read may hold a password)."""
    return "'...'" if token.kind in ("sq", "dq", "qw") else token.text


def _perl_number(text: str) -> float:
    low = text.lower()
    try:
        if low.startswith("0x"):
            return float(int(low[2:], 16))
        if low.startswith("0b"):
            return float(int(low[2:], 2))
        if len(low) > 1 and low.startswith("0") and low.isdigit():
            return float(int(low, 8))  # Perl reads 0755 as octal
        return float(low)
    except ValueError:
        return 0.0


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "a": "\a", "e": "\x1b", "0": "\0"}
_INTERPOLATED = re.compile(
    r"\\(x\{[0-9a-fA-F]{1,8}\}|x[0-9a-fA-F]{0,2}|N\{U\+[0-9a-fA-F]{1,8}\}|.)"
    r"|([$@])(\{\s*[A-Za-z_]\w*\s*\}|[A-Za-z_]\w*(?:::\w+)*)",
    re.S,
)


def _interpolation(body: str, line: int) -> Node:
    """A double-quoted string's pieces: text with escapes done, and the variables in it."""
    parts: list[str | Var] = []
    pos = 0
    for found in _INTERPOLATED.finditer(body):
        parts.append(body[pos : found.start()])
        pos = found.end()
        escape, sigil, name = found.group(1), found.group(2), found.group(3)
        if escape is not None:
            if escape in "lLuUEQ":
                return Opaque(f"the case escape \\{escape} in a string is not evaluated")
            if escape.startswith("x{") or escape.startswith("N{"):
                code = int(escape[escape.index("{") + 1 + (2 if escape[0] == "N" else 0) : -1], 16)
                parts.append(chr(min(code, 0x10FFFF)))
            elif escape.startswith("x"):
                parts.append(chr(int(escape[1:] or "0", 16)))
            else:
                parts.append(_ESCAPES.get(escape, escape))
            continue
        name = name.strip("{} ")
        rest = body[pos : pos + 2]
        if rest.startswith(("[", "{", "->")) and sigil == "$":
            return Opaque(
                f'"...{sigil}{name}{rest[0]}...": an element in a string is not evaluated'
            )
        parts.append(Var(sigil, name))
    parts.append(body[pos:])
    return Interp(tuple(p for p in parts if p != ""))


def parse(text: str, path: str, limits: Limits | None = None) -> list[Statement]:
    """The statements of one file; a file that cannot be tokenized gives one skipped
    statement saying where and why (its statements before that point are kept)."""
    limits = limits or Limits()
    lexer = _Lexer(text, limits)
    tail: list[Statement] = []
    try:
        tokens = lexer.run()
    except Trouble as trouble:
        tokens = lexer.tokens
        # Drop the partial statement the error cut off; keep the complete ones before it.
        last = max(
            (n for n, t in enumerate(tokens) if t.kind == "op" and t.text == ";"), default=-1
        )
        cut_line = tokens[last + 1].line if last + 1 < len(tokens) else trouble.line
        tokens = [*tokens[: last + 1], Token("end", "", trouble.line)]
        tail.append(
            Statement(None, cut_line or trouble.line, "",
                      f"{trouble.reason} (line {trouble.line}): the rest of the file is not read")
        )  # fmt: skip
    return _Parser(tokens, path, limits).statements() + tail
