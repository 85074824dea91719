"""Reading amavisd-new's Perl configuration without Perl: tokens, values, order, bounds."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter.amavis_lexer import tokenize
from filter.amavis_perl import Machine, parse_array_file, parse_hash_file
from filter.amavis_syntax import parse
from filter.amavis_values import (
    BUILTIN,
    HashV,
    Limits,
    ListV,
    Num,
    Regex,
    RegexTable,
    Str,
    Trouble,
    Undef,
    Unknown,
    Value,
    VarRef,
    text_of,
)


class FakeFiles:
    """A reader over a dict of file name -> text; anything else is missing."""

    def __init__(self, files: dict[str, str] | None = None) -> None:
        self.files = files or {}
        self.asked: list[str] = []

    def __call__(self, name: str) -> str:
        self.asked.append(name)
        if name not in self.files:
            raise FileNotFoundError(2, "No such file or directory")
        return self.files[name]


def run(
    text: str, files: dict[str, str] | None = None, pinned: dict[str, str] | None = None
) -> Machine:
    """A machine that has evaluated ``text`` as the file ``conf``."""
    machine = Machine(FakeFiles(files), Limits(), pinned or {})
    machine.run_text(text, "conf")
    return machine


def scalar(machine: Machine, name: str) -> Value:
    """The value of ``$name``."""
    return machine.value("$", name)


# -- tokens ------------------------------------------------------------------


def test_quoting_constructs_give_their_text() -> None:
    """'...', q(), qq{}, qw// and here-documents each give the text Perl would."""
    tokens = tokenize("('it\\'s', q(a (b) c), qq{x}, qw/a b/, <<'EOT', 1);\nbody $x\nEOT\n")
    assert [("sq", "it's"), ("sq", "a (b) c"), ("dq", "x"), ("qw", "a b"), ("sq", "body $x\n")] == [
        (t.kind, t.text) for t in tokens if t.kind in ("sq", "dq", "qw")
    ]


def test_slash_after_a_value_divides_and_elsewhere_starts_a_pattern() -> None:
    """`200 / 2` is a division; `= /x/` is a pattern match."""
    assert "op" == tokenize("200 / 2;")[1].kind
    assert "re" == tokenize("$x = /ab/;")[2].kind


def test_qr_keeps_its_pattern_and_flags() -> None:
    """qr'...'ix gives the pattern as written (backslashes kept) and its flags."""
    token = tokenize(r"qr'^\.(exe|dll)$'ix")[0]
    assert ("re", r"^\.(exe|dll)$", "qr/ix/") == (token.kind, token.text, token.extra)


def test_pod_comments_and_end_are_skipped() -> None:
    """POD blocks, # comments and everything after __END__ yield no tokens."""
    tokens = tokenize("=pod\n$x = 1;\n=cut\n# $y = 2;\n$z = 3;\n__END__\n$w = 4;\n")
    assert ["$z"] == [t.text for t in tokens if t.kind == "var"]


def test_an_unterminated_string_is_refused_with_its_line() -> None:
    """A string without its closing quote raises Trouble naming the line it starts on."""
    with pytest.raises(Trouble) as caught:
        tokenize("$a = 1;\n$b = 'open\n")
    assert 2 == caught.value.line


# -- values ------------------------------------------------------------------


def test_scalar_assignments_of_every_kind() -> None:
    """Numbers, strings, undef, D_* constants and arithmetic evaluate as Perl would."""
    m = run(
        "$sa_tag_level_deflt = 2.0;\n$final_spam_destiny = D_DISCARD;\n"
        "$sa_spam_subject_tag = '***SPAM*** ';\n$virus_admin = undef;\n"
        "$sa_mail_body_size_limit = 200*1024;\n$neg = -5.5;\n$oct = 0755;\n"
    )
    assert Num(2.0) == scalar(m, "sa_tag_level_deflt")
    assert Num(0.0) == scalar(m, "final_spam_destiny")
    assert Str("***SPAM*** ") == scalar(m, "sa_spam_subject_tag")
    assert Undef() == scalar(m, "virus_admin")
    assert Num(204800.0) == scalar(m, "sa_mail_body_size_limit")
    assert Num(-5.5) == scalar(m, "neg")
    assert Num(493.0) == scalar(m, "oct")


