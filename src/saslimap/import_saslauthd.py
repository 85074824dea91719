"""Carrying a saslauthd set-up (``/etc/default/saslauthd``) over to a saslimap configuration.

This module owns the mapping from what Debian's init script starts saslauthd
with to saslimap's keys, the report that says for every setting whether it was
carried over (and how saslimap's behaviour differs) or why not, and the TOML
text written.  It works the way the init script does (``/etc/init.d/saslauthd``
in Debian's sasl2-bin, ``start_instance``): it sources the file (here: reads
it with :mod:`saslimap.shellvars`, running nothing), builds
``-a $MECHANISMS -O $MECH_OPTIONS $OPTIONS -n $THREADS``, split on blanks
without quote removal, and hands that to saslauthd's ``getopt`` (option
string ``a:cdhO:lm:n:rs:t:vV``, saslauthd 2.1.27 and 2.1.28), so a later
``-O``, ``-m``, ``-n`` or ``-t`` wins as it does for saslauthd.

What the options meant is read from saslauthd's source (saslauthd-main.c,
auth_rimap.c, cache.h) and its man page: ``-O host[/port]`` names the IMAP
server for rimap (port or service name, default ``imap``, 143; rimap has no
TLS: it sends ``LOGIN`` in clear), ``-c`` caches successes for ``-t`` seconds
(default 28800), ``-r`` joins ``login@realm``, ``-m DIR`` puts the socket at
``DIR/mux``, ``-n N`` runs N workers (0: a process per connection).

Pure: text in, :class:`Imported` out, :class:`Unusable` when nothing sensible
can be written.  Reading and writing files is the command line's job.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from saslimap import shellvars
from saslimap.config import (
    ConfigError,
    ImapTarget,
    from_mapping,
    parse_imap_url,
    require_complete,
)

# saslauthd 2.1.27/2.1.28's getopt string (saslauthd-main.c; `strings` on Debian's binary).
OPTSTRING = "a:cdhO:lm:n:rs:t:vV"
# What Debian's init script uses when OPTIONS is empty.
DEBIAN_DEFAULT_OPTIONS = "-c -m /var/run/saslauthd"
# saslauthd's compiled-in run directory on Debian (PATH_SASLAUTHD_RUNDIR).
SASLAUTHD_RUN_DIR = "/var/run/saslauthd"
# cache.h: CACHE_DEFAULT_TIMEOUT, seconds a cached success lasts without -t.
SASLAUTHD_CACHE_TIMEOUT = 28800
# Debian's arrangement: the socket's directory is root:sasl 0710 (init script's
# createdir, or dpkg-statoverride), so members of group sasl (postfix) connect.
SOCKET_GROUP = "sasl"
SOCKET_MODE = "0660"
# Bounds of the keys written (saslimap.config).
MAX_TTL = 30 * 86400
MAX_CONCURRENCY = 1024
DEFAULT_CONCURRENCY = 16
DEFAULT_REFRESH_AFTER = 300
# The service names rimap's getaddrinfo() finds in Debian's /etc/services.
KNOWN_SERVICES = {"imap": 143, "imap2": 143, "imap3": 220, "imaps": 993}
# Variables Debian's init script reads; anything else in the file it ignores.
READ_BY_INIT_SCRIPT = ("START", "DESC", "NAME", "MECHANISMS", "MECH_OPTIONS", "THREADS", "OPTIONS")
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


class Unusable(Exception):
    """The file cannot become a saslimap configuration; the text says why and what to do."""


class Outcome(enum.Enum):
    """What became of one setting."""

    CARRIED = "carried"  # saslimap does the same
    CHANGED = "changed"  # carried over, but saslimap behaves differently: the text says how
    IGNORED = "ignored"  # it never changed saslauthd's answers (labels, saslauthd's own tuning)
    NOT_CARRIED = "not carried"  # it did, and this import could not carry it: the text says why


@dataclass(frozen=True)
class Item:
    """One line of the report: which setting (``source``), what became of it, and why."""

    outcome: Outcome
    source: str
    text: str


@dataclass(frozen=True)
class Imported:
    """The configuration written (``settings``: section -> key -> value) and the report."""

    settings: dict[str, dict[str, object]]
    items: tuple[Item, ...]
    toml: str

    @property
    def complete(self) -> bool:
        """Whether every setting that changed saslauthd's answers was carried over."""
        return all(item.outcome is not Outcome.NOT_CARRIED for item in self.items)


