"""``mail-filter import-amavis``: amavisd-new's configuration in, ``filter.toml`` and lists out.

This module owns the files side of the import: finding the configuration
files in the order amavisd-new reads them (a ``conf.d`` directory as
``run-parts`` lists it, with Debian's ``/usr/share/amavis/conf.d`` first when
``/etc/amavis/conf.d`` is given), reading them and the files they name
(``read_hash``) within size limits and never from a device or a pipe, writing
``filter.toml`` with a comment naming the amavisd-new source of each key and
the list files beside it (never over existing files unless ``--force``),
checking that what it wrote loads as mail-filter's configuration, and printing
the report.  What each setting means is :mod:`filter.amavis_map`'s; Perl is
read by :mod:`filter.amavis_perl`, never run.

Exit status: 0 when every setting was carried over, 1 when the files were
written but some settings could not be (the report says which and why), 66
(EX_NOINPUT) when no configuration could be read, 73 (EX_CANTCREAT) when the
output cannot be written or would overwrite a file, 2 for a bad ``--var``.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from filter.amavis_known import AMAVIS_DEFAULTS
from filter.amavis_map import carry
from filter.amavis_notes import (
    CHANGED,
    NOT_CARRIED,
    NOT_NEEDED,
    Carried,
    ListEntry,
    Note,
    Setting,
    TomlValue,
)
from filter.amavis_perl import Machine
from filter.amavis_values import Limits
from filter.config import ConfigError, from_mapping
from filter.lookup import AddressList, ListError

__all__ = [
    "EX_CANTCREAT",
    "EX_INCOMPLETE",
    "EX_NOINPUT",
    "EX_USAGE",
    "ImportLimits",
    "config_files",
    "import_amavis",
    "run",
]

EX_INCOMPLETE = 1
EX_USAGE = 2  # as argparse answers a bad command line
EX_NOINPUT = 66  # sysexits.h
EX_CANTCREAT = 73  # sysexits.h

# conf.d names run-parts runs (and so amavisd-new reads): dpkg's .dpkg-old, an editor's
# backup~ and anything with a dot are skipped.
_RUN_PARTS_NAME = re.compile(r"[A-Za-z0-9_-]+")
LIST_NAMES = ("whitelist", "blacklist", "spam_lovers", "unchecked_lovers")


@dataclass(frozen=True)
class ImportLimits:
    """Bounds on what one import reads."""

    config_bytes: int = 4 << 20  # one configuration file
    list_bytes: int = 16 << 20  # one file read_hash or read_array reads
    total_bytes: int = 64 << 20  # everything read
    files: int = 500  # configuration files


class _Budget:
    def __init__(self, limits: ImportLimits) -> None:
        self.limits = limits
        self.left = limits.total_bytes

    def read(self, path: Path, limit: int) -> str:
        """A regular file's text, at most ``limit`` bytes; ValueError or OSError if not."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            cap = min(limit, self.left)
            if info.st_size > cap:
                raise ValueError(f"larger than {cap} bytes")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    raise ValueError(f"larger than {cap} bytes")
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        self.left -= len(data)
        if b"\0" in data:
            raise ValueError("a binary file (it holds NUL bytes)")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("latin-1")  # Perl reads bytes; most configurations are ASCII


class _FileReader:
    """Reads what the configuration names (read_hash...), under ``root`` when given."""

    def __init__(self, budget: _Budget, root: Path | None) -> None:
        self.budget = budget
        self.root = root

    def __call__(self, name: str) -> str:
        path = Path(name)
        if self.root is not None:
            path = self.root / name.lstrip("/")
        return self.budget.read(path, self.budget.limits.list_bytes)


def _package_dir(path: Path) -> Path | None:
    """Debian's /usr/share/amavis/conf.d beside a given .../etc/amavis/conf.d, if there."""
    resolved = path.resolve()
    if resolved.parts[-3:] != ("etc", "amavis", "conf.d"):
        return None
    package = resolved.parents[2] / "usr" / "share" / "amavis" / "conf.d"
    return package if package.is_dir() else None


