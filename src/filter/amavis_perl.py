"""amavisd-new's Perl configuration, read without running Perl.

This module owns turning the text of ``amavisd.conf`` or ``/etc/amavis/conf.d/*``
into the values of its variables, for the subset of Perl such files are made of:
scalar, array and hash assignments (``$x = ...``, ``@x = (...)``, ``%x = (...)``,
``$x{key} = ...``, ``.=`` and friends), strings with their quoting rules (``'...'``,
``"..."`` with ``$var`` and ``@var`` interpolated, ``q()``, ``qq{}``, ``qw()``,
here-documents), numbers and arithmetic, ``qr'...'flags`` regular expressions,
references (``\\%map``, ``\\@acl``, ``\\$re``), anonymous ``{...}`` and ``[...]``,
the ``D_PASS`` ... ``D_REJECT`` and ``CC_*`` constants, and amavisd-new's own
functions ``new_RE``, ``read_hash``, ``read_array`` and
``include_config_files``.  The files are evaluated in order as one program, so
a later assignment overrides an earlier one, and a reference (``\\$x``) sees the
variable's final value, as amavisd-new's lookups do.

Nothing here runs Perl or a command: what cannot be known without doing so (the
output of a backtick command, a ``sub {...}``, a method call) becomes an
:class:`Unknown` value saying why, and a statement that is not understood at all
(an ``if`` block, a ``map``) is skipped and reported with its file and line as
a :class:`Problem`.  Nothing raises on hostile input: sizes, token counts,
nesting and string lengths are bounded (:class:`Limits`), and files are read
through a caller-supplied function, so the module itself touches no file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from filter.amavis_syntax import (
    AnonArray,
    AnonHash,
    Assign,
    Binary,
    Call,
    Cond,
    Declare,
    Elem,
    Interp,
    ListExpr,
    Lit,
    Node,
    Opaque,
    RefTo,
    Unary,
    Var,
    parse,
)
from filter.amavis_values import (
    BUILTIN,
    Binding,
    Code,
    Entry,
    Exhausted,
    HashV,
    Limits,
    ListV,
    Num,
    Problem,
    Regex,
    RegexTable,
    Str,
    Trouble,
    Undef,
    Unknown,
    Value,
    VarRef,
    Where,
    number_of,
    show,
    text_of,
    truthy,
    where_of,
)

__all__ = ["Machine", "Reader", "parse_array_file", "parse_hash_file"]


Reader = Callable[[str], str]
"""Reads a file named by the configuration (``read_hash``, ``include_config_files``);
raises OSError or ValueError with a reason when it cannot or may not."""


_EXHAUSTED = (
    "the configuration asks for more work than an import allows (Limits.max_work):"
    " the rest is not read"
)

# Scalars amavisd-new computes itself at start: without --var their value is unknown.
RUNTIME_SCALARS = {
    "mydomain": "amavisd-new's placeholder !change-mydomain-variable!.example.com unless set",
    "myhostname": "the host name, found at run time",
    "myproduct_name": "amavisd-new's product name",
    "myversion": "amavisd-new's version",
}


class Machine:
    """Evaluates statements in order, keeping every variable's value and where it was set."""

    def __init__(
        self,
        reader: Reader,
        limits: Limits | None = None,
        pinned: dict[str, str] | None = None,
    ) -> None:
        self.reader = reader
        self.limits = limits or Limits()
        self.vars: dict[str, Binding] = {}
        self.problems: list[Problem] = []
        self.calls: list[tuple[str, Where]] = []  # functions called, for the report
        self.files: list[str] = []  # files evaluated, in order
        self.pinned = {
            f"${k}": Binding(Str(v, BUILTIN), Where("--var", 0)) for k, v in (pinned or {}).items()
        }
        self.vars.update(self.pinned)
        self.path = ""
        self.include_depth = 0
        self.work = self.limits.max_work
        # The running file's `my` variables, and the globals its `local`s hid (restored
        # when the file ends, as Perl does when amavisd-new's do FILE returns).
        self.lexicals: dict[str, Binding] = {}
        self.hidden: dict[str, Binding | None] = {}
        # Variables each variable's value was made from (statement by statement), so a
        # report that hides a password hides the variables it came from too.
        self.refers: dict[str, set[str]] = {}
        self.reads: set[str] = set()
        self.writes: set[str] = set()

    # -- running files ---------------------------------------------------

    def run_text(self, text: str, path: str, *, builtin: bool = False) -> None:
        """Evaluate one file's text (``builtin``: amavisd-new's defaults, where = BUILTIN)."""
        self.files.append(path)
        if self.work < 0:
            self.problems.append(Problem(Where(path, 1), "", _EXHAUSTED))
            return
        self.spend(len(text))
        statements = parse(text, path, self.limits)
        saved = self.path
        saved_lexicals, saved_hidden = self.lexicals, self.hidden
        self.path = path
        self.lexicals, self.hidden = {}, {}
        found = 0
        try:
            for statement in statements:
                where = BUILTIN if builtin else Where(path, statement.line)
                reason = statement.skipped
                if statement.node is not None:
                    try:
                        reason = self.statement(statement.node, where)
                        if not reason:
                            continue
                    except Exhausted:
                        self.problems.append(Problem(where, statement.subject, _EXHAUSTED))
                        return
                    except Trouble as trouble:
                        reason = trouble.reason
                found += 1
                if found <= self.limits.max_problems:
                    self.problems.append(Problem(where, statement.subject, reason))
            if found > self.limits.max_problems:
                more = found - self.limits.max_problems
                self.problems.append(
                    Problem(Where(path, 0 if builtin else statements[-1].line), "",
                            f"{more} more statements not read (only the first"
                            f" {self.limits.max_problems} of a file are listed)")
                )  # fmt: skip
        finally:
            for key, binding in self.hidden.items():
                if binding is None:
                    self.vars.pop(key, None)
                else:
                    self.vars[key] = binding
            self.path = saved
            self.lexicals, self.hidden = saved_lexicals, saved_hidden

    def made_from(self, keys: Iterable[str]) -> set[str]:
        """``keys`` and every variable their values were made from, transitively."""
        found: set[str] = set()
        todo = list(keys)
        while todo:
            key = todo.pop()
            if key not in found:
                found.add(key)
                todo.extend(self.refers.get(key, ()))
        return found

    def spend(self, steps: int) -> None:
        """Count work done; past the budget, :class:`Exhausted` stops the evaluation."""
        self.work -= steps
        if self.work < 0:
            raise Exhausted(_EXHAUSTED)

    def statement(self, node: Node, where: Where) -> str:
        """Evaluate one statement; what to report about it though it was evaluated."""
        if isinstance(node, Opaque):
            raise Trouble(node.reason)
        self.reads, self.writes = set(), set()
        try:
            if isinstance(node, Declare):
                return self.declare(node, where)
            if isinstance(node, Call):
                self.call(node, where, statement=True)
                return ""
            self.scalar(node, where)
            return ""
        finally:
            for key in self.writes:
                self.refers.setdefault(key, set()).update(self.reads - {key})

    def declare(self, node: Declare, where: Where) -> str:
        """``my``/``local``: the rest of this file sees the value, amavisd-new never does."""
        inner = node.inner
        target = inner.target if isinstance(inner, Assign) else inner
        slots = target.items if isinstance(target, ListExpr) else (target,)
        names = [slot for slot in slots if isinstance(slot, Var)]
        if len(names) != len(slots):
            raise Trouble(f"{node.kind} of something other than variables")
        for var in names:
            key = var.sigil + var.name
            if node.kind == "my":
                empty: Value = Undef() if var.sigil == "$" else ListV()
                self.lexicals[key] = Binding(empty if var.sigil != "%" else HashV(), where)
            elif key not in self.hidden and key not in self.lexicals:
                self.hidden[key] = self.vars.get(key)
        self.scalar(inner, where)
        shown = ", ".join(var.sigil + var.name for var in names)
        kind = "a lexical" if node.kind == "my" else "a local"
        return (
            f"{node.kind} {shown}: {kind} variable: amavisd-new never reads it"
            " (only the rest of this file sees it)"
        )

    # -- variables -------------------------------------------------------

    def get(self, sigil: str, name: str) -> Binding | None:
        """A variable's binding (``sigil`` "$", "@" or "%"), or None if never assigned."""
        self.reads.add(sigil + name)
        return self.lexicals.get(sigil + name) or self.vars.get(sigil + name)

    def value(self, sigil: str, name: str) -> Value:
        """A variable's value now; undef (or empty) when never assigned."""
        binding = self.get(sigil, name)
        if binding is not None:
            return binding.value
        if sigil == "$":
            if name in RUNTIME_SCALARS:
                return Unknown(
                    f"${name} is not set in the configuration ({RUNTIME_SCALARS[name]});"
                    f" give it with --var {name}=..."
                )
            return Undef()
        return ListV() if sigil == "@" else HashV()

    def set(self, sigil: str, name: str, value: Value, where: Where) -> None:
        key = sigil + name
        self.writes.add(key)
        if key in self.lexicals:
            self.lexicals[key] = Binding(value, where)
            return
        if key in self.pinned:
            return  # --var wins over the configuration
        self.vars[key] = Binding(value, where)

    def resolve(self, value: Value) -> Value:
        """Follow a reference to a variable (one level, as amavisd-new's lookups do)."""
        if isinstance(value, VarRef):
            return self.value(value.sigil, value.name)
        return value

    # -- expressions -----------------------------------------------------

    def scalar(self, node: Node, where: Where) -> Value:
        """``node`` in scalar context."""
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, Interp):
            return self.interpolate(node, where)
        if isinstance(node, Var):
            if node.sigil == "$":
                return self.value("$", node.name)
            items = self.listed(node, where)
            return Num(float(len(items)) / (2 if node.sigil == "%" else 1))
        if isinstance(node, Elem):
            return self.element(node, where)
        if isinstance(node, ListExpr):
            for item in node.items[:-1]:
                self.scalar(item, where)  # the comma operator: each, the last one counts
            return self.scalar(node.items[-1], where) if node.items else Undef()
        if isinstance(node, AnonHash):
            return self.hash_of(self.list_of(node.items, where), where)
        if isinstance(node, AnonArray):
            return ListV(tuple(self.list_of(node.items, where)), where=where)
        if isinstance(node, RefTo):
            return self.reference(node.target, where)
        if isinstance(node, Call):
            return self.call(node, where)
        if isinstance(node, Binary):
            return self.binary(node, where)
        if isinstance(node, Unary):
            return self.unary(node, where)
        if isinstance(node, Cond):
            test = truthy(self.scalar(node.test, where))
            if test is None:
                return Unknown("a condition (?:) whose value is unknown", where)
            return self.scalar(node.then if test else node.other, where)
        if isinstance(node, Assign):
            return self.assign(node, where)
        if isinstance(node, Declare):
            raise Trouble(f"{node.kind} inside an expression is not evaluated")
        return Unknown(node.reason, where)

    def listed(self, node: Node, where: Where) -> list[Value]:
        """``node`` in list context (arrays and hashes flattened)."""
        if isinstance(node, ListExpr):
            return self.list_of(node.items, where)
        if isinstance(node, Var) and node.sigil == "@":
            value = self.value("@", node.name)
            self.spend(len(value.items) if isinstance(value, ListV) else 1)
            return list(value.items) if isinstance(value, ListV) else [value]
        if isinstance(node, Var) and node.sigil == "%":
            value = self.value("%", node.name)
            out: list[Value] = []
            if isinstance(value, HashV):
                self.spend(len(value.entries))
                for entry in value.entries:
                    out += [Str(entry.key, entry.where), entry.value]
            return out
        if (
            isinstance(node, Assign)
            and isinstance(node.target, (ListExpr, Var))
            and (not isinstance(node.target, Var) or node.target.sigil != "$")
        ):
            self.assign(node, where)
            return self.listed(node.target, where)
        return [self.scalar(node, where)]

    def list_of(self, nodes: Iterable[Node], where: Where) -> list[Value]:
        out: list[Value] = []
        for node in nodes:
            out += self.listed(node, where)
            if len(out) > self.limits.max_items:
                raise Trouble(f"a list of more than {self.limits.max_items} items")
        self.spend(len(out))
        return out

    def hash_of(self, items: Sequence[Value], where: Where, origin: str = "") -> HashV:
        self.spend(len(items))
        entries: dict[str, Entry] = {}
        for n in range(0, len(items), 2):
            key_value = items[n]
            key = text_of(key_value)
            if key is None:
                raise Trouble(f"a hash key that is not a plain string ({show(key_value)})")
            value = items[n + 1] if n + 1 < len(items) else Undef()
            entries.pop(key, None)  # a repeated key: the last one counts, in its place
            entries[key] = Entry(key, value, where_of(key_value) or where)
        return HashV(tuple(entries.values()), origin)

    def reference(self, target: Node, where: Where) -> Value:
        if isinstance(target, Var):
            self.reads.add(target.sigil + target.name)
            return VarRef(target.sigil, target.name, where)
        if isinstance(target, Lit) and isinstance(target.value, Code):
            return target.value
        if isinstance(target, ListExpr):
            return Unknown("a reference to a list \\(...) is not evaluated", where)
        value = self.scalar(target, where)
        return value  # \ "string", \ [..]: a reference to the value, as good as the value

    def element(self, node: Elem, where: Where) -> Value:
        if node.kind == "{":
            key = text_of(self.scalar(node.key, where))
            if key is None:
                return Unknown(f"${node.name}{{...}} with a key that is not known", where)
            container = self.value("%", node.name)
            self.spend(len(container.entries) if isinstance(container, HashV) else 1)
            found = container.get(key) if isinstance(container, HashV) else None
            return Undef() if found is None else found
        index = number_of(self.scalar(node.key, where))
        array = self.value("@", node.name)
        if index is None or not isinstance(array, ListV):
            return Unknown(f"${node.name}[...] with an index that is not known", where)
        position = int(index)
        if -len(array.items) <= position < len(array.items):
            return array.items[position]
        return Undef()

    def interpolate(self, node: Interp, where: Where) -> Value:
        out: list[str] = []
        length = 0
        for part in node.parts:
            if isinstance(part, str):
                out.append(part)
                length += len(part)
                continue
            if part.sigil == "@":
                if self.get("@", part.name) is None:
                    # Perl would put nothing there (or refuse under "use strict"):
                    # "user@example.com" meant a literal @, written \@ in Perl.
                    return Unknown(
                        f'"...@{part.name}..." interpolates the array @{part.name},'
                        " which is not set (a literal @ is written \\@)",
                        where,
                    )
                items = self.listed(part, where)
                texts = [text_of(item) for item in items]
                if any(t is None for t in texts) or any(isinstance(i, Unknown) for i in items):
                    return Unknown(f'"@{part.name}" interpolates values that are not known', where)
                out.append(" ".join(t or "" for t in texts))
                length += len(out[-1])
                continue
            value = self.value("$", part.name)
            if isinstance(value, Unknown):
                if value.reason.startswith(f"${part.name} "):
                    return value
                at = f" ({value.where})" if value.where else ""
                return Unknown(
                    f"${part.name}{at}: {value.reason}; give it with --var {part.name}=...",
                    value.where or where,
                )
            if isinstance(value, Undef):
                continue  # Perl interpolates undef as ""
            text = text_of(value)
            if text is None:
                return Unknown(f'"${part.name}" interpolates a reference', where)
            out.append(text)
            length += len(text)
            if length > self.limits.max_string:
                raise Trouble(f"a string longer than {self.limits.max_string} characters")
        self.spend(length)
        return Str("".join(out), where)

    def binary(self, node: Binary, where: Where) -> Value:
        op = node.op
        left = self.scalar(node.left, where)
        if op in ("||", "//", "&&"):
            if op == "//":
                decided: bool | None = (
                    None if isinstance(left, Unknown) else not isinstance(left, Undef)
                )
            else:
                decided = truthy(left)
            if decided is None:
                return Unknown(f"the {op} of a value that is not known", where)
            keep_left = decided if op in ("||", "//") else not decided
            return left if keep_left else self.scalar(node.right, where)
        right = self.scalar(node.right, where)
        for side in (left, right):
            if isinstance(side, Unknown):
                return side
        if op == ".":
            texts = [("" if isinstance(s, Undef) else text_of(s)) for s in (left, right)]
            if texts[0] is None or texts[1] is None:
                return Unknown("the . of a reference", where)
            if len(texts[0]) + len(texts[1]) > self.limits.max_string:
                raise Trouble(f"a string longer than {self.limits.max_string} characters")
            self.spend(len(texts[0]) + len(texts[1]))
            return Str(texts[0] + texts[1], where)
        if op in ("+", "-", "*", "/", "%", "**"):
            a = 0.0 if isinstance(left, Undef) else number_of(left)
            b = 0.0 if isinstance(right, Undef) else number_of(right)
            if a is None or b is None:
                return Unknown(f"arithmetic ({op}) on a reference", where)
            try:
                if op == "+":
                    result = a + b
                elif op == "-":
                    result = a - b
                elif op == "*":
                    result = a * b
                elif op == "/":
                    result = a / b
                elif op == "%":
                    result = float(int(a) % int(b))
                else:
                    result = float(a**b) if abs(b) <= 64 and abs(a) < 1e6 else float("inf")
            except (ZeroDivisionError, OverflowError, ValueError):
                return Unknown(f"arithmetic ({op}) that fails (division by zero?)", where)
            return Num(result, where)
        return Unknown(f"the operator {op} is not evaluated", where)

    def unary(self, node: Unary, where: Where) -> Value:
        value = self.scalar(node.operand, where)
        if isinstance(value, Unknown):
            return value
        if node.op == "!":
            return Str("") if truthy(value) else Num(1.0, where)
        if node.op == "-":
            number = number_of(value) if not isinstance(value, Undef) else 0.0
            if number is None:
                return Unknown("the negation of a reference", where)
            return Num(-number, where)
        return Unknown(f"the operator {node.op} is not evaluated", where)

    # -- assignment ------------------------------------------------------

    def assign(self, node: Assign, where: Where) -> Value:
        target = node.target
        if node.op != "=":
            if not isinstance(target, (Var, Elem)) or (
                isinstance(target, Var) and target.sigil != "$"
            ):
                raise Trouble(f"{node.op} on something other than a scalar")
            current = self.scalar(target, where)
            base = node.op[:-1]
            if base in ("||", "//", "&&") or base in (".", "+", "-", "*", "/", "%", "**"):
                combined = self.binary(Binary(base, Lit(current), node.value), where)
            else:
                raise Trouble(f"the operator {node.op} is not evaluated")
            self.store(target, combined, where)
            return combined
        if isinstance(target, Var) and target.sigil == "@":
            items = self.listed(node.value, where)
            value: Value = ListV(tuple(items), where=where)
            self.set("@", target.name, value, where)
            return value
        if isinstance(target, Var) and target.sigil == "%":
            value = self.hash_of(self.listed(node.value, where), where)
            self.set("%", target.name, value, where)
            return value
        if isinstance(target, ListExpr):
            items = self.listed(node.value, where)
            for n, slot in enumerate(target.items):
                if isinstance(slot, Var) and slot.sigil in "@%":
                    rest = items[n:]
                    whole: Value = (
                        ListV(tuple(rest), where=where)
                        if slot.sigil == "@"
                        else self.hash_of(rest, where)
                    )
                    self.set(slot.sigil, slot.name, whole, where)
                    break
                self.store(slot, items[n] if n < len(items) else Undef(), where)
            return ListV(tuple(items), where=where)
        value = self.scalar(node.value, where)
        self.store(target, value, where)
        return value

    def store(self, target: Node, value: Value, where: Where) -> None:
        if isinstance(target, Var) and target.sigil == "$":
            self.set("$", target.name, value, where)
            return
        if isinstance(target, Elem) and target.kind == "{":
            key = text_of(self.scalar(target.key, where))
            if key is None:
                raise Trouble(f"${target.name}{{...}} = with a key that is not known")
            current = self.value("%", target.name)
            self.spend(len(current.entries) if isinstance(current, HashV) else 1)
            entries = (
                [e for e in current.entries if e.key != key] if isinstance(current, HashV) else []
            )
            entries.append(Entry(key, value, where))
            self.set("%", target.name, HashV(tuple(entries)), where)
            return
        if isinstance(target, Elem):
            index = number_of(self.scalar(target.key, where))
            current = self.value("@", target.name)
            items = list(current.items) if isinstance(current, ListV) else []
            if index is None or not -len(items) <= int(index) < self.limits.max_items:
                raise Trouble(f"${target.name}[...] = with an index that is not known")
            position = int(index)
            self.spend(max(len(items), position) + 1)
            while position >= len(items):
                items.append(Undef())
            items[position] = value
            self.set("@", target.name, ListV(tuple(items), where=where), where)
            return
        if isinstance(target, Call) and target.name == "undef":
            return
        raise Trouble("an assignment to something other than a variable")

    # -- functions -------------------------------------------------------

    def call(self, node: Call, where: Where, *, statement: bool = False) -> Value:
        name = node.name
        self.calls.append((name, where))
        if name == "new_RE":
            return self.new_re(self.list_of(node.args, where), where)
        if name in ("read_hash", "read_array"):
            return self.read_table(name, node.args, where)
        if name in ("include_config_files", "include_optional_config_files"):
            for item in self.list_of(node.args, where):
                self.include(item, where, optional=name.startswith("include_optional"))
            return Num(1.0, where)
        if name in ("push", "unshift"):
            return self.push(name, node.args, where)
        if name in ("chomp", "chop"):
            for arg in node.args:
                target = arg.target if isinstance(arg, Assign) else arg
                value = self.scalar(arg, where)
                if isinstance(value, Str) and isinstance(target, (Var, Elem)):
                    trimmed = value.text[:-1] if name == "chop" else value.text.removesuffix("\n")
                    self.store(target, Str(trimmed, where), where)
            return Num(1.0, where)
        if name in ("lc", "uc", "lcfirst", "ucfirst"):
            value = self.scalar(node.args[0], where) if node.args else Undef()
            text = text_of(value)
            if text is None:
                return value if isinstance(value, Unknown) else Str("", where)
            if name == "lc":
                return Str(text.lower(), where)
            if name == "uc":
                return Str(text.upper(), where)
            if name == "lcfirst":
                return Str(text[:1].lower() + text[1:], where)
            return Str(text[:1].upper() + text[1:], where)
        if name == "join" and node.args:
            sep = text_of(self.scalar(node.args[0], where))
            items = self.list_of(node.args[1:], where)
            texts = [text_of(i) if not isinstance(i, Undef) else "" for i in items]
            if sep is None or any(t is None for t in texts):
                return Unknown("join(...) of values that are not known", where)
            return Str(sep.join(t or "" for t in texts), where)
        if name == "undef":
            for arg in node.args:
                if isinstance(arg, Var) and arg.sigil == "@":
                    self.set("@", arg.name, ListV(), where)
                elif isinstance(arg, Var) and arg.sigil == "%":
                    self.set("%", arg.name, HashV(), where)
                elif isinstance(arg, (Var, Elem)):
                    self.store(arg, Undef(), where)
            return Undef()
        if statement:
            # A call made for its effect (read_l10n_templates, a helper): the mapping
            # reports known ones from self.calls; anything else is reported here.
            if name not in KNOWN_EFFECTS:
                raise Trouble(f"{name}(...): a function call that is not evaluated")
            return Undef()
        return Unknown(f"the result of {name}(...) is not evaluated", where)

    def new_re(self, items: list[Value], where: Where) -> Value:
        self.spend(len(items))
        entries: list[tuple[Regex, Value]] = []
        for item in items:
            if isinstance(item, Regex):
                entries.append((item, Num(1.0, item.where)))
            elif isinstance(item, Str):
                entries.append((Regex(item.text, "", item.where), Num(1.0, item.where)))
            elif isinstance(item, ListV) and len(item.items) == 2:
                first, result = item.items
                if isinstance(first, Str):
                    first = Regex(first.text, "", first.where)
                if not isinstance(first, Regex):
                    return Unknown(f"new_RE(...) with an entry [{show(first)} => ...]", where)
                entries.append((first, result))
            else:
                return Unknown(f"new_RE(...) with an entry {show(item)}", where)
        return RegexTable(tuple(entries), where)

    def read_table(self, name: str, args: tuple[Node, ...], where: Where) -> Value:
        values = self.list_of(args, where)
        target: VarRef | None = None
        if values and isinstance(values[0], VarRef):
            target = values[0]
            values = values[1:]
        elif values and isinstance(values[0], (HashV, ListV)):
            values = values[1:]  # read_hash({}, 'file'): a fresh table
        path = text_of(values[0]) if values else None
        if path is None:
            reason = (
                values[0].reason
                if values and isinstance(values[0], Unknown)
                else ("a file name that is not known")
            )
            return Unknown(f"{name}(...) of {reason}", where)
        try:
            text = self.reader(path)
        except (OSError, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            failed = Unknown(f"{name}('{path}'): cannot read it ({reason})", where)
            if target is not None:
                self.set(target.sigil, target.name, failed, where)  # reported where it is used
            return failed
        self.spend(len(text))
        table: Value
        if name == "read_hash":
            table = parse_hash_file(text, path, self.limits)
        else:
            table = parse_array_file(text, path, self.limits)
        if target is not None:
            current = self.value(target.sigil, target.name)
            self.spend(len(current.entries) if isinstance(current, HashV) else 1)
            if isinstance(table, HashV) and isinstance(current, HashV):
                kept = tuple(e for e in current.entries if table.get(e.key) is None)
                table = HashV(kept + table.entries, path)
            elif isinstance(table, ListV) and isinstance(current, ListV):
                table = ListV(current.items + table.items, path, where)
            self.set(target.sigil, target.name, table, where)
        return table

    def include(self, item: Value, where: Where, *, optional: bool) -> None:
        path = text_of(item)
        if path is None:
            raise Trouble("include_config_files of a file name that is not known")
        if self.include_depth >= self.limits.max_includes:
            raise Trouble(f"include_config_files nested deeper than {self.limits.max_includes}")
        try:
            text = self.reader(path)
        except FileNotFoundError:
            if optional:
                return
            raise Trouble(f"include_config_files('{path}'): no such file") from None
        except (OSError, ValueError) as err:
            raise Trouble(f"include_config_files('{path}'): cannot read it ({err})") from err
        self.include_depth += 1
        try:
            self.run_text(text, path)
        finally:
            self.include_depth -= 1

    def push(self, name: str, args: tuple[Node, ...], where: Where) -> Value:
        if not args or not isinstance(args[0], Var) or args[0].sigil != "@":
            raise Trouble(f"{name} onto something other than an array")
        array = args[0].name
        current = self.value("@", array)
        items = list(current.items) if isinstance(current, ListV) else []
        more = self.list_of(args[1:], where)
        self.spend(len(items) + len(more))
        items = items + more if name == "push" else more + items
        if len(items) > self.limits.max_items:
            raise Trouble(f"a list of more than {self.limits.max_items} items")
        self.set("@", array, ListV(tuple(items), where=where), where)
        return Num(float(len(items)), where)


# Functions a configuration calls for their effect that the mapping reports by name.
KNOWN_EFFECTS = frozenset({"read_l10n_templates", "read_text", "read_cidr", "dkim_key"})


# ---------------------------------------------------------------------------
# read_hash and read_array files
# ---------------------------------------------------------------------------

_LOOKUP_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[^#" \t]+|[ \t]+|.', re.S)


def _split_lookup_line(line: str) -> tuple[str, str]:
    """(left, right) of a lookup file line, as amavisd-new's read_hash splits it."""
    left, right = "", ""
    at_right = False
    for piece in _LOOKUP_TOKEN.findall(line):
        if piece == "#":
            break
        if not at_right and piece.strip(" \t") == "":
            if left:
                at_right = True
            continue
        if at_right:
            right += piece
        else:
            left += piece
    return left, right.strip(" \t")


def _unquote_address(text: str) -> str:
    """An RFC 5321 quoted address as amavisd-new keys it: ``"a b"@x`` is ``a b@x``."""
    if text.startswith('"'):
        local, at, domain = text.rpartition("@")
        if local.endswith('"') and len(local) >= 2:
            inner = re.sub(r"\\(.)", r"\1", local[1:-1])
            return f"{inner}{at}{domain}"
    return text


def parse_hash_file(text: str, path: str, limits: Limits | None = None) -> HashV:
    """A ``read_hash`` file: one key per line, an optional value after whitespace
    (absent: 1), ``#`` comments; keys lower-cased, as amavisd-new does by default."""
    limits = limits or Limits()
    entries: dict[str, Entry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        left, right = _split_lookup_line(line)
        if not left and not right:
            continue
        key = _unquote_address(left).lower()
        value: Value = Str(right, Where(path, number)) if right else Num(1.0, Where(path, number))
        entries.pop(key, None)
        entries[key] = Entry(key, value, Where(path, number))
        if len(entries) > limits.max_items:
            break
    return HashV(tuple(entries.values()), path)


def parse_array_file(text: str, path: str, limits: Limits | None = None) -> ListV:
    """A ``read_array`` file: one item per line, ``#`` comments, surrounding blanks trimmed."""
    limits = limits or Limits()
    items: list[Value] = []
    for number, line in enumerate(text.splitlines(), 1):
        left = ""
        for piece in _LOOKUP_TOKEN.findall(line):
            if piece == "#":
                break
            left += piece
        left = left.strip(" \t")
        if left:
            items.append(Str(_unquote_address(left), Where(path, number)))
        if len(items) > limits.max_items:
            break
    return ListV(tuple(items), path)
