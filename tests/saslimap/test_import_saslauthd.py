"""import-saslauthd's mapping: saslauthd's options, as Debian's init script passes them, to ours."""

from __future__ import annotations

import tomllib

import pytest

from saslimap import config
from saslimap.import_saslauthd import (
    Imported,
    Outcome,
    Unusable,
    Word,
    convert,
    daemon_args,
    getopt,
    rimap_target,
    toml_string,
)

GUIDE = (
    "START=yes\n"
    'MECHANISMS="rimap"\n'
    'MECH_OPTIONS="10.0.0.2"\n'
    "THREADS=5\n"
    'OPTIONS="-c -t 3600 -r -m /var/spool/postfix/var/run/saslauthd"\n'
)


def no_services(name: str) -> int:
    """A services database that knows no name (the tests never read /etc/services)."""
    return -1


def imported(text: str, imap_url: str = "") -> Imported:
    """``text`` converted; its TOML must load as a complete saslimap configuration."""
    result = convert(text, source="/etc/default/saslauthd", imap_url=imap_url, services=no_services)
    cfg = config.from_mapping(tomllib.loads(result.toml))
    config.require_complete(cfg)
    return result


def with_options(options: str, **variables: str) -> str:
    """A rimap file with ``OPTIONS`` and any other variables given."""
    lines = {"MECHANISMS": "rimap", "MECH_OPTIONS": "imap.example.com", "OPTIONS": options}
    lines.update(variables)
    return "".join(f'{name}="{value}"\n' for name, value in lines.items())


def outcomes(result: Imported) -> dict[str, Outcome]:
    """Each report line's source -> what became of it."""
    return {item.source: item.outcome for item in result.items}


def text_of(result: Imported, source: str) -> str:
    """The report's reason for ``source``."""
    return next(item.text for item in result.items if item.source == source)


# -- a typical gateway's file --------------------------------------------------


def test_a_gateway_guide_file_is_carried_whole() -> None:
    """rimap to the internal server, -c -t 3600 -r, the socket in Postfix's chroot, 5 threads."""
    result = imported(GUIDE)
    assert {
        "server": {
            "socket": "/var/spool/postfix/var/run/saslauthd/mux",
            "socket_mode": "0660",
            "socket_group": "sasl",
        },
        "dovecot": {
            "socket": "/var/spool/postfix/private/saslimap-auth",
            "socket_group": "postfix",
        },
        "imap": {"url": "imap://10.0.0.2", "max_concurrency": 5},
        "users": {"realm": "join"},
        "cache": {"ttl": 3600.0},
    } == result.settings
    assert result.complete
    assert Outcome.CHANGED == outcomes(result)["MECH_OPTIONS -O 10.0.0.2"]
    assert "STARTTLS" in text_of(result, "MECH_OPTIONS -O 10.0.0.2")


def test_each_key_written_says_where_it_came_from() -> None:
    """The TOML has a comment naming the saslauthd option above each key, and the source file."""
    toml = imported(GUIDE).toml
    assert "# Source: /etc/default/saslauthd\n" in toml
    assert "# from OPTIONS -c -t 3600: seconds a success is remembered\nttl = 3600.0\n" in toml
    assert "# from THREADS -n 5: IMAP logins at once\nmax_concurrency = 5\n" in toml


# -- how the init script builds saslauthd's command line -----------------------


def test_daemon_args_follow_the_init_script() -> None:
    """-a $MECHANISMS -O $MECH_OPTIONS $OPTIONS -n $THREADS, split on blanks."""
    variables = {
        "MECHANISMS": "rimap",
        "MECH_OPTIONS": "h/993",
        "OPTIONS": "-c  -r",
        "THREADS": "3",
    }
    assert [
        Word("-a", "MECHANISMS"),
        Word("rimap", "MECHANISMS"),
        Word("-O", "MECH_OPTIONS"),
        Word("h/993", "MECH_OPTIONS"),
        Word("-c", "OPTIONS"),
        Word("-r", "OPTIONS"),
        Word("-n", "THREADS"),
        Word("3", "THREADS"),
    ] == daemon_args(variables)


def test_empty_options_get_the_init_scripts_default() -> None:
    """OPTIONS empty or unset means -c -m /var/run/saslauthd."""
    words = daemon_args({"MECHANISMS": "rimap"})
    assert ["-a", "rimap", "-c", "-m", "/var/run/saslauthd"] == [w.text for w in words]


