"""mail-filter import-amavis on the Debian package's files, a gateway guide's, and hostile ones."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from filter import amavis_import, app, cli
from filter.amavis_import import ImportLimits, config_files, import_amavis, parse_variables
from filter.amavis_notes import NOT_CARRIED, NOT_NEEDED, Carried, covered
from filter.banned import inspect
from filter.config import Config
from filter.lookup import AddressList, lookup_keys
from filter.policy import Findings, Lists, decide
from filter.spamd import SpamReport
from filter.verdicts import Category, Destiny
from tests.filter.samples import attach, zipped

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "amavis"
DEBIAN_CONF_D = FIXTURES / "debian" / "etc" / "amavis" / "conf.d"
SINGLE = FIXTURES / "single" / "amavisd.conf"
# Assignments in the fixtures: each such variable must show up in filter.toml or the report.
_ASSIGNED = re.compile(r"^\s*(?:chomp\()?([$@%])([A-Za-z_]\w*)\s*([{[]?)[^=\n]*?=[^=~>]", re.M)


def guide_tree(tmp_path: Path) -> Path:
    """Debian's files with a gateway guide's changes on top, as a root directory."""
    root = tmp_path / "old-server"
    shutil.copytree(FIXTURES / "debian", root)
    shutil.copytree(FIXTURES / "guide", root, dirs_exist_ok=True)
    return root


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """mail-filter import-amavis ARGS: exit status, report, errors."""
    code = cli.main(["import-amavis", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def loaded(output: Path) -> Config:
    """The imported filter.toml as mail-filter loads it (list files included)."""
    return app.load_config(output / "filter.toml", {})


def kinds(carried: Carried, setting: str) -> list[str]:
    """The kinds of note given about ``setting``."""
    return [n.kind for n in carried.notes if n.setting == setting]


def assigned_in(paths: list[Path]) -> set[str]:
    """Variables the files assign, by their first characters: $x, @x or %x."""
    names: set[str] = set()
    for path in paths:
        for sigil, name, subscript in _ASSIGNED.findall(path.read_text()):
            # $h{key} = ... assigns to %h, $a[0] = ... to @a
            names.add({"{": "%", "[": "@"}.get(subscript, sigil) + name)
    return names


# -- the files the Debian package installs -------------------------------------


def test_debian_files_import_as_debian_runs_amavis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's stock files: levels, destinies and quarantine carried; spam checks off."""
    out = tmp_path / "out"
    code, report, _ = run_cli([str(DEBIAN_CONF_D), "--output", str(out)], capsys)
    assert amavis_import.EX_INCOMPLETE == code
    cfg = loaded(out)
    policy = cfg.policy
    assert (2.0, 6.31, 6.31, 10.0) == (
        policy.tag_level, policy.tag2_level, policy.kill_level, policy.dsn_cutoff_level,
    )  # fmt: skip
    assert Destiny.DISCARD == policy.virus_destiny == policy.banned_destiny
    assert Destiny.PASS == policy.spam_destiny == policy.bad_header_destiny
    assert Destiny.PASS == policy.unchecked_destiny  # amavisd-new's own default
    assert (Category.VIRUS, Category.BANNED, Category.SPAM, Category.BAD_HEADER) == (
        policy.quarantine
    )
    assert "***SPAM*** " == policy.subject_prefix
    assert not cfg.spamd.enabled  # /usr/share/amavis/conf.d/20-package, not re-enabled
    assert {"*.exe", "*.*.exe", "*.cpl"} <= set(cfg.banned.names)
    assert {"application/x-msdownload", "application/x-dosexec"} <= set(cfg.banned.types)
    assert "unix:/var/run/clamav/clamd.ctl" == cfg.clamd.address
    assert 204800 == cfg.spamd.max_size
    assert "usr/share/amavis/conf.d/20-package:8  @bypass_virus_checks_maps" in report
    assert "--var mydomain=" in report


def test_debian_files_pass_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The imported filter.toml passes mail-filter check-config."""
    out = tmp_path / "out"
    run_cli([str(DEBIAN_CONF_D), "--output", str(out)], capsys)
    assert 0 == cli.main(["check-config", str(out / "filter.toml")])


@pytest.mark.parametrize("setup", ["debian", "guide", "single"])
def test_no_setting_is_dropped_silently(
    setup: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every variable the files assign is in filter.toml or in the report."""
    root = guide_tree(tmp_path) if setup == "guide" else FIXTURES / "debian"
    conf_d = root / "etc" / "amavis" / "conf.d"
    files = [*conf_d.iterdir(), *(root / "usr/share/amavis/conf.d").iterdir()]
    args = [str(conf_d), "--root", str(root)]
    if setup == "single":
        files, args = [SINGLE], [str(SINGLE)]
    out = tmp_path / "out"
    _, report, _ = run_cli([*args, "--output", str(out)], capsys)
    text = report + (out / "filter.toml").read_text()
    assert set() == {name for name in assigned_in(files) if name not in text}