def test_double_quoted_strings_interpolate_literal_scalars() -> None:
    """ "postmaster\\@$mydomain" takes $mydomain's value; \\@ is a literal @."""
    m = run("$mydomain = 'example.com';\n$virus_admin = \"postmaster\\@$mydomain\";\n")
    assert Str("postmaster@example.com") == scalar(m, "virus_admin")


def test_interpolating_a_command_output_is_unknown_and_says_which() -> None:
    """A value computed by a backtick command is unknown, and so is what interpolates it."""
    m = run('chomp($mydomain = `head -n 1 /etc/mailname`);\n$a = "x\\@$mydomain";\n')
    admin = scalar(m, "a")
    assert isinstance(admin, Unknown)
    assert "$mydomain (conf:1)" in admin.reason
    assert "head -n 1 /etc/mailname" in admin.reason
    assert "--var mydomain=" in admin.reason


def test_var_gives_a_value_the_configuration_computes_at_run_time() -> None:
    """--var mydomain=... wins over the backtick command assigning it."""
    m = run(
        'chomp($mydomain = `head -n 1 /etc/mailname`);\n$a = "x\\@$mydomain";\n',
        pinned={"mydomain": "example.org"},
    )
    assert Str("x@example.org") == scalar(m, "a")


def test_an_unescaped_at_in_a_string_is_not_silently_an_empty_array() -> None:
    """ "user@example.com" interpolates @example in Perl: reported as unknown, not "user.com"."""
    assert isinstance(scalar(run('$a = "user@example.com";\n'), "a"), Unknown)


def test_later_assignments_override_earlier_ones() -> None:
    """Files are one program: the last assignment counts, and says where it was."""
    m = Machine(FakeFiles(), Limits(), {})
    m.run_text("$sa_kill_level_deflt = 6.31;\n", "20-debian_defaults")
    m.run_text("\n\n$sa_kill_level_deflt = 8;\n", "50-user")
    binding = m.get("$", "sa_kill_level_deflt")
    assert binding is not None
    assert Num(8.0) == binding.value
    assert "50-user:3" == str(binding.where)


def test_references_are_followed_when_looked_at() -> None:
    """@maps = (\\$x) then $x = 5: the map sees 5, as amavisd-new's lookups do."""
    m = run("@spam_kill_level_maps = (\\$sa_kill_level_deflt);\n$sa_kill_level_deflt = 5;\n")
    maps = m.value("@", "spam_kill_level_maps")
    assert isinstance(maps, ListV)
    assert VarRef("$", "sa_kill_level_deflt") == maps.items[0]
    assert Num(5.0) == m.resolve(maps.items[0])


def test_bypass_maps_forms() -> None:
    """(\\%h, \\@acl, \\$re), (1) and qw() lists each evaluate to what they say."""
    m = run(
        "@bypass_spam_checks_maps = (\n   \\%bypass_spam_checks, \\@bypass_spam_checks_acl,"
        " \\$bypass_spam_checks_re);\n@bypass_virus_checks_maps = (1);\n"
        "@bypass_spam_checks_acl = qw( abuse@example.com !.example.org );\n"
    )
    spam = m.value("@", "bypass_spam_checks_maps")
    assert isinstance(spam, ListV)
    assert ["%", "@", "$"] == [i.sigil for i in spam.items if isinstance(i, VarRef)]
    assert ListV((Num(1.0),)) == m.value("@", "bypass_virus_checks_maps")
    assert ListV((Str("abuse@example.com"), Str("!.example.org"))) == m.value(
        "@", "bypass_spam_checks_acl"
    )


def test_hashes_and_anonymous_tables() -> None:
    """%h = (k => v), { k => v } and bareword keys give ordered entries."""
    m = run("%virus_admin = ('.example.com' => 'a@b', boss => 1);\n@m = ({ '.' => 6.3 });\n")
    admins = m.value("%", "virus_admin")
    assert isinstance(admins, HashV)
    assert Str("a@b") == admins.get(".example.com")
    assert Num(1.0) == admins.get("boss")
    maps = m.value("@", "m")
    assert isinstance(maps, ListV)
    assert isinstance(maps.items[0], HashV)
    assert Num(6.3) == maps.items[0].get(".")


