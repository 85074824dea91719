"""What ``mail-filter import-amavis`` knows of amavisd-new itself: defaults and variables.

This module owns the facts about amavisd-new 2.13 the import relies on:
its own defaults for the settings carried over (:data:`AMAVIS_DEFAULTS`, in
Perl, evaluated before the configuration so that an unset variable means what
it meant to amavisd-new), the numbers behind its ``D_*`` destinies, and why
each variable that has no counterpart in ``filter.toml`` does not matter
(:data:`NOT_NEEDED_REASONS`), matters only when switched on (:data:`OFF_UNLESS`), or
cannot be carried (:data:`OTHER_REASONS`).  Pure data.
"""

from __future__ import annotations

import re

__all__ = [
    "AMAVIS_DEFAULTS",
    "DESTINIES",
    "DESTINY_NAMES",
    "LEVEL_LIMIT",
    "NOT_NEEDED_REASONS",
    "OFF_UNLESS",
    "ONLY_THROUGH_MAPS",
    "OTHER_REASONS",
]

LEVEL_LIMIT = 100_000.0  # [policy] levels' bounds (filter.config)
DESTINY_NAMES = {
    1.0: "D_PASS",
    0.0: "D_DISCARD",
    -2.0: "D_BOUNCE",
    -3.0: "D_REJECT",
    -4.0: "D_TEMPFAIL",
}
DESTINIES = {1.0: "pass", 0.0: "discard", -2.0: "bounce", -3.0: "reject"}
# Variables amavisd-new reads only through an @*_maps list (or %banned_rules): set but
# referred to by none, amavisd-new ignored them, and so does the import.
ONLY_THROUGH_MAPS = re.compile(
    r"(?:whitelist|blacklist)_sender(?:_acl|_re)?|bypass_\w+_checks(?:_acl|_re)?"
    r"|\w+_lovers(?:_acl|_re)?|(?:newvirus|virus|banned|spam|bad_header)_admin"
    r"|sa_(?:tag|tag2|tag3|kill)_level_deflt|sa_dsn_cutoff_level|sa_spam_subject_tag1?"
    r"|\w+_quarantine_to|banned_filename_re|remove_existing_spam_headers"
)