def test_var_gives_mydomain_and_the_notices_follow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--var mydomain=...: Debian's $virus_admin = "postmaster\\@$mydomain" carries over."""
    out = tmp_path / "out"
    run_cli([str(DEBIAN_CONF_D), "--output", str(out), "--var", "mydomain=example.com"], capsys)
    notices = loaded(out).notices
    assert ("postmaster@example.com",) == notices.admins
    assert ("virus", "banned", "unchecked") == notices.categories


def test_package_defaults_are_read_first_and_backups_skipped(tmp_path: Path) -> None:
    """/usr/share/amavis/conf.d comes before /etc/amavis/conf.d; run-parts skips dotted names."""
    root = guide_tree(tmp_path)
    conf_d = root / "etc" / "amavis" / "conf.d"
    (conf_d / "50-user.dpkg-old").write_text("$sa_tag_level_deflt = 99;\n")
    files, notes = config_files([conf_d])
    assert ["10-debian_scripts", "20-package", "01-debian"] == [p.name for p in files[:3]]
    assert "50-user" == files[-1].name
    assert [NOT_NEEDED] == [n.kind for n in notes if n.where.endswith("50-user.dpkg-old")]


# -- a configuration as a gateway guide sets it up -------------------------------


def test_guide_configuration_carries_its_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tag levels, per-recipient kill levels, D_DISCARD spam, admins and the lists."""
    root = guide_tree(tmp_path)
    out = tmp_path / "out"
    code, report, _ = run_cli(
        [str(root / "etc/amavis/conf.d"), "--root", str(root), "--output", str(out)], capsys
    )
    assert amavis_import.EX_INCOMPLETE == code
    cfg = loaded(out)
    policy = cfg.policy
    assert (-999.0, 5.0, 8.0, 12.0) == (
        policy.tag_level, policy.tag2_level, policy.kill_level, policy.dsn_cutoff_level,
    )  # fmt: skip
    assert (("boss@example.com", (("kill", 12.0),)), (".sales.example.com", (("kill", 6.0),))) == (
        policy.per_recipient
    )
    assert Destiny.DISCARD == policy.spam_destiny
    assert Destiny.REJECT == policy.banned_destiny
    assert (Category.VIRUS, Category.BANNED, Category.SPAM) == policy.quarantine
    assert "[SPAM] " == policy.subject_prefix
    assert cfg.spamd.enabled
    assert "mx1.example.com" == cfg.server.hostname
    assert ("virusalert@example.com",) == cfg.notices.admins
    assert {"*.exe", "*.ps1", "*.lnk", "*.*[a-z]*.*exe"} <= set(cfg.banned.names)
    assert "0 == 0" != report


def test_guide_lists_become_list_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """read_hash files and an access list become list files; what they cannot hold is reported."""
    root = guide_tree(tmp_path)
    out = tmp_path / "out"
    _, report, _ = run_cli(
        [str(root / "etc/amavis/conf.d"), "--root", str(root), "--output", str(out)], capsys
    )
    entries = {
        name: [
            line for line in (out / name).read_text().splitlines()
            if line and not line.startswith("#")
        ]
        for name in ("whitelist", "blacklist", "spam_lovers")
    }  # fmt: skip
    assert {
        "whitelist": [
            "newsletter@partner.example.net",
            ".trusted.example.org",
            "billing@supplier.example.com",
        ],
        "blacklist": ["spammer@bad.example", ".spam.example"],
        "spam_lovers": ["postmaster@example.com", "spamtrap@example.com"],
    } == entries
    cfg = loaded(out)
    assert out / "whitelist" == cfg.lists.whitelist
    assert "'john smith@example.net': not an entry" in report
    assert "'noisy.trusted.example.org' is an exception to '.trusted.example.org'" in report
    assert "abuse@example.com" in report  # @bypass_spam_checks_acl: not carried


def test_guide_configuration_decides_as_amavis_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The imported policy: spam at 9 is held for most, passed tagged for the boss."""
    root = guide_tree(tmp_path)
    out = tmp_path / "out"
    run_cli([str(root / "etc/amavis/conf.d"), "--root", str(root), "--output", str(out)], capsys)
    cfg = loaded(out)
    lists = app.load_lists(cfg)
    findings = Findings(report=SpamReport(True, 9.0, 5.0))
    clerk = decide(cfg.policy, lists, findings, ["x@spam.test"], "clerk@example.com")
    boss = decide(cfg.policy, lists, findings, ["x@spam.test"], "boss@example.com")
    trusted = decide(cfg.policy, lists, findings, ["a@trusted.example.org"], "clerk@example.com")
    assert (Category.SPAM, Destiny.DISCARD, True) == (
        clerk.category, clerk.destiny, clerk.quarantine,
    )  # fmt: skip
    assert (Category.SPAMMY, Destiny.PASS) == (boss.category, boss.destiny)
    assert Destiny.PASS == trusted.destiny  # whitelisted
    assert isinstance(lists, Lists)