def test_new_re_keeps_each_regex_and_its_value() -> None:
    """new_RE(qr'a', [qr'b' => 0]) is a table of (regex, value) in order."""
    m = run("$banned_filename_re = new_RE(\n  qr'^\\.exe$'i,\n  [ qr'^\\.zip$' => 0 ],\n);\n")
    table = m.value("$", "banned_filename_re")
    assert isinstance(table, RegexTable)
    assert [(r"^\.exe$", "i", 1.0), (r"^\.zip$", "", 0.0)] == [
        (regex.pattern, regex.flags, value.value)
        for regex, value in table.entries
        if isinstance(value, Num)
    ]
    assert 2 == table.entries[0][0].where.line if table.entries[0][0].where else None


def test_read_hash_fills_the_hash_from_its_file() -> None:
    """read_hash(\\%whitelist_sender, 'file') reads the file through the reader."""
    files = {"/etc/amavis/whitelist": "# comment\nUser@Example.COM\n.partner.test 0\n"}
    m = run("read_hash(\\%whitelist_sender, '/etc/amavis/whitelist');\n", files)
    table = m.value("%", "whitelist_sender")
    assert isinstance(table, HashV)
    assert "/etc/amavis/whitelist" == table.origin
    assert [("user@example.com", Num(1.0)), (".partner.test", Str("0"))] == [
        (e.key, e.value) for e in table.entries
    ]


def test_read_hash_of_a_missing_file_is_unknown_not_empty() -> None:
    """A list file that cannot be read is an unknown table, so it is reported."""
    m = run("@whitelist_sender_maps = (read_hash('/nowhere'));\n")
    maps = m.value("@", "whitelist_sender_maps")
    assert isinstance(maps, ListV)
    assert isinstance(maps.items[0], Unknown)
    assert "/nowhere" in maps.items[0].reason


def test_element_assignment_push_and_ternary() -> None:
    """$h{key} = v adds to %h; push appends; a known condition picks its branch."""
    m = run(
        "$policy_bank{'MYNETS'} = { originating => 1 };\n@a = (1);\npush @a, 2, 3;\n"
        "$t = 1 ? 'yes' : 'no';\n$ENV{PATH} = $path = '/bin';\n"
    )
    banks = m.value("%", "policy_bank")
    assert isinstance(banks, HashV)
    assert isinstance(banks.get("MYNETS"), HashV)
    assert ListV((Num(1.0), Num(2.0), Num(3.0))) == m.value("@", "a")
    assert Str("yes") == scalar(m, "t")
    assert Str("/bin") == scalar(m, "path")


def test_include_config_files_reads_them_in_place() -> None:
    """include_config_files('x') evaluates x where it is called."""
    m = run("$a = 1;\ninclude_config_files('/etc/amavisd-local.conf');\n$c = $b + 1;\n",
            {"/etc/amavisd-local.conf": "$b = 41;\n"})  # fmt: skip
    assert Num(42.0) == scalar(m, "c")


def test_builtin_defaults_are_marked_as_such() -> None:
    """Values evaluated as amavisd-new's defaults carry the BUILTIN place."""
    m = Machine(FakeFiles(), Limits(), {})
    m.run_text("$x = 1;\n", "defaults", builtin=True)
    binding = m.get("$", "x")
    assert binding is not None
    assert BUILTIN == binding.where
    assert binding.builtin


def test_lookup_files_are_read_as_amavis_reads_them() -> None:
    """Keys lower-cased, quoted local parts unquoted, a value after blanks, # comments."""
    table = parse_hash_file(
        'A@B.example\n"odd # local"@x.test  5  # note\n\n  # only a comment\nkey\tvalue\n',
        "f",
    )
    assert [("a@b.example", "1"), ("odd # local@x.test", "5"), ("key", "value")] == [
        (e.key, text_of(e.value)) for e in table.entries
    ]
    array = parse_array_file("10.0.0.0/8  # lan\n\n!192.0.2.1\n", "f")
    assert (Str("10.0.0.0/8"), Str("!192.0.2.1")) == array.items