_PROCESS = "how amavisd-new runs; mail-filter runs under systemd (systemd/mail-filter.service)"
_LOGGING = "logging; mail-filter logs to the journal, one summary line per message ([logging])"
_DECODER = "an unpacker; mail-filter reads archives itself (libarchive), within [banned] limits"
_LIMIT = (
    "an unpacking limit; mail-filter's own ([banned] max_depth, max_members, max_unpacked) apply"
)
NOT_NEEDED_REASONS: dict[str, str] = {
    **dict.fromkeys(
        (
            "daemon_user",
            "daemon_group",
            "daemon_chroot_dir",
            "MYHOME",
            "TEMPBASE",
            "helpers_home",
            "db_home",
            "pid_file",
            "lock_file",
            "%ENV",
            "path",
            "max_servers",
            "max_requests",
            "child_timeout",
            "smtpd_timeout",
            "nanny_details_level",
            "enable_db",
            "enable_global_cache",
            "enable_zmq",
            "@zmq_sockets",
            "daemonize",
            "unix_socketname",
            "unix_socket_mode",
            "inet_socket_bind",
            "@inet_acl",
            "protocol",
            "mydomain",
            "myproduct_name",
            "instance_name",
            "@additional_perl_modules",
        ),
        _PROCESS,
    ),
    **dict.fromkeys(
        (
            "log_level",
            "log_recip_templ",
            "log_templ",
            "DO_SYSLOG",
            "syslog_ident",
            "syslog_facility",
            "syslog_priority",
            "LOGFILE",
            "logline_maxlen",
            "sa_debug",
            "log_short_templ",
        ),
        _LOGGING,
    ),
    **dict.fromkeys(
        (
            "file",
            "gzip",
            "bzip2",
            "lzop",
            "rpm2cpio",
            "cabextract",
            "uncompress",
            "unfreeze",
            "arc",
            "unarj",
            "unrar",
            "zoo",
            "lha",
            "pax",
            "cpio",
            "ar",
            "ripole",
            "dspam",
            "altermime",
            "@decoders",
            "gunzip",
            "bunzip2",
            "unlzop",
            "@keep_decoded_original_maps",
            "@map_full_type_to_short_type_maps",
            "keep_decoded_original_re",
        ),
        _DECODER,
    ),
    **dict.fromkeys(
        (
            "MAXLEVELS",
            "MAXFILES",
            "MIN_EXPANSION_QUOTA",
            "MAX_EXPANSION_QUOTA",
            "MIN_EXPANSION_FACTOR",
            "MAX_EXPANSION_FACTOR",
        ),
        _LIMIT,
    ),
    **dict.fromkeys(
        (
            "sa_spawned",
            "sa_num_instances",
            "sa_timeout",
            "sa_spam_report_header",
            "sa_spam_level_char",
            "@spam_scanners",
            "sa_auto_whitelist",
        ),
        "SpamAssassin runs as spamd for mail-filter ([spamd], conf/spamassassin/local.cf)",
    ),
    **dict.fromkeys(
        (
            "hdr_encoding",
            "bdy_encoding",
            "notify_sender_templ",
            "notify_virus_sender_templ",
            "notify_virus_admin_templ",
            "notify_virus_recips_templ",
            "notify_spam_sender_templ",
            "notify_spam_admin_templ",
            "notify_release_templ",
            "notify_report_templ",
            "notify_autoresp_templ",
            "%local_delivery_aliases",
            "resend_method",
            "release_method",
            "requeue_method",
            "release_format",
            "report_format",
            "attachment_password",
            "attachment_email_name",
            "attachment_outer_name",
            "mailfrom_to_quarantine",
        ),
        "notices, releases and their templates: mail-filter writes its own",
    ),
    "quarantine_subdir_levels": "mail-filter lays out its own quarantine",
    "clean_quarantine_to": "mail-filter keeps no copy of clean mail",
    "archive_quarantine_to": "mail-filter keeps no copy of clean mail",
    "@clean_quarantine_to_maps": "mail-filter keeps no copy of clean mail",
    "@archive_quarantine_to_maps": "mail-filter keeps no copy of clean mail",
    "mydomain": "a name the configuration uses in other settings (carried where they are)",
    "myproduct_name": "a name the configuration uses in other settings",
    "X_HEADER_LINE": 'mail-filter\'s X-Virus-Scanned reads "by mail-filter at <hostname>"',
    "X_HEADER_TAG": "mail-filter adds X-Virus-Scanned",
    "@viruses_that_fake_sender_maps": "mail-filter never tells senders of viruses",
    "@mynetworks": "mail-filter treats mail the same from inside and outside",
    "@mynetworks_maps": "mail-filter treats mail the same from inside and outside",
    "originating": "mail-filter treats mail the same from inside and outside",
    "@av_scanners_backup": "mail-filter has no backup scanner",
    "first_infected_stops_scan": "clamd stops at the first virus",
    "allowed_added_header_fields": "mail-filter adds its own header fields",
}
# Settings that do nothing when off (0, undef, empty), and that mail-filter cannot do when on.
OFF_UNLESS: dict[str, str] = {
    "sa_local_tests_only": "run spamd with --local for the same",
    "enable_dkim_verification": "mail-filter does not verify DKIM (SpamAssassin's rules do)",
    "enable_dkim_signing": "mail-filter does not sign with DKIM (an OpenDKIM milter does)",
    "warnvirusrecip": "mail-filter does not notify recipients",
    "warnbannedrecip": "mail-filter does not notify recipients",
    "warnbadhrecip": "mail-filter does not notify recipients",
    "warnbannedsender": "mail-filter bounces banned mail only with banned_destiny",
    "warnbadhsender": "mail-filter bounces only with bad_header_destiny",
    "allow_disclaimers": "mail-filter adds no disclaimers",
    "defang_virus": "mail-filter does not defang (wrap) messages",
    "defang_banned": "mail-filter does not defang (wrap) messages",
    "defang_spam": "mail-filter does not defang (wrap) messages",
    "defang_bad_header": "mail-filter does not defang (wrap) messages",
    "defang_undecipherable": "mail-filter does not defang (wrap) messages",
    "defang_all": "mail-filter does not defang (wrap) messages",
    "bypass_decode_parts": "mail-filter always looks inside archives",
    "@lookup_sql_dsn": "settings kept in SQL are not read: export them into filter.toml and the"
    " list files",
    "@storage_sql_dsn": "mail-filter logs and quarantines on its own (PostgreSQL: [quarantine]"
    " store)",
    "enable_ldap": "settings kept in LDAP are not read: export them into filter.toml",
    "@local_domains_acl": "mail-filter marks mail for every recipient; amavisd-new added spam"
    " headers and subject tags for these local domains only",
    "%local_domains": "mail-filter marks mail for every recipient; amavisd-new added spam"
    " headers and subject tags for these local domains only",
    "local_domains_re": "mail-filter marks mail for every recipient; amavisd-new added spam"
    " headers and subject tags for these local domains only",
    "@local_domains_maps": "mail-filter marks mail for every recipient; amavisd-new added spam"
    " headers and subject tags for these local domains only",
}
OTHER_REASONS: dict[str, str] = {
    "read_cidr": "a network list: mail-filter treats mail the same from any network",
    "dkim_key": "mail-filter does not sign with DKIM (an OpenDKIM milter does)",
}