def test_later_options_win_as_for_saslauthd() -> None:
    """-O in OPTIONS overrides MECH_OPTIONS; THREADS overrides -n in OPTIONS."""
    text = with_options("-O mail.example.com/993 -n 2 -m /run/a -m /run/b", THREADS="7")
    result = imported(text)
    assert "imaps://mail.example.com" == result.settings["imap"]["url"]
    assert 7 == result.settings["imap"]["max_concurrency"]
    assert "/run/b/mux" == result.settings["server"]["socket"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["-cr"], [("c", None), ("r", None)]),
        (["-t3600", "-m", "/x"], [("t", "3600"), ("m", "/x")]),
        (["-m", "-c"], [("m", "-c")]),  # an option's value is the next word, whatever it is
        (["stray", "-c", "-", "-r"], [("c", None), ("r", None)]),  # GNU getopt permutes
        (["-c", "--", "-r"], [("c", None)]),
        (["-crt", "60"], [("c", None), ("r", None), ("t", "60")]),
    ],
)
def test_getopt_reads_options_as_saslauthd_does(
    words: list[str], expected: list[tuple[str, str | None]]
) -> None:
    """Bundled flags, attached and separate values, words that are not options, --."""
    options, _, errors = getopt([Word(w, "OPTIONS") for w in words])
    assert expected == [(o.letter, o.value) for o in options]
    assert [] == errors


def test_getopt_errors_are_not_carried() -> None:
    """An unknown letter or a value missing at the end would stop saslauthd."""
    _, others, errors = getopt([Word("-T", "OPTIONS"), Word("x", "OPTIONS"), Word("-t", "OPTIONS")])
    assert ["OPTIONS -T", "OPTIONS -t"] == [e.source for e in errors]
    assert {Outcome.NOT_CARRIED} == {e.outcome for e in errors}
    assert ["x"] == [w.text for w in others]


# -- the IMAP server -----------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "url", "outcome"),
    [
        ("imap.example.com", "imap://imap.example.com:143", Outcome.CHANGED),
        ("imap.example.com/imap", "imap://imap.example.com:143", Outcome.CHANGED),
        ("imap.example.com/imap2", "imap://imap.example.com:143", Outcome.CHANGED),
        ("imap.example.com/imaps", "imaps://imap.example.com:993", Outcome.CHANGED),
        ("10.0.0.2/993", "imaps://10.0.0.2:993", Outcome.CHANGED),
        ("10.0.0.2/1143", "imap://10.0.0.2:1143", Outcome.CHANGED),
        ("127.0.0.1", "imap+plaintext://127.0.0.1:143", Outcome.CARRIED),
        ("localhost/1143", "imap+plaintext://localhost:1143", Outcome.CARRIED),
        ("::1/143", "imap+plaintext://[::1]:143", Outcome.CARRIED),
        ("fd00::2", "imap://[fd00::2]:143", Outcome.CHANGED),
        ("mail_server.corp/143", "imap://mail_server.corp:143", Outcome.CHANGED),
    ],
)
def test_rimap_targets(option: str, url: str, outcome: Outcome) -> None:
    """host[/port or service]: a remote plain port needs STARTTLS, 993 TLS, loopback stays clear."""
    target, got, _ = rimap_target(option, no_services)
    assert (url, outcome) == (str(target), got)


def test_a_service_name_is_looked_up() -> None:
    """A name other than imap/imap2/imap3/imaps is resolved as rimap's getaddrinfo() does."""
    target, _, _ = rimap_target("imap.example.com/imap-alt", {"imap-alt": 8143}.__getitem__)
    assert 8143 == target.port


@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("", "names no IMAP server"),
        ("/993", "names no IMAP server"),
        ("imap.example.com:993", "with a slash"),
        ("imap.example.com/nosuch", "unknown port or service"),
        ("imap.example.com/0", "unknown port or service"),
        ("imap.example.com/70000", "unknown port or service"),
        ("bad;host", "not a host name"),
    ],
)
def test_unusable_rimap_options(option: str, said: str) -> None:
    """What saslauthd could not start with stops the import, saying why."""
    with pytest.raises(Unusable, match=said):
        rimap_target(option, no_services)


def test_rimap_without_a_server_is_unusable() -> None:
    """MECHANISMS=rimap with no -O names no server; --imap is the way out."""
    with pytest.raises(Unusable, match="--imap"):
        imported('MECHANISMS="rimap"\nOPTIONS="-c -m /run/saslauthd"\n')
    result = imported('MECHANISMS="rimap"\n', imap_url="imaps://imap.example.com")
    assert "imaps://imap.example.com" == result.settings["imap"]["url"]


@pytest.mark.parametrize("mechanism", ["pam", "shadow", "ldap", "sasldb", "PAM", ""])
def test_other_mechanisms_are_unusable_without_imap(mechanism: str) -> None:
    """pam, shadow, ldap ...: we only check IMAP logins; the message names the mechanism."""
    with pytest.raises(Unusable, match="MECHANISMS") as caught:
        imported(f'MECHANISMS="{mechanism}"\nOPTIONS="-c -m /run/saslauthd"\n')
    assert "--imap" in str(caught.value)