# -- what is not evaluated is reported -----------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("$a = 1;\nif ($a) {\n  $b = 2;\n}\n$c = 3;\n", 2, "decides at run time"),
        ("sub helper { return 1 }\n", 1, "Perl code"),
        ("@client_ipaddr_policy = map(($_,'MYNETS'), @mynetworks_maps);\n", 1, "map"),
        ("unknown_function('x');\n", 1, "function call"),
        ("$x = Some::Module->new();\n", 1, "method call"),
        ("use Mail::SpamAssassin;\n", 1, "loads Perl code"),
        ("$a = 1 if $b;\n", 1, "run time"),
        ("$x = 1;\n$y = 'open\n", 2, "the rest of the file is not read"),
    ],
)
def test_statements_not_understood_are_reported_with_file_and_line(
    text: str, line: int, reason: str
) -> None:
    """Each skipped statement is a problem naming conf:LINE and why."""
    problems = run(text).problems
    assert 1 == len(problems), problems
    assert f"conf:{line}" == str(problems[0].where)
    assert reason in problems[0].reason


def test_parsing_goes_on_after_a_statement_it_skips() -> None:
    """The statements after an if-block are still evaluated."""
    m = run("if ($a) {\n  $b = 2;\n} else { $b = 3; }\n$c = 3;\n")
    assert Num(3.0) == scalar(m, "c")
    assert Undef() == scalar(m, "b")


def test_harmless_statements_are_not_reported() -> None:
    """use strict, 1; and empty statements are not problems."""
    assert [] == run("use strict;\nuse warnings;\n;\n1;  # ensure a defined return\n").problems


def test_code_in_values_is_kept_opaque() -> None:
    """sub {...} and \\&name inside a list are code values, never run."""
    m = run("@av_scanners = (['ClamAV-clamd', \\&ask_daemon, sub { die 'no' }, qr/\\bOK$/m]);\n")
    scanners = m.value("@", "av_scanners")
    assert isinstance(scanners, ListV)
    entry = scanners.items[0]
    assert isinstance(entry, ListV)
    assert 4 == len(entry.items)
    assert isinstance(entry.items[3], Regex)
    assert [] == m.problems


# -- Perl scoping and control flow ----------------------------------------------


def test_my_variable_does_not_change_destiny() -> None:
    """my $x = ... is a lexical: later lines of the file see it, amavisd-new never does."""
    m = run("my $final_banned_destiny = D_PASS;\n$seen = $final_banned_destiny;\n1;\n")
    assert Num(1.0) == scalar(m, "seen")  # D_PASS, read within the file
    assert m.get("$", "final_banned_destiny") is None
    assert ["conf:1"] == [str(p.where) for p in m.problems]
    assert "a lexical variable: amavisd-new never reads it" in m.problems[0].reason


def test_my_variable_does_not_outlive_its_file() -> None:
    """A file's my variable is gone in the next file it includes."""
    m = run("my $d = 'a.example';\ninclude_config_files('next');\n",
            files={"next": "$domain = $d;\n"})  # fmt: skip
    assert Undef() == scalar(m, "domain")


def test_local_variable_does_not_change_destiny() -> None:
    """local $x = ... at file scope is undone when the file ends: not a setting."""
    m = run("$final_banned_destiny = D_DISCARD;\nlocal $final_banned_destiny = D_PASS;\n1;\n")
    binding = m.get("$", "final_banned_destiny")
    assert binding is not None
    assert Num(0.0) == binding.value  # D_DISCARD, restored
    assert ["conf:2"] == [str(p.where) for p in m.problems]
    assert "a local variable: amavisd-new never reads it" in m.problems[0].reason


def test_local_of_an_unset_variable_leaves_it_unset() -> None:
    """local $x = ... of a variable never set before leaves nothing behind."""
    assert run("local $final_banned_destiny = D_PASS;\n").get("$", "final_banned_destiny") is None


def test_assignment_after_package_switch_is_not_carried() -> None:
    """After package Foo; an assignment sets $Foo::x: reported, not applied."""
    m = run("package Foo;\n$final_banned_destiny = D_PASS;\n1;\n")
    assert m.get("$", "final_banned_destiny") is None
    assert ["conf:1", "conf:2"] == [str(p.where) for p in m.problems]
    assert "after package Foo (line 1)" in m.problems[1].reason


def test_package_amavis_conf_switches_back() -> None:
    """package Amavis::Conf; (amavisd-new's own package) makes assignments settings again."""
    m = run("package main;\n$a = 1;\npackage Amavis::Conf;\n$b = 2;\n")
    assert Undef() == scalar(m, "a")
    assert Num(2.0) == scalar(m, "b")