# amavisd-new 2.13's own defaults for what the import reads (Amavis::Conf's
# build_default_maps and friends), evaluated before the configuration so that an
# unset variable means what it meant to amavisd-new, not what it means to mail-filter.
AMAVIS_DEFAULTS = r"""
$final_virus_destiny = D_DISCARD; $final_banned_destiny = D_DISCARD;
$final_unchecked_destiny = D_PASS; $final_spam_destiny = D_PASS;
$final_bad_header_destiny = D_PASS;
$virus_quarantine_to = 'virus-quarantine'; $banned_quarantine_to = 'banned-quarantine';
$unchecked_quarantine_to = 'unchecked-quarantine'; $spam_quarantine_to = 'spam-quarantine';
$bad_header_quarantine_to = 'bad-header-quarantine';
$clean_quarantine_to = 'clean-quarantine'; $archive_quarantine_to = 'archive-quarantine';
$virus_quarantine_method = 'local:virus-%m'; $banned_files_quarantine_method = 'local:banned-%m';
$spam_quarantine_method = 'local:spam-%m.gz'; $bad_header_quarantine_method = 'local:badh-%m';
$unchecked_quarantine_method = undef; $clean_quarantine_method = undef;
$archive_quarantine_method = undef; $QUARANTINEDIR = undef;
$undecipherable_subject_tag = '***UNCHECKED*** ';
$remove_existing_spam_headers = 1;
$forward_method = 'smtp:[127.0.0.1]:10025'; $notify_method = $forward_method;
$MYHOME = '/var/amavis';
@local_domains_maps = (\%local_domains, \@local_domains_acl, \$local_domains_re);
@bypass_virus_checks_maps = (
  \%bypass_virus_checks, \@bypass_virus_checks_acl, \$bypass_virus_checks_re);
@bypass_spam_checks_maps = (
  \%bypass_spam_checks, \@bypass_spam_checks_acl, \$bypass_spam_checks_re);
@bypass_banned_checks_maps = (
  \%bypass_banned_checks, \@bypass_banned_checks_acl, \$bypass_banned_checks_re);
@bypass_header_checks_maps = (
  \%bypass_header_checks, \@bypass_header_checks_acl, \$bypass_header_checks_re);
@virus_lovers_maps = (\%virus_lovers, \@virus_lovers_acl, \$virus_lovers_re);
@spam_lovers_maps = (\%spam_lovers, \@spam_lovers_acl, \$spam_lovers_re);
@banned_files_lovers_maps = (
  \%banned_files_lovers, \@banned_files_lovers_acl, \$banned_files_lovers_re);
@bad_header_lovers_maps = (\%bad_header_lovers, \@bad_header_lovers_acl, \$bad_header_lovers_re);
@newvirus_admin_maps = (\$newvirus_admin);
@virus_admin_maps = (\%virus_admin, \$virus_admin);
@banned_admin_maps = (\$banned_admin, \%virus_admin, \$virus_admin);
@bad_header_admin_maps = (\$bad_header_admin);
@spam_admin_maps = (\%spam_admin, \$spam_admin);
@virus_quarantine_to_maps = (\$virus_quarantine_to);
@banned_quarantine_to_maps = (\$banned_quarantine_to);
@unchecked_quarantine_to_maps = (\$unchecked_quarantine_to);
@spam_quarantine_to_maps = (\$spam_quarantine_to);
@spam_quarantine_bysender_to_maps = (\$spam_quarantine_bysender_to);
@bad_header_quarantine_to_maps = (\$bad_header_quarantine_to);
@clean_quarantine_to_maps = (\$clean_quarantine_to);
@archive_quarantine_to_maps = (\$archive_quarantine_to);
@banned_filename_maps = ('DEFAULT');
@spam_tag_level_maps = (\$sa_tag_level_deflt);
@spam_tag2_level_maps = (\$sa_tag2_level_deflt);
@spam_tag3_level_maps = (\$sa_tag3_level_deflt);
@spam_kill_level_maps = (\$sa_kill_level_deflt);
@spam_dsn_cutoff_level_maps = (\$sa_dsn_cutoff_level);
@spam_dsn_cutoff_level_bysender_maps = (\$sa_dsn_cutoff_level);
@spam_crediblefrom_dsn_cutoff_level_maps = (\$sa_crediblefrom_dsn_cutoff_level);
@spam_crediblefrom_dsn_cutoff_level_bysender_maps = (\$sa_crediblefrom_dsn_cutoff_level);
@spam_quarantine_cutoff_level_maps = (\$sa_quarantine_cutoff_level);
@spam_subject_tag_maps = (\$sa_spam_subject_tag1);
@spam_subject_tag2_maps = (\$sa_spam_subject_tag);
@whitelist_sender_maps = (\%whitelist_sender, \@whitelist_sender_acl, \$whitelist_sender_re);
@blacklist_sender_maps = (\%blacklist_sender, \@blacklist_sender_acl, \$blacklist_sender_re);
@remove_existing_spam_headers_maps = (\$remove_existing_spam_headers);
"""