@dataclass(frozen=True)
class Word:
    """One argument saslauthd was started with, and the variable it came from."""

    text: str
    origin: str


@dataclass(frozen=True)
class Option:
    """One option as saslauthd's getopt returns it."""

    letter: str
    value: str | None
    origin: str

    @property
    def source(self) -> str:
        """How the report names it: ``OPTIONS -t 3600``."""
        shown = f"-{self.letter}" if self.value is None else f"-{self.letter} {self.value}"
        return f"{self.origin} {shown}"


def daemon_args(variables: Mapping[str, str]) -> list[Word]:
    """The arguments Debian's init script starts saslauthd with, as saslauthd receives them.

    ``DAEMON_ARGS="-a $MECHANISMS $MECH_OPTIONS $OPTIONS $THREAD_OPTIONS"`` is
    expanded unquoted: split on blanks, quotes inside the values kept as text.
    """
    options = variables.get("OPTIONS", "")
    options_origin = "OPTIONS" if options else "OPTIONS (empty: the init script's default)"
    mechanisms = shellvars.split_fields(variables.get("MECHANISMS", ""))
    # Without MECHANISMS the init script does not start saslauthd at all; leaving
    # out -a keeps it from taking the next option as its value.
    words = [Word("-a", "MECHANISMS")] if mechanisms else []
    words += [Word(w, "MECHANISMS") for w in mechanisms]
    if variables.get("MECH_OPTIONS", ""):
        words.append(Word("-O", "MECH_OPTIONS"))
        words += [
            Word(w, "MECH_OPTIONS") for w in shellvars.split_fields(variables["MECH_OPTIONS"])
        ]
    for text in shellvars.split_fields(options or DEBIAN_DEFAULT_OPTIONS):
        words.append(Word(text, options_origin))
    if variables.get("THREADS", ""):
        words.append(Word("-n", "THREADS"))
        words += [Word(w, "THREADS") for w in shellvars.split_fields(variables["THREADS"])]
    return words