def test_guide_banned_rules_with_archive_exceptions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """[qr'^\\.(zip|rar|...)$' => 0] let archives through; mail-filter looks inside, and says so."""
    root = guide_tree(tmp_path)
    out = tmp_path / "out"
    _, report, _ = run_cli(
        [str(root / "etc/amavis/conf.d"), "--root", str(root), "--output", str(out)], capsys
    )
    banned = loaded(out).banned
    nested = attach(zipped("inner.zip", zipped("setup.exe", b"MZ\x90\x00")), "photos.zip")
    assert "setup.exe" in inspect(nested, banned.names, banned.types).banned
    assert "" == inspect(attach(b"%PDF-1.4", "report.pdf"), banned.names, banned.types).banned
    assert "[qr'^\\.(zip|rar|arc|arj|zoo)$' => 0]: an exception" in report
    assert "checks every archive's members" in report


# -- amavisd.conf in one file ------------------------------------------------------


def test_single_file_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """amavisd.conf: no quarantine directory, a bounce destiny, regex lists, a policy bank."""
    out = tmp_path / "out"
    code, report, _ = run_cli([str(SINGLE), "--output", str(out)], capsys)
    assert amavis_import.EX_INCOMPLETE == code
    cfg = loaded(out)
    assert () == cfg.policy.quarantine  # $QUARANTINEDIR = undef: nothing was kept
    assert Destiny.BOUNCE == cfg.policy.banned_destiny
    assert "127.0.0.1:10024" == cfg.server.listen
    assert "unix:/var/run/clamd.amavisd/clamd.sock" == cfg.clamd.address
    assert "application/zip" in cfg.banned.types
    whitelist = (out / "whitelist").read_text().split("\n")
    assert {"newsletter@partner.example.net", "trusted.example.org", "lists.example.com"} <= set(
        whitelist
    )
    for expected in ("@lookup_sql_dsn", "%policy_bank: 'ORIGINATING'", "$penpals_bonus_score",
                     "file(1) type .rar", "mail-filter listens on one port (10024)"):  # fmt: skip
        assert expected in report


def test_passwords_in_sql_settings_are_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """@lookup_sql_dsn holds a password: neither the report nor filter.toml repeats it."""
    out = tmp_path / "out"
    _, report, _ = run_cli([str(SINGLE), "--output", str(out)], capsys)
    assert "changeme" not in report
    assert "changeme" not in (out / "filter.toml").read_text()


def test_password_held_in_an_unknown_variable_is_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A password in a variable used by @lookup_sql_dsn is in neither report nor filter.toml."""
    conf = tmp_path / "amavisd.conf"
    conf.write_text(
        "$dbpass = 'S3cr3tPW';\n@lookup_sql_dsn = (['DBI:mysql:db', 'amavis', $dbpass]);\n"
        "$p = 'Pw2';\n$other = \"x$p\";\n$other_sql_dsn = $other;\n"
        "unknown_call('Pw3');\n$mystery = 'Pw4';\n1;\n"
    )
    out = tmp_path / "out"
    _, report, err = run_cli([str(conf), "--output", str(out)], capsys)
    written = report + err + (out / "filter.toml").read_text()
    for secret in ("S3cr3tPW", "Pw2", "Pw3", "Pw4"):
        assert secret not in written
    assert f"{conf}:1  $dbpass: (value not shown)" in report  # still named, with file:line


def test_banned_names_mail_filter_lets_through_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """qr'\\.(exe|vbs)\\.[a-z]+$'i: the report says x.exe.gz is no longer banned."""
    conf = tmp_path / "amavisd.conf"
    conf.write_text("$banned_filename_re = new_RE(qr'\\.(exe|vbs)\\.[a-z]+$'i);\n1;\n")
    out = tmp_path / "out"
    _, report, _ = run_cli([str(conf), "--output", str(out)], capsys)
    assert "'x.exe.gz'" in report
    assert "*.exe.[a-z]*" in loaded(out).banned.names


def test_everything_carried_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration with nothing mail-filter lacks: exit 0, and the report says so."""
    conf = tmp_path / "amavisd.conf"
    conf.write_text(
        "use strict;\n$sa_tag2_level_deflt = 5.5;\n$final_spam_destiny = D_DISCARD;\n"
        "$spam_admin = 'spam-admin@example.com';\n$daemon_user = 'amavis';\n1;\n"
    )
    code, report, _ = run_cli([str(conf), "--output", str(tmp_path / "out")], capsys)
    assert 0 == code, report
    assert "Every setting was carried over" in report
    cfg = loaded(tmp_path / "out")
    assert ("spam",) == cfg.notices.categories
    assert 5.5 == cfg.policy.tag2_level


