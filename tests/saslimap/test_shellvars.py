"""Reading shell-variable files without running them: quotes, references, what is left unread."""

from __future__ import annotations

import pytest

from saslimap.shellvars import ShellSyntaxError, parse, split_fields


def values(text: str) -> dict[str, str]:
    """The variables ``text`` sets, name -> value."""
    return {name: a.value for name, a in parse(text).variables.items()}


# -- assignments and quoting ---------------------------------------------------


def test_plain_and_quoted_assignments() -> None:
    """Unquoted, double- and single-quoted values, with comments around them."""
    text = (
        "# Settings\n"
        'DESC="SASL Authentication Daemon"\n'
        "MECHANISMS='rimap'   # the remote IMAP one\n"
        "THREADS=5\n"
        'OPTIONS="-c -m /var/run/saslauthd"\n'
    )
    assert {
        "DESC": "SASL Authentication Daemon",
        "MECHANISMS": "rimap",
        "THREADS": "5",
        "OPTIONS": "-c -m /var/run/saslauthd",
    } == values(text)


def test_the_last_assignment_wins_and_keeps_its_line() -> None:
    """A variable set twice has the second value, and that line number."""
    shell = parse('THREADS=5\n\nTHREADS="8"\n')
    assert "8" == shell.variables["THREADS"].value
    assert 3 == shell.variables["THREADS"].line


def test_export_forms() -> None:
    """export NAME=value sets it; export NAME alone changes nothing."""
    assert {"A": "1", "B": "two words"} == values('export A=1 B="two words"\nexport A\n')


def test_several_assignments_on_a_line_are_done_in_order() -> None:
    """A=1 B=$A and A=1; B=2 both set each variable, left to right."""
    assert {"A": "1", "B": "1x", "C": "3"} == values('A=1 B="$A"x; C=3\n')


def test_an_empty_value() -> None:
    """NAME= and NAME="" are set and empty."""
    assert {"A": "", "B": ""} == values('A=\nB=""\n')


def test_single_quotes_keep_everything_literal() -> None:
    """$, backslash and double quotes inside single quotes are text."""
    assert {"A": '$HOME \\n "x"'} == values("A='$HOME \\n \"x\"'\n")


def test_backslash_escapes() -> None:
    """Unquoted, a backslash escapes any character; in double quotes only $ ` " \\ and newline."""
    assert {"A": "a b#c", "B": 'a$b"c\\d\\e'} == values('A=a\\ b#c\nB="a\\$b\\"c\\\\d\\e"\n')


def test_line_continuations() -> None:
    """Backslash-newline joins lines, unquoted and inside double quotes."""
    text = 'OPTIONS="-c \\\n  -r"\nA=one\\\ntwo\n'
    assert {"OPTIONS": "-c   -r", "A": "onetwo"} == values(text)


def test_a_hash_inside_a_word_is_not_a_comment() -> None:
    """Only a # that starts a word starts a comment."""
    assert {"A": "x#y", "B": "z"} == values("A=x#y\nB=z #y\n")


def test_a_lone_dollar_is_literal() -> None:
    """A $ followed by nothing a name can start with stays a $."""
    assert {"A": "cost $ 5", "B": "x$"} == values('A="cost $ 5"\nB=x$\n')


# -- references to other variables -------------------------------------------


def test_references_to_earlier_variables() -> None:
    """$NAME and ${NAME}, unquoted and in double quotes, take the value set before."""
    text = 'HOST=imap.example.com\nMECH_OPTIONS="${HOST}/imap"\nB=$HOST\n'
    assert "imap.example.com/imap" == values(text)["MECH_OPTIONS"]
    assert "imap.example.com" == values(text)["B"]


def test_a_reference_to_an_unset_variable_is_empty_and_recorded() -> None:
    """As in sh an unset variable expands to nothing; the line and name are listed."""
    shell = parse('OPTIONS="$EXTRA -c"\n')
    assert " -c" == shell.variables["OPTIONS"].value
    assert ((1, "EXTRA"),) == shell.unset_references