def test_package_block_is_not_carried() -> None:
    """package Foo { ... } is skipped as a whole and reported."""
    m = run("package Foo {\n  $a = 1;\n}\n$b = 2;\n")
    assert (Undef(), Num(2.0)) == (scalar(m, "a"), scalar(m, "b"))
    assert ["conf:1"] == [str(p.where) for p in m.problems]


def test_statements_after_return_are_not_carried() -> None:
    """A top-level return ends amavisd-new's do FILE: the rest is reported, not read."""
    m = run("return 1;\n$final_banned_destiny = D_PASS;\n")
    assert m.get("$", "final_banned_destiny") is None
    assert ["conf:1"] == [str(p.where) for p in m.problems]
    assert "the rest of the file is not read" in m.problems[0].reason


def test_conditional_return_also_stops_reading() -> None:
    """return ... if ...; may end the file at run time: what follows is not carried."""
    m = run("return 1 if $x;\n$final_banned_destiny = D_PASS;\n")
    assert m.get("$", "final_banned_destiny") is None
    assert "decided at run time" in m.problems[0].reason


def test_return_at_the_end_is_not_reported() -> None:
    """return 1; as a file's last statement ends nothing and is not a problem."""
    assert [] == run("$a = 1;\nreturn 1;\n").problems


# -- bounds ------------------------------------------------------------------


def test_deep_nesting_is_refused_not_a_crash() -> None:
    """Brackets nested 10,000 deep are one reported problem, in bounded time."""
    started = time.monotonic()
    m = run("$x = " + "(" * 10_000 + "1" + ")" * 10_000 + ";\n$y = 2;\n")
    assert time.monotonic() - started < 5
    assert "nested deeper" in m.problems[0].reason
    assert Num(2.0) == scalar(m, "y")


def test_token_and_string_limits_hold() -> None:
    """Past the token limit the file stops with a problem; strings do not grow unbounded."""
    limits = Limits(max_tokens=100, max_string=1000)
    m = Machine(FakeFiles(), limits, {})
    m.run_text("$a = 1;\n" * 100, "big")
    assert "more than 100 tokens" in m.problems[-1].reason
    m = Machine(FakeFiles(), limits, {})
    m.run_text("$s = '" + "x" * 600 + "';\n$t = $s . $s;\n", "cat")
    assert "longer than 1000" in m.problems[-1].reason


def test_a_recursive_include_stops() -> None:
    """A file including itself stops at the include depth limit, reported."""
    m = run("include_config_files('/self');\n", {"/self": "include_config_files('/self');\n"})
    assert any("nested deeper" in p.reason for p in m.problems)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="$@%&\\'\"`qrswy{}()[]<>=;,.#/!?:-+*~ \n\tabc019_=", max_size=200))
def test_any_text_is_evaluated_or_reported_never_raises(text: str) -> None:
    """Perl-looking noise never raises: it becomes values or reported problems."""
    machine = Machine(FakeFiles(), Limits(), {})
    machine.run_text(text, "noise")
    assert all(p.where.path == "noise" for p in machine.problems)


def test_statements_keep_their_first_words_for_the_report() -> None:
    """A skipped statement's subject is its first tokens."""
    statements = parse("if ($a) { $b = 1 }\n", "f")
    assert "if ( $a" == statements[0].subject


@pytest.mark.parametrize(
    "text",
    [
        "".join(f"$h{{k{i}}} = {i};\n" for i in range(20_000)),  # each store copies the hash
        "@a = ();\n" + "push @a, 1, 2, 3;\n" * 20_000,
        "$s = '" + "x" * 50_000 + "';\n" + '$t = "$s$s";\n' * 2_000,
    ],
)
def test_quadratic_files_stop_at_the_work_budget(text: str) -> None:
    """Statements that each cost more than the last stop at Limits.max_work, reported once."""
    m = Machine(FakeFiles(), Limits(max_work=1_000_000), {})
    started = time.monotonic()
    m.run_text(text, "slow")
    m.run_text("$after = 1;\n", "next")
    assert time.monotonic() - started < 10
    assert 2 == len(m.problems)
    assert all("more work than an import allows" in p.reason for p in m.problems)


def test_problems_listed_per_file_are_capped() -> None:
    """Past max_problems, one line counts the statements not read."""
    m = Machine(FakeFiles(), Limits(max_problems=5), {})
    m.run_text("if ($x) { 1 }\n" * 12, "ifs")
    assert 6 == len(m.problems)
    assert "7 more statements not read" in m.problems[-1].reason