# -- writing ---------------------------------------------------------------------


def test_existing_files_are_not_overwritten_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second import refuses (73) and changes nothing; --force replaces."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "filter.toml").write_text("# mine\n")
    code, _, err = run_cli([str(SINGLE), "--output", str(out)], capsys)
    assert amavis_import.EX_CANTCREAT == code
    assert "--force" in err
    assert "# mine\n" == (out / "filter.toml").read_text()
    assert not (out / "whitelist").exists()
    code, _, _ = run_cli([str(SINGLE), "--output", str(out), "--force"], capsys)
    assert amavis_import.EX_INCOMPLETE == code
    assert "# mine\n" != (out / "filter.toml").read_text()


def test_missing_input_and_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No such path: 66; a --var without =: 2; nothing written either way."""
    out = tmp_path / "out"
    assert amavis_import.EX_NOINPUT == run_cli([str(tmp_path / "nope"), "--output", str(out)],
                                               capsys)[0]  # fmt: skip
    code, _, err = run_cli([str(SINGLE), "--output", str(out), "--var", "mydomain"], capsys)
    assert amavis_import.EX_USAGE == code
    assert "NAME=VALUE" in err
    assert not out.exists()


# -- hostile input ---------------------------------------------------------------


def test_unreadable_huge_and_binary_files_are_reported(tmp_path: Path) -> None:
    """Too large, binary, and a pipe named by read_hash: each reported, none read, no hang."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "10-big").write_text("$x = 1;\n" * 20_000)
    (conf_d / "20-binary").write_bytes(b"\x7fELF\x00\x01" * 100)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (conf_d / "30-lists").write_text(f"read_hash(\\%whitelist_sender, '{fifo}');\n")
    imported = import_amavis([conf_d], tmp_path / "out", limits=ImportLimits(config_bytes=50_000))
    reasons = {n.where.rpartition("/")[2].split(":")[0]: n.text for n in imported.carried.notes
               if n.kind == NOT_CARRIED}  # fmt: skip
    assert "larger than 50000 bytes" in reasons["10-big"]
    assert "binary" in reasons["20-binary"]
    assert "not a regular file" in " ".join(reasons.values())


def test_perl_code_is_reported_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The package's amavisd-custom.conf (hooks in Perl): every sub and use is reported."""
    out = tmp_path / "out"
    code, report, _ = run_cli([str(FIXTURES / "amavisd-custom.conf"), "--output", str(out)],
                              capsys)  # fmt: skip
    assert amavis_import.EX_INCOMPLETE == code
    assert "sub {" in report or "Perl code, not a setting" in report
    assert "use DBI" in report
    assert 0 == cli.main(["check-config", str(out / "filter.toml")])


def test_a_file_with_only_garbage_still_imports(tmp_path: Path) -> None:
    """Random bytes that decode as text give notes, and a filter.toml that loads."""
    conf = tmp_path / "amavisd.conf"
    conf.write_bytes(bytes(range(1, 256)) * 50 + b"\n$x = (((((;\n'open")
    imported = import_amavis([conf], tmp_path / "out")
    assert any(n.kind == NOT_CARRIED for n in imported.carried.notes)
    assert "filter.toml" in imported.files


# -- small pure pieces -------------------------------------------------------------


def test_var_flags_are_parsed() -> None:
    """--var NAME=VALUE, with or without the $, values kept as given."""
    assert {"mydomain": "example.com", "x": "a=b"} == parse_variables(
        ["$mydomain=example.com", "x=a=b"]
    )
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_variables(["1bad=x"])