def test_unset_forgets_a_variable() -> None:
    """unset NAME removes what the file set."""
    assert {"B": "2"} == values("A=1\nB=2\nunset A\n")


# -- what is never run ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("X=$(hostname)\n", "command substitution"),
        ("X=`hostname`\n", "command substitution"),
        ('X="$((1 + 2))"\n', "arithmetic"),
        ('X="${HOST:-imap}"\n', "${HOST:-imap}"),
        ("X=$1\n", "special parameter"),
    ],
)
def test_substitutions_are_not_run(text: str, reason: str) -> None:
    """A value needing a command, arithmetic or a parameter operator is unreadable, not guessed."""
    shell = parse(text)
    assert {} == shell.variables
    assert reason in shell.unreadable["X"].reason


def test_a_variable_built_from_an_unreadable_one_is_unreadable() -> None:
    """B=$A after A could not be read is not read either."""
    shell = parse("A=$(cat /etc/x)\nB=$A\n")
    assert {"A", "B"} == set(shell.unreadable)


def test_assignments_inside_compound_commands_are_unreadable() -> None:
    """A value set inside if, case, a loop or a function may never be set: it is not taken."""
    text = (
        "THREADS=5\n"
        "if [ -f /etc/x ]; then\n  THREADS=9\nfi\n"
        'case "$X" in\n  a) OPTIONS=-c ;;\nesac\n'
        "f() {\n  NAME=x\n}\n"
        "for x in a b; do MECHANISMS=$x; done\n"
        "AFTER=1\n"
    )
    shell = parse(text)
    assert {"AFTER": "1"} == {n: a.value for n, a in shell.variables.items()}
    assert {"THREADS", "OPTIONS", "NAME", "MECHANISMS"} == set(shell.unreadable)
    assert 3 == shell.unreadable["THREADS"].line


def test_an_assignment_behind_an_operator_is_unreadable() -> None:
    """[ ... ] && NAME=value may or may not set NAME."""
    shell = parse('[ -n "$Y" ] && OPTIONS="-c -r"\n')
    assert "OPTIONS" in shell.unreadable
    assert "'&'" in shell.skipped[0].reason


def test_commands_are_skipped_by_name_only() -> None:
    """A command is listed with its first word and line; its arguments never appear."""
    shell = parse("A=1\necho s3cret-value\n. /etc/default/other\nA=2 run-something\n")
    assert [(2, "echo"), (3, "."), (4, "run-something")] == [
        (s.line, s.what) for s in shell.skipped
    ]
    assert "another file" in shell.skipped[1].reason
    assert {"A": "1"} == {n: a.value for n, a in shell.variables.items()}
    assert not any("s3cret" in s.reason for s in shell.skipped)


@pytest.mark.parametrize(
    "text",
    ["A='open\n", 'A="open\n', "A=$(open\n", "A=`open\n", "A=${open\n"],
)
def test_unterminated_quotes_are_syntax_errors(text: str) -> None:
    """What would stop sh sourcing the file stops the reading, naming the line."""
    with pytest.raises(ShellSyntaxError, match="line 1"):
        parse(text)


# -- splitting a value as an unquoted expansion is split -----------------------


def test_split_fields_splits_on_blanks_and_keeps_quotes() -> None:
    """$OPTIONS unquoted becomes words on space, tab and newline; quotes inside stay text."""
    assert ["-c", "-m", '"/var/run/x"', "-r"] == split_fields(' -c\t-m "/var/run/x"\n -r ')


def test_a_value_doubled_line_after_line_is_refused_not_expanded() -> None:
    """A=$A$A forty times (terabytes once expanded) is a syntax error past 64 KiB."""
    text = "A=xxxxxxxxxxxxxxxx\n" + "A=$A$A\n" * 40
    with pytest.raises(ShellSyntaxError, match="over 65536 characters"):
        parse(text)