def test_imap_replaces_another_mechanism() -> None:
    """With --imap a pam file is carried, saying whose passwords now count."""
    text = 'MECHANISMS="ldap"\nMECH_OPTIONS="/etc/saslauthd.conf"\nOPTIONS="-c -m /run/s"\n'
    result = imported(text, imap_url="imaps://imap.example.com")
    assert "imaps://imap.example.com" == result.settings["imap"]["url"]
    assert Outcome.CHANGED == outcomes(result)["MECHANISMS=ldap"]
    assert Outcome.IGNORED == outcomes(result)["MECH_OPTIONS"]
    assert result.complete


def test_imap_replaces_rimaps_server() -> None:
    """--imap overrides -O, and the report says so."""
    result = imported(GUIDE, imap_url="imaps://mail.example.com")
    assert "imaps://mail.example.com" == result.settings["imap"]["url"]
    assert "--imap" in text_of(result, "MECH_OPTIONS -O 10.0.0.2")


def test_plaintext_to_another_host_is_reported() -> None:
    """--imap imap+plaintext:// to a remote host is allowed and said to be clear text."""
    result = imported(GUIDE, imap_url="imap+plaintext://mail.example.com")
    assert Outcome.CHANGED == outcomes(result)["--imap"]


def test_a_bad_imap_url_is_unusable() -> None:
    """--imap is checked as imap.url is."""
    with pytest.raises(Unusable, match="--imap"):
        imported(GUIDE, imap_url="http://mail.example.com")


# -- socket, realm, cache, workers ---------------------------------------------


def test_the_socket_is_dir_slash_mux() -> None:
    """-m DIR (a trailing slash or not) is DIR/mux, group sasl may connect."""
    result = imported(with_options("-m /var/run/saslauthd/"))
    assert {"socket": "/var/run/saslauthd/mux", "socket_mode": "0660", "socket_group": "sasl"} == (
        result.settings["server"]
    )


def test_without_m_saslauthds_own_directory_is_used() -> None:
    """OPTIONS with no -m: saslauthd's compiled-in /var/run/saslauthd."""
    assert "/var/run/saslauthd/mux" == imported(with_options("-c")).settings["server"]["socket"]


@pytest.mark.parametrize(
    ("options", "said"),
    [("-m run/saslauthd", "absolute path"), (f"-m /{'d' * 110}", "107 bytes")],
)
def test_unusable_socket_directories(options: str, said: str) -> None:
    """A relative -m, or one too long for a socket path, stops the import."""
    with pytest.raises(Unusable, match=said):
        imported(with_options(options))


@pytest.mark.parametrize(("options", "realm"), [("-c -r", "join"), ("-c", "ignore")])
def test_realm_joining(options: str, realm: str) -> None:
    """-r joins login@realm; without it IMAP is asked about the login alone."""
    assert realm == imported(with_options(options)).settings["users"]["realm"]


@pytest.mark.parametrize(
    ("options", "cache"),
    [
        ("-c", {"ttl": 28800.0}),  # saslauthd's CACHE_DEFAULT_TIMEOUT
        ("-c -t 600", {"ttl": 600.0}),
        ("-c -t 60", {"ttl": 60.0, "refresh_after": 60.0}),
        ("", {"ttl": 28800.0}),  # empty OPTIONS: the init script's -c -m /var/run/saslauthd
        ("-m /run/s", {"max_entries": 0}),
        ("-t 600 -m /run/s", {"max_entries": 0}),
    ],
)
def test_cache(options: str, cache: dict[str, float]) -> None:
    """-c [-t N] is the cache's ttl (28800 s by default); without -c the cache is off."""
    assert cache == imported(with_options(options)).settings["cache"]


def test_a_cache_lifetime_without_c_is_ignored() -> None:
    """saslauthd caches nothing without -c, whatever -t says."""
    result = imported(with_options("-t 600"))
    assert Outcome.IGNORED == outcomes(result)["OPTIONS -t 600"]


def test_a_cache_lifetime_past_our_limit_is_capped() -> None:
    """-t beyond 30 days is 30 days, and reported as changed."""
    result = imported(with_options("-c -t 99999999"))
    assert {"ttl": 2592000.0} == result.settings["cache"]
    assert Outcome.CHANGED == outcomes(result)["OPTIONS -c -t 99999999"]


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1h"])
def test_a_bad_cache_lifetime_is_not_carried(value: str) -> None:
    """saslauthd refuses a -t that is not a positive number: reported, default used."""
    result = imported(with_options(f"-c -t {value}"))
    assert not result.complete
    assert Outcome.NOT_CARRIED == outcomes(result)[f"OPTIONS -t {value}"]
    assert {"ttl": 28800.0} == result.settings["cache"]