def test_toml_strings_are_escaped() -> None:
    """Quotes, backslashes and control characters are escaped; other text kept."""
    assert '"a\\"b\\\\c\\n\\u0001é"' == amavis_import._toml_string('a"b\\c\n\x01é')


@pytest.mark.parametrize(
    ("negative", "positives", "wider"),
    [
        ("noisy.trusted.example.org", [".trusted.example.org"], ".trusted.example.org"),
        ("boss@example.com", ["example.com"], "example.com"),
        ("boss@example.com", [".org"], None),
        ("boss@", ["."], "."),
    ],
)
def test_negative_entries_covered_by_wider_ones(
    negative: str, positives: list[str], wider: str | None
) -> None:
    """An exception matters only when a wider entry lists what it excepted."""
    assert wider == covered(negative, positives)
    assert lookup_keys("x@example.com")  # the same lookup order decides both


def test_the_daemon_never_loads_the_importer() -> None:
    """mail-filter serve's modules leave the Perl reader and the importer unloaded."""
    code = (
        "import sys\nfrom filter import app, cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('filter.amavis')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "[]" == done.stdout.strip(), done.stderr


def test_a_list_file_of_bad_lines_gives_a_bounded_report(tmp_path: Path) -> None:
    """5,000 lines the lists cannot take: 50 listed, then one line counting the rest."""
    listed = tmp_path / "whitelist"
    listed.write_text("".join(f"user{n}@a@b.example\n" for n in range(5000)))
    conf = tmp_path / "amavisd.conf"
    conf.write_text(f"read_hash(\\%whitelist_sender, '{listed}');\n")
    imported = import_amavis([conf], tmp_path / "out")
    about = [n.text for n in imported.carried.notes if n.setting == "@whitelist_sender_maps"]
    assert 51 == len(about)
    assert "4950 more like these" in about[-1]


# Never more permissive, never a crash, never through a link (hostile review 19b)


def _whitelisted(tmp_path: Path, conf: str, sender: str) -> bool:
    """Whether the whitelist imported from ``conf`` (as amavisd.conf) lets ``sender`` in."""
    path = tmp_path / "amavisd.conf"
    path.write_text(conf, encoding="utf-8")
    files = import_amavis([path], tmp_path / "out").files
    lines = files.get("whitelist", "").splitlines()
    return AddressList.parse("whitelist", lines).contains(sender)


@pytest.mark.parametrize(
    "conf",
    [
        "@whitelist_sender_maps = ( { '.#x' => 1 } );\n1;\n",
        "@whitelist_sender_maps = ( ['.#x'] );\n1;\n",
        "@whitelist_sender_maps = ( new_RE( qr'\\@\\.$'i ) );\n1;\n",
    ],
    ids=["hash-with-hash-sign", "acl-with-hash-sign", "regex-at-dot"],
)
def test_no_entry_becomes_a_whitelist_of_everyone(tmp_path: Path, conf: str) -> None:
    """A '#' in an entry (a list file's comment) or a regex '@\\.$' never whitelists everyone."""
    assert not _whitelisted(tmp_path, conf, "spammer@evil.example")


def test_a_regex_domain_with_a_leading_dot_is_not_widened_to_subdomains(tmp_path: Path) -> None:
    """Perl's /@\\.example\\.com$/ matches no real address: it is refused, not '.example.com'."""
    conf = "@whitelist_sender_maps = ( new_RE( qr'\\@\\.example\\.com$'i ) );\n1;\n"
    assert not _whitelisted(tmp_path, conf, "a@sub.example.com")
    assert not _whitelisted(tmp_path, conf, "a@example.com")


def test_a_value_no_file_can_hold_fails_cleanly_writing_nothing(tmp_path: Path) -> None:
    """A lone surrogate (Perl's "\\x{D800}") in a value: exit 66 with a reason, no file."""
    path = tmp_path / "amavisd.conf"
    path.write_text('$sa_spam_subject_tag = "\\x{D800}***SPAM*** ";\n1;\n')
    err = io.StringIO()
    assert 66 == amavis_import.run([path], tmp_path / "out", out=io.StringIO(), err=err)
    assert "lone surrogate" in err.getvalue()
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_an_output_that_is_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    """Run as root, a planted link at --output must not send the files elsewhere (exit 73)."""
    (tmp_path / "amavisd.conf").write_text("$final_banned_destiny = D_REJECT;\n1;\n")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    err = io.StringIO()
    code = amavis_import.run(
        [tmp_path / "amavisd.conf"], tmp_path / "out", out=io.StringIO(), err=err
    )
    assert 73 == code
    assert "symbolic link" in err.getvalue()
    assert [] == os.listdir(target)