def config_files(
    paths: Sequence[Path], limits: ImportLimits | None = None
) -> tuple[list[Path], list[Note]]:
    """The configuration files in the order amavisd-new reads them, and notes on skipped ones.

    A directory is read as run-parts lists it; for ``.../etc/amavis/conf.d``,
    Debian's package defaults (``.../usr/share/amavis/conf.d``) come first, as
    amavisd-new reads them.  Raises FileNotFoundError for a path that is not there.
    """
    limits = limits or ImportLimits()
    given = {p.resolve() for p in paths}
    ordered: list[Path] = []
    notes: list[Note] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        if not path.is_dir():
            ordered.append(path)
            continue
        package = _package_dir(path)
        if package is not None and package.resolve() not in given and package not in ordered:
            ordered += _directory(package, notes)
        ordered += _directory(path, notes)
    if len(ordered) > limits.files:
        notes.append(
            Note(
                NOT_CARRIED,
                str(ordered[limits.files]),
                "(files)",
                f"more than {limits.files} files: the rest are not read",
            )
        )
        ordered = ordered[: limits.files]
    return ordered, notes


def _directory(path: Path, notes: list[Note]) -> list[Path]:
    out: list[Path] = []
    for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if not _RUN_PARTS_NAME.fullmatch(entry.name):
            notes.append(
                Note(
                    NOT_NEEDED,
                    str(entry),
                    "(file)",
                    "amavisd-new does not read it"
                    " either (run-parts skips names with a dot or other characters)",
                )
            )
        elif entry.is_file():
            out.append(entry)
    return out


@dataclass(frozen=True)
class Imported:
    """The import's result: what was carried, the files read, and the files to write."""

    carried: Carried
    read: tuple[Path, ...]
    files: dict[str, str]  # file name in the output directory -> text