@pytest.mark.parametrize(
    ("threads", "concurrency", "outcome"),
    [("5", 5, Outcome.CARRIED), ("1", 1, Outcome.CARRIED), ("5000", 1024, Outcome.CHANGED)],
)
def test_threads(threads: str, concurrency: int, outcome: Outcome) -> None:
    """THREADS (-n) bounds IMAP logins at once, as saslauthd's worker processes did."""
    result = imported(with_options("-c", THREADS=threads))
    assert concurrency == result.settings["imap"]["max_concurrency"]
    assert outcome == outcomes(result)[f"THREADS -n {threads}"]


def test_zero_threads_keeps_our_bound() -> None:
    """-n 0 (a process per connection, no limit) leaves max_concurrency at its default."""
    result = imported(with_options("-c -n 0"))
    assert "max_concurrency" not in result.settings["imap"]
    assert Outcome.CHANGED == outcomes(result)["OPTIONS -n 0"]


def test_threads_that_are_not_a_number_are_not_carried() -> None:
    """THREADS=many: not carried, and the report says the default stays."""
    result = imported(with_options("-c", THREADS="many"))
    assert Outcome.NOT_CARRIED == outcomes(result)["THREADS -n many"]


# -- everything else in the file -----------------------------------------------


def test_saslauthds_own_options_are_ignored_or_mapped() -> None:
    """-V is debug logging; -d, -l, -s concern saslauthd alone."""
    result = imported(with_options("-c -V -d -l -s 2048"))
    assert {"level": "debug"} == result.settings["logging"]
    got = outcomes(result)
    assert Outcome.CARRIED == got["OPTIONS -V"]
    assert {Outcome.IGNORED} == {got["OPTIONS -d"], got["OPTIONS -l"], got["OPTIONS -s 2048"]}
    assert result.complete


def test_a_second_mechanism_is_not_carried() -> None:
    """-a in OPTIONS as well: saslauthd would refuse to start."""
    result = imported(with_options("-c -a pam"))
    assert Outcome.NOT_CARRIED == outcomes(result)["OPTIONS -a pam"]
    assert not result.complete


def test_extra_words_are_ignored_as_saslauthd_ignores_them() -> None:
    """MECHANISMS="rimap pam" runs rimap; saslauthd passes over the word pam."""
    result = imported(with_options("-c", MECHANISMS="rimap pam"))
    assert Outcome.IGNORED == outcomes(result)["MECHANISMS pam"]


@pytest.mark.parametrize(("line", "said"), [("START=no\n", "START=no"), ("", "START is not set")])
def test_start_other_than_yes_is_noted(line: str, said: str) -> None:
    """Debian's init script starts saslauthd only with START=yes; the report says so."""
    assert Outcome.IGNORED == outcomes(imported(line + with_options("-c")))[said]


def test_other_variables_are_named_but_never_quoted() -> None:
    """A variable the init script does not read is listed by name; its value never appears."""
    result = imported(with_options("-c") + "LDAP_PASSWORD=hunter2\nDESC=x\n")
    got = outcomes(result)
    assert Outcome.IGNORED == got["LDAP_PASSWORD"]
    assert Outcome.IGNORED == got["DESC"]
    assert not any("hunter2" in f"{i.source} {i.text}" for i in result.items)
    assert "hunter2" not in result.toml


def test_unreadable_options_stop_the_import() -> None:
    """OPTIONS built by a command cannot be known: nothing is guessed."""
    with pytest.raises(Unusable, match=r"OPTIONS could not be read \(line 4"):
        imported(with_options("-c") + "OPTIONS=$(cat /etc/saslauthd-options)\n")


def test_conditional_threads_are_not_carried() -> None:
    """THREADS set inside an if is reported with its line, and the default stays."""
    text = with_options("-c") + "if [ -x /usr/bin/nproc ]; then\n  THREADS=8\nfi\n"
    result = imported(text)
    assert Outcome.NOT_CARRIED == outcomes(result)["line 5"]
    assert "max_concurrency" not in result.settings["imap"]


def test_windows_line_ends_are_unusable() -> None:
    """CR LF would put a CR in every value (sh keeps it): said plainly, with the fix."""
    with pytest.raises(Unusable, match="CR LF"):
        imported(GUIDE.replace("\n", "\r\n"))


def test_a_shell_syntax_error_is_unusable() -> None:
    """An unterminated quote would stop the init script too."""
    with pytest.raises(Unusable, match="line 2"):
        imported('MECHANISMS="rimap"\nOPTIONS="-c\n')


# -- TOML strings --------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["plain", 'q"uote', "back\\slash", "tab\tnew\nline", "nul\x00del\x7f", "ümlaut 密码"]
)
def test_toml_strings_round_trip(text: str) -> None:
    """Every string written reads back the same."""
    assert {"k": text} == tomllib.loads(f"k = {toml_string(text)}")