def getopt(
    words: list[Word], optstring: str = OPTSTRING
) -> tuple[list[Option], list[Word], list[Item]]:
    """GNU getopt as saslauthd calls it: ``(options, other words, errors)``.

    Options are returned in order (a later one overrides an earlier one where
    saslauthd keeps one value); words that are not options are passed over, as
    GNU getopt permutes them; ``--`` ends the options.  An unknown letter or a
    missing argument is an error item: saslauthd prints its usage and exits.
    """
    takes = {c for i, c in enumerate(optstring) if c != ":" and optstring[i + 1 : i + 2] == ":"}
    known = set(optstring) - {":"}
    options: list[Option] = []
    others: list[Word] = []
    errors: list[Item] = []
    n = 0
    while n < len(words):
        word = words[n]
        n += 1
        if word.text == "--":
            others.extend(words[n:])
            break
        if not word.text.startswith("-") or word.text == "-":
            others.append(word)
            continue
        letters = word.text[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter not in known:
                errors.append(
                    Item(
                        Outcome.NOT_CARRIED,
                        f"{word.origin} -{letter}",
                        "not an option of saslauthd 2.1.28: saslauthd would print its usage "
                        "and exit",
                    )
                )
                continue
            if letter not in takes:
                options.append(Option(letter, None, word.origin))
                continue
            if letters:
                value, letters = letters, ""
            elif n < len(words):
                value = words[n].text
                n += 1
            else:
                errors.append(
                    Item(
                        Outcome.NOT_CARRIED,
                        f"{word.origin} -{letter}",
                        "has no value: saslauthd would print its usage and exit",
                    )
                )
                break
            options.append(Option(letter, value, word.origin))
    return options, others, errors


def _lookup_service(name: str) -> int:
    """The TCP port of a service name in this host's /etc/services, or -1."""
    try:
        return socket.getservbyname(name, "tcp")
    except OSError:
        return -1


def rimap_target(
    option: str, services: Callable[[str], int] = _lookup_service
) -> tuple[ImapTarget, Outcome, str]:
    """saslauthd's ``-O host[/port]`` for rimap as an IMAP target, with what changes and why.

    rimap has no TLS: it logs in with ``LOGIN`` in clear on the port given
    (default ``imap``, 143).  saslimap never sends a password in clear to
    another host, so a remote server on a plain port gets ``imap://``
    (STARTTLS required) and port 993 gets ``imaps://``; a server on the
    loopback address keeps clear text (``imap+plaintext://``), as nothing
    leaves the host.
    """
    host, slash, service = option.partition("/")
    if not host:
        raise Unusable(f"-O {option!r} names no IMAP server (rimap wants host[/port])")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Unusable(
                f"-O {option!r}: rimap wants host/port with a slash; saslauthd cannot start "
                "with a colon. Give the server with --imap imaps://host[:port]"
            ) from None
    elif not _HOST.fullmatch(host):
        raise Unusable(f"-O {option!r}: {host!r} is not a host name or address")
    service = service if slash else "imap"
    if service.isdigit():
        port = int(service)
    else:
        port = KNOWN_SERVICES.get(service, -1)
        if port < 0:
            port = services(service)
    if not 0 < port < 65536:
        raise Unusable(
            f"-O {option!r}: unknown port or service {service!r} (saslauthd cannot start "
            "with it). Give the server with --imap imaps://host[:port]"
        )
    if port == 993:
        target = ImapTarget("imaps", host, port)
        return target, Outcome.CHANGED, (
            f"imap.url = {_url(target)}: rimap has no TLS and spoke plain IMAP to port 993, "
            "which cannot have worked; saslimap speaks TLS there and verifies the certificate "
            "(imap.ca_file names an internal CA)"
        )  # fmt: skip
    if ImapTarget("imap", host, port).is_loopback:
        target = ImapTarget("imap+plaintext", host, port)
        return target, Outcome.CARRIED, (
            f"imap.url = {_url(target)}: clear text, as rimap, to this host's own port "
            f"{port} (nothing leaves the host). If that port is a TLS tunnel (stunnel) to the "
            "real server, import again with --imap imaps://server"
        )  # fmt: skip
    target = ImapTarget("imap", host, port)
    return target, Outcome.CHANGED, (
        f"imap.url = {_url(target)}: rimap sent every password in clear to port {port}; "
        "saslimap requires STARTTLS there and verifies the certificate (imap.ca_file names "
        'an internal CA). A server without STARTTLS gets every check answered "try later": '
        "then import again with --imap imaps://host (port 993), or imap+plaintext://host to "
        "keep clear text"
    )  # fmt: skip


def _url(target: ImapTarget) -> str:
    """``target`` as a URL, the port left out where it is the scheme's default."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 993 if target.scheme == "imaps" else 143
    port = "" if target.port == default else f":{target.port}"
    return f"{target.scheme}://{host}{port}"


def convert(
    text: str,
    *,
    source: str,
    imap_url: str = "",
    services: Callable[[str], int] = _lookup_service,
) -> Imported:
    """Read a ``/etc/default/saslauthd`` text and build saslimap's configuration and report.

    ``imap_url`` (the command's ``--imap``) names the IMAP server instead of
    rimap's ``-O``, and makes a file for another mechanism (pam, shadow, ldap)
    importable.  ``source`` is the file's name, for the header of the TOML text.
    """
    return _Converter(source, imap_url, services).run(text)


class _Converter:
    """One conversion: settings and report items collected as the options are read."""

    def __init__(self, source: str, imap_url: str, services: Callable[[str], int]) -> None:
        self.source = source
        self.imap_url = imap_url
        self.services = services
        self.settings: dict[str, dict[str, object]] = {}
        self.comments: dict[tuple[str, str], str] = {}
        self.items: list[Item] = []

    def _set(self, key: str, value: object, comment: str) -> None:
        section, _, name = key.partition(".")
        self.settings.setdefault(section, {})[name] = value
        self.comments[(section, name)] = comment

    def _report(self, outcome: Outcome, source: str, text: str) -> None:
        self.items.append(Item(outcome, source, text))

    def run(self, text: str) -> Imported:
        if "\r\n" in text:
            raise Unusable(
                "Windows line ends (CR LF): sh reads each CR as part of a value, so saslauthd "
                "could not use this file either; convert it first (sed -i 's/\\r$//' FILE)"
            )
        try:
            shell = shellvars.parse(text)
        except shellvars.ShellSyntaxError as err:
            raise Unusable(f"not a shell file the init script could read: {err}") from err
        variables = {name: a.value for name, a in shell.variables.items()}
        self._require_readable(shell)
        mechanism = self._mechanism(variables)
        options, others, errors = getopt(daemon_args(variables))
        last: dict[str, Option] = {}
        for option in options:
            last[option.letter] = option
        seen = {option.letter for option in options}
        self._imap(mechanism, last.get("O"), variables)
        self._second_mechanism(options)
        self._socket(last.get("m"))
        self._realm(last.get("r"))
        self._cache(last.get("c"), last.get("t"), last.get("s"))
        self._workers(last.get("n"))
        self._saslauthd_only(options, seen)
        self.items.extend(errors)
        for word in others:
            self._report(
                Outcome.IGNORED,
                f"{word.origin} {word.text}",
                "not an option: saslauthd passes over it",
            )
        self._file_only(shell, variables)
        toml = self._toml()
        try:
            require_complete(from_mapping(tomllib.loads(toml)))
        except (ConfigError, tomllib.TOMLDecodeError) as err:  # a bug here, said plainly
            raise Unusable(f"the imported configuration does not load: {err}") from err
        return Imported(self.settings, tuple(self.items), toml)

    def _require_readable(self, shell: shellvars.ShellFile) -> None:
        needed = ["OPTIONS"] + ([] if self.imap_url else ["MECHANISMS", "MECH_OPTIONS"])
        for name in needed:
            why = shell.unreadable.get(name)
            if why is not None:
                raise Unusable(
                    f"{name} could not be read (line {why.line}: {why.reason}); "
                    "set it to a plain value and import again"
                )

    def _mechanism(self, variables: Mapping[str, str]) -> str:
        words = shellvars.split_fields(variables.get("MECHANISMS", ""))
        mechanism = words[0].lower() if words else ""
        if mechanism == "rimap":
            return mechanism
        if not self.imap_url:
            said = f"MECHANISMS={mechanism}" if mechanism else "MECHANISMS is empty"
            raise Unusable(
                f"{said}: saslimap checks passwords by logging in to an IMAP server only "
                "(saslauthd's rimap). To move to it anyway, name the server: "
                "--imap imaps://imap.example.com"
            )
        return mechanism

    def _imap(self, mechanism: str, option: Option | None, variables: Mapping[str, str]) -> None:
        if self.imap_url:
            try:
                target = parse_imap_url(self.imap_url, "--imap")
            except ConfigError as err:
                raise Unusable(str(err)) from err
            url = self.imap_url
            if mechanism != "rimap":
                self._report(
                    Outcome.CHANGED,
                    f"MECHANISMS={mechanism or '(empty)'}",
                    f"users were checked by {mechanism or 'nothing'}; now by an IMAP "
                    f"login to {url} (--imap): their IMAP passwords count",
                )
                if variables.get("MECH_OPTIONS", "") or option is not None:
                    self._report(
                        Outcome.IGNORED,
                        "MECH_OPTIONS",
                        f"an option of {mechanism or 'no mechanism'}, not of rimap",
                    )
            elif option is not None:
                self._report(Outcome.CHANGED, option.source, f"replaced by --imap {url}")
            self._set("imap.url", url, "from --imap")
            if target.scheme == "imap+plaintext" and not target.is_loopback:
                self._report(
                    Outcome.CHANGED,
                    "--imap",
                    "clear text to another host: passwords cross the network "
                    "readable (saslimap logs a warning at start)",
                )
            return
        if option is None or not option.value:
            raise Unusable(
                "MECHANISMS=rimap without -O (MECH_OPTIONS): no IMAP server is named, and "
                "saslauthd cannot start so. Name it: --imap imaps://imap.example.com"
            )
        target, outcome, why = rimap_target(option.value, self.services)
        self._report(outcome, option.source, why)
        how = {
            "imaps": "TLS",
            "imap": "STARTTLS, required: rimap sent passwords in clear",
            "imap+plaintext": "clear text, as rimap, to this host itself",
        }[target.scheme]
        self._set("imap.url", _url(target), f"from {option.source} (rimap): {how}")

    def _second_mechanism(self, options: list[Option]) -> None:
        extra = [o for o in options if o.letter == "a"][1:]
        for option in extra:
            self._report(
                Outcome.NOT_CARRIED,
                option.source,
                "a second -a: saslauthd prints its usage and exits",
            )

    def _socket(self, option: Option | None) -> None:
        if option is None or option.value is None:  # getopt gives -m its value
            directory, source = SASLAUTHD_RUN_DIR, "OPTIONS (no -m)"
            how = f"saslauthd's compiled-in {SASLAUTHD_RUN_DIR} (Debian's init script wants -m)"
        else:
            directory, source = option.value, option.source
            how = "the same socket, so Postfix's sasl/smtpd.conf needs no change"
        if not directory.startswith("/"):
            raise Unusable(f"{source}: -m needs an absolute path (saslauthd cannot start so)")
        path = directory.rstrip("/") + "/mux"
        if len(path.encode()) > 107:
            raise Unusable(f"{source}: {path} is longer than the 107 bytes a socket path holds")
        self._set("server.socket", path, f"from {source}: saslauthd listens on DIR/mux")
        self._set(
            "server.socket_mode", SOCKET_MODE,
            "its group may connect, as Debian's root:sasl 0710 saslauthd directory allowed",
        )  # fmt: skip
        self._set("server.socket_group", SOCKET_GROUP, "Debian's (adduser postfix sasl)")
        self._report(
            Outcome.CARRIED,
            source,
            f"server.socket = {path}: {how}; mode 0660, group sasl, as Debian's "
            "saslauthd directory allowed. Under systemd, saslimap.socket's "
            "ListenStream= must name the same path",
        )
        # Not in saslauthd: the shipped units create this socket too (saslimap-dovecot.socket),
        # and saslimap refuses a socket passed for a listener that is off. On, it is the
        # recommended Postfix wiring, and harmless while Postfix still uses the mux.
        self._set(
            "dovecot.socket", DOVECOT_SOCKET,
            "new: the Dovecot-protocol listener (smtpd_sasl_type = dovecot), as shipped",
        )  # fmt: skip
        self._set("dovecot.socket_group", "postfix", "Postfix's smtpd connects to it")
        self._report(
            Outcome.CHANGED,
            "(no saslauthd option)",
            f"dovecot.socket = {DOVECOT_SOCKET}: a second listener for Postfix's "
            "smtpd_sasl_type = dovecot (per-IP limits), as the shipped "
            "saslimap-dovecot.socket creates it; Postfix may keep the saslauthd wiring",
        )

    def _realm(self, option: Option | None) -> None:
        if option is not None:
            self._set("users.realm", "join", f"from {option.source}: login@realm")
            self._report(
                Outcome.CARRIED,
                option.source,
                'users.realm = "join": IMAP is asked about login@realm when '
                "a realm is given, as saslauthd -r",
            )
            return
        self._set("users.realm", "ignore", "no -r: the login field alone")
        self._report(
            Outcome.CARRIED,
            "OPTIONS (no -r)",
            'users.realm = "ignore": IMAP is asked about the login field alone '
            "(alice@example.com is checked as alice), as saslauthd without -r",
        )

    def _cache(self, cache: Option | None, timeout: Option | None, size: Option | None) -> None:
        seconds = SASLAUTHD_CACHE_TIMEOUT
        if timeout is not None:
            value = timeout.value or ""
            if not value.isdigit() or int(value) == 0:
                self._report(
                    Outcome.NOT_CARRIED,
                    timeout.source,
                    "not a positive number of seconds: saslauthd refuses to start "
                    f"so; the cache lasts saslauthd's default {seconds} s here",
                )
            elif cache is None:
                self._report(
                    Outcome.IGNORED,
                    timeout.source,
                    "a cache lifetime without -c: saslauthd cached nothing",
                )
            else:
                seconds = int(value)
        if size is not None:
            self._report(
                Outcome.IGNORED,
                size.source,
                "sized saslauthd's shared-memory table; saslimap's cache.max_entries "
                "(default 100000) bounds its entries",
            )
        if cache is None:
            self._set("cache.max_entries", 0, "no -c: saslauthd cached nothing")
            self._report(
                Outcome.CARRIED,
                "OPTIONS (no -c)",
                "cache.max_entries = 0: no cache, every check is an IMAP login, as "
                "saslauthd without -c. saslimap's cache keeps only an HMAC under a "
                "random per-process key and re-checks entries after 5 minutes: "
                "delete this line to use it (ttl 1 h)",
            )
            return
        source = cache.source
        if timeout is not None:
            same = timeout.origin == cache.origin
            source += f" -t {timeout.value}" if same else f", {timeout.source}"
        ttl = min(seconds, MAX_TTL)
        self._set("cache.ttl", float(ttl), f"from {source}: seconds a success is remembered")
        if ttl < DEFAULT_REFRESH_AFTER:
            self._set("cache.refresh_after", float(ttl), "may not exceed ttl")
        default = " (saslauthd's default without -t)" if timeout is None else ""
        clamped = f"; saslimap's limit is {MAX_TTL} s" if ttl < seconds else ""
        self._report(
            Outcome.CHANGED if clamped else Outcome.CARRIED,
            source,
            f"cache.ttl = {ttl} s{default}{clamped}. Kept as HMAC-SHA256 under a "
            "random per-process key instead of unsalted MD5, and re-checked with IMAP "
            f"in the background after {min(ttl, DEFAULT_REFRESH_AFTER)} s, so a "
            f"changed password stops working within minutes, not {ttl} s",
        )

    def _workers(self, option: Option | None) -> None:
        if option is None:
            return
        value = option.value or ""
        if not value.isdigit():
            self._report(
                Outcome.NOT_CARRIED,
                option.source,
                "not a number of processes; imap.max_concurrency keeps its default "
                f"{DEFAULT_CONCURRENCY}",
            )
            return
        count = int(value)
        if count == 0:
            self._report(
                Outcome.CHANGED,
                option.source,
                "saslauthd forked a process per connection, without limit; saslimap "
                "always bounds its IMAP logins: imap.max_concurrency keeps its "
                f"default {DEFAULT_CONCURRENCY}",
            )
            return
        carried = min(count, MAX_CONCURRENCY)
        self._set("imap.max_concurrency", carried, f"from {option.source}: IMAP logins at once")
        self._report(
            Outcome.CARRIED if carried == count else Outcome.CHANGED,
            option.source,
            f"imap.max_concurrency = {carried}: at most {carried} IMAP logins at once, "
            f"as saslauthd's {count} worker processes (cached answers need none)",
        )

    def _saslauthd_only(self, options: list[Option], seen: set[str]) -> None:
        if "V" in seen:
            self._set("logging.level", "debug", "from -V: verbose logging")
            self._report(
                Outcome.CARRIED,
                next(o.source for o in options if o.letter == "V"),
                'logging.level = "debug": verbose, as -V (credentials stay out of it at every '
                "level)",
            )
        reasons = {
            "d": "runs saslauthd in the foreground for debugging (Debian's init script refuses "
            "it); saslimap runs in the foreground under systemd anyway",
            "l": "turned off saslauthd's accept() lock between its processes; saslimap is "
            "one process",
            "h": "makes saslauthd print its usage and exit",
            "v": "makes saslauthd print its version and exit",
        }
        for letter, why in reasons.items():
            if letter in seen:
                source = next(o.source for o in options if o.letter == letter)
                self._report(Outcome.IGNORED, source, why)

    def _file_only(self, shell: shellvars.ShellFile, variables: Mapping[str, str]) -> None:
        start = variables.get("START")
        if start != "yes":
            said = "START is not set" if start is None else f"START={start}"
            self._report(
                Outcome.IGNORED,
                said,
                "Debian's init script did not start saslauthd from this file; "
                "saslimap starts with its systemd units once they are enabled",
            )
        for name in ("DESC", "NAME"):
            if name in variables:
                self._report(Outcome.IGNORED, name, "a label for Debian's init script")
        for name in sorted(set(variables) - set(READ_BY_INIT_SCRIPT)):
            self._report(Outcome.IGNORED, name, "not read by Debian's init script")
        for skipped in shell.skipped:
            # MECHANISMS, MECH_OPTIONS and OPTIONS unread stopped the import, or --imap
            # replaced them; THREADS alone is left to its default.
            if skipped.what == "THREADS":
                self._report(
                    Outcome.NOT_CARRIED,
                    f"line {skipped.line}",
                    f"THREADS: {skipped.reason}; imap.max_concurrency keeps its "
                    f"default {DEFAULT_CONCURRENCY}",
                )
            else:
                self._report(
                    Outcome.IGNORED, f"line {skipped.line}", f"{skipped.what}: {skipped.reason}"
                )
        for line, name in shell.unset_references:
            self._report(
                Outcome.IGNORED,
                f"line {line}",
                f"${name} is not set earlier in the file: taken as empty",
            )

    def _toml(self) -> str:
        lines = [
            "# saslimap configuration, imported from a saslauthd set-up by",
            "# `saslimap import-saslauthd`: each key below says where it came from.",
            f"# Source: {_comment(self.source)}",
            "# Every other key has its default; all are documented in conf/saslimap.toml",
            "# and docs/configuration.md. Check it with: saslimap check-config FILE",
        ]
        order = ("server", "dovecot", "imap", "users", "cache", "logging")
        for section in sorted(self.settings, key=order.index):
            lines += ["", f"[{section}]"]
            for name, value in self.settings[section].items():
                lines.append(f"# {_comment(self.comments[(section, name)])}")
                lines.append(f"{name} = {_toml_value(value)}")
            if section == "users":
                lines += _USERS_ADVICE
        return "\n".join(lines) + "\n"


# Two guards saslauthd never had: left off, as before, but named where an admin looks.
_USERS_ADVICE = [
    "# New in saslimap, off here as in saslauthd: the domains whose users may",
    "# authenticate at all, and the characters a user name may hold (set the IMAP",
    "# server's own; conf/saslimap.toml shows Dovecot's). For example:",
    '# allowed_domains = ["example.com"]',
]


# Where the shipped saslimap-dovecot.socket and conf/saslimap.toml put the Dovecot listener.
DOVECOT_SOCKET = "/var/spool/postfix/private/saslimap-auth"


def _comment(text: str) -> str:
    """``text`` safe inside a one-line TOML comment (control characters replaced)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _toml_value(value: object) -> str:
    """A TOML literal for the few types written here."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    raise TypeError(f"no TOML form for {value!r}")


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quote, backslash and control characters escaped."""
    escapes = {
        '"': '\\"',
        "\\": "\\\\",
        "\b": "\\b",
        "\t": "\\t",
        "\n": "\\n",
        "\f": "\\f",
        "\r": "\\r",
    }
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