def import_amavis(
    paths: Sequence[Path],
    output: Path,
    *,
    root: Path | None = None,
    variables: dict[str, str] | None = None,
    limits: ImportLimits | None = None,
) -> Imported:
    """Read the configuration and make filter.toml and the list files (not written yet).

    Raises FileNotFoundError when a path is missing and ValueError when no
    configuration file could be read.
    """
    limits = limits or ImportLimits()
    files, notes = config_files(paths, limits)
    budget = _Budget(limits)
    machine = Machine(_FileReader(budget, root), Limits(), variables or {})
    machine.run_text(AMAVIS_DEFAULTS, "amavisd-new's defaults", builtin=True)
    read: list[Path] = []
    for path in files:
        try:
            text = budget.read(path, limits.config_bytes)
        except (OSError, ValueError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            notes.append(Note(NOT_CARRIED, str(path), "(file)", f"not read: {reason}"))
            continue
        machine.run_text(text, str(path))
        read.append(path)
    if not read:
        raise ValueError(
            "no configuration file could be read: "
            + "; ".join(f"{n.where}: {n.text}" for n in notes)
            if notes
            else "no configuration file found"
        )
    carried = carry(machine)
    carried.notes[:0] = notes
    rendered = _render(carried, read, output.resolve())
    _validate(rendered)
    return Imported(carried, tuple(read), rendered)


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

_SECTIONS = ("server", "reinject", "clamd", "spamd", "policy", "lists", "banned", "notices")


def _toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple):
        items = [_toml_string(v) for v in value]
        one_line = "[" + ", ".join(items) + "]"
        if len(one_line) <= 80:
            return one_line
        return "[\n" + "".join(f"    {item},\n" for item in items) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _comment(text: str) -> str:
    """A one-line TOML comment: control characters shown as ?."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return "# " + clean


def _render(carried: Carried, read: Sequence[Path], output: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    lines = [
        "# mail-filter configuration imported from amavisd-new by `mail-filter import-amavis`.",
        "# Read, in this order:",
        *(_comment(f"  {path}") for path in read),
        "# Each key names the amavisd-new setting it comes from; keys not here keep",
        "# mail-filter's defaults (conf/filter.toml documents every key). What could not be",
        "# carried over is listed at the end. Check the file with: mail-filter check-config FILE",
    ]
    settings = list(carried.settings)
    for name, entries in carried.lists.items():
        list_path = output / name
        files[name] = _render_list(name, entries)
        sources = list(dict.fromkeys(e.source.rpartition(":")[0] or e.source for e in entries))
        shown = ", ".join(sources[:3]) + (" ..." if len(sources) > 3 else "")
        maps = carried.list_sources.get(name, "")
        settings.append(
            Setting("lists", name, str(list_path), f"{maps}; {len(entries)} entries from {shown}")
        )
    per_recipient: Setting | None = None
    for section in _SECTIONS:
        chosen = [s for s in settings if s.section == section]
        if not chosen:
            continue
        lines += ["", f"[{section}]"]
        for setting in chosen:
            if isinstance(setting.value, dict):
                per_recipient = setting
                continue
            lines.append(_comment(setting.source))
            lines.append(f"{setting.key} = {_toml_value(setting.value)}")
        if section == "policy" and per_recipient is not None:
            lines += ["", "[policy.per_recipient]", _comment(per_recipient.source)]
            assert isinstance(per_recipient.value, dict)
            for key, levels in per_recipient.value.items():
                inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in levels.items())
                lines.append(f"{_toml_string(key)} = {{ {inner} }}")
    missing = [n for n in carried.notes if n.kind == NOT_CARRIED]
    if missing:
        lines += ["", "# Not carried over (the import's report says more):"]
        lines += [_comment(f"  {n.where}  {n.setting}: {n.text}") for n in missing]
    files["filter.toml"] = "\n".join(lines) + "\n"
    return files


def _render_list(name: str, entries: Sequence[ListEntry]) -> str:
    lines = [
        f"# {name}, imported from amavisd-new by `mail-filter import-amavis`.",
        "# One entry per line: SENDER, or SENDER RECIPIENT (docs/mail-filter.md#lists).",
    ]
    current = None
    for entry in entries:
        origin = entry.source.rpartition(":")[0] or entry.source
        if origin != current:
            lines.append(_comment(f"from {origin}"))
            current = origin
        lines.append(entry.entry)
    return "\n".join(lines) + "\n"


def _validate(files: dict[str, str]) -> None:
    """What the import wrote must load: a failure here is a bug in the import, not the input."""
    try:
        from_mapping(tomllib.loads(files["filter.toml"]))
    except (tomllib.TOMLDecodeError, ConfigError) as err:
        raise AssertionError(f"the imported filter.toml does not load: {err}") from err
    for name in LIST_NAMES:
        if name in files:
            try:
                AddressList.parse(name, files[name].splitlines())
            except ListError as err:
                raise AssertionError(f"the imported {name} does not load: {err}") from err


# ---------------------------------------------------------------------------
# Writing, and the report
# ---------------------------------------------------------------------------


def write(output: Path, files: dict[str, str], *, force: bool = False) -> list[Path]:
    """Write the files into ``output`` (made if missing); FileExistsError before writing
    anything when one is there and ``force`` is not given."""
    # Encoded first: a value that no UTF-8 file can hold (a lone surrogate from Perl's
    # "\x{D800}") fails before anything is written, not half way through.
    encoded = {name: text.encode("utf-8") for name, text in files.items()}
    if output.is_symlink():
        # Often run as root: a planted link must not send the files somewhere else.
        raise OSError(f"{output} is a symbolic link; give the directory itself")
    output.mkdir(parents=True, exist_ok=True)
    if output.is_symlink() or not output.is_dir():
        raise OSError(f"{output} is not a directory")
    targets = {name: output / name for name in files}
    existing = [str(p) for p in targets.values() if p.exists() or p.is_symlink()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already there (--force replaces them)")
    written = []
    for name in files:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=output)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encoded[name])
            os.chmod(tmp, 0o644)
            os.replace(tmp, targets[name])
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(targets[name])
    return written


def _sort_key(note: Note, order: dict[str, int]) -> tuple[int, int]:
    path, _, line = note.where.rpartition(":")
    if not line.isdigit():
        path, line = note.where, "0"
    return order.get(path, len(order)), int(line)


def report(imported: Imported, written: Sequence[Path]) -> str:
    """The text printed after an import: what was read, written, carried, and not."""
    carried = imported.carried
    order = {str(p): n for n, p in enumerate(imported.read)}
    out = [f"Read {len(imported.read)} file(s): " + ", ".join(str(p) for p in imported.read)]
    out.append("Wrote: " + ", ".join(str(p) for p in written))
    out += ["", f"Carried over ({len(carried.settings)} keys in filter.toml):"]
    for setting in carried.settings:
        value = (
            _toml_value(setting.value)
            if not isinstance(setting.value, dict)
            else (f"{len(setting.value)} recipients")
        )
        value = value.replace("\n", " ")
        value = value if len(value) <= 50 else value[:47] + "..."
        out.append(f"  {setting.section}.{setting.key} = {value}    <- {setting.source}")
    for name, entries in carried.lists.items():
        source = carried.list_sources.get(name, "")
        out.append(f"  lists.{name}: {len(entries)} entries    <- {source}")
    for kind, title in (
        (CHANGED, "Carried over with a difference"),
        (NOT_NEEDED, "Not needed with mail-filter"),
        (NOT_CARRIED, "Not carried over"),
    ):
        chosen = sorted(
            (n for n in carried.notes if n.kind == kind), key=lambda n: _sort_key(n, order)
        )
        if not chosen:
            continue
        out += ["", f"{title} ({len(chosen)}):"]
        out += [f"  {n.where}  {n.setting}: {n.text}" for n in chosen]
    missing = sum(1 for n in carried.notes if n.kind == NOT_CARRIED)
    out.append("")
    if missing:
        out.append(
            f"{missing} setting(s) could not be carried over (listed above, and at the end"
            " of filter.toml): review them before using the file. Exit status 1."
        )
    else:
        out.append("Every setting was carried over. Exit status 0.")
    return "\n".join(out) + "\n"


def parse_variables(pairs: Sequence[str]) -> dict[str, str]:
    """``--var NAME=VALUE`` flags as a mapping; ValueError names a bad one."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        name = name.strip().lstrip("$")
        if not eq or not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ValueError(f"--var {pair!r}: expected NAME=VALUE, e.g. mydomain=example.com")
        out[name] = value
    return out


def run(
    paths: Sequence[Path],
    output: Path,
    *,
    force: bool = False,
    root: Path | None = None,
    variables: Sequence[str] = (),
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The command: import, write, report; the exit status (see the module's docstring)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        pinned = parse_variables(variables)
    except ValueError as error:
        print(f"mail-filter import-amavis: {error}", file=err)
        return EX_USAGE
    try:
        imported = import_amavis(paths, output, root=root, variables=pinned)
    except (FileNotFoundError, ValueError) as error:
        print(f"mail-filter import-amavis: {error}", file=err)
        return EX_NOINPUT
    try:
        written = write(output, imported.files, force=force)
    except UnicodeEncodeError as error:
        print(
            f"mail-filter import-amavis: a value holds {error.object[error.start : error.end]!r},"
            " which no file can hold (a lone surrogate, e.g. Perl's \\x{D800}); nothing written",
            file=err,
        )
        return EX_NOINPUT
    except OSError as error:
        print(f"mail-filter import-amavis: cannot write {output}: {error}", file=err)
        return EX_CANTCREAT
    out.write(report(imported, written))
    return 0 if imported.carried.complete else EX_INCOMPLETE
