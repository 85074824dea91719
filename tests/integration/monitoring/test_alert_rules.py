"""The shipped alerting rules: promtool accepts them and their unit tests pass, every
alert is tested firing and quiet, and they name only metrics the daemons export."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.integration.monitoring.shipped import EXAMPLE_CONFIG, RULES, exported_names

RULE_TESTS = Path(__file__).with_name("mailgate-rules.test.yml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool (Debian's prometheus package) and return what it said."""
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def alerts() -> list[dict[str, Any]]:
    """Every alerting rule in the shipped file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def rule_test_cases() -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` entry of the promtool test file."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return [case for test in tests for case in test.get("alert_rule_test", [])]


def test_promtool_accepts_the_rules() -> None:
    """promtool check rules passes on conf/prometheus/mailgate-rules.yml."""
    done = promtool("check", "rules", str(RULES))
    assert 0 == done.returncode, done.stdout + done.stderr


def test_promtool_accepts_the_example_configuration() -> None:
    """conf/prometheus/prometheus.yml is valid and loads the rules next to it."""
    done = promtool("check", "config", str(EXAMPLE_CONFIG))
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_the_rules_unit_tests_pass() -> None:
    """promtool test rules passes every firing and quiet case of mailgate-rules.test.yml."""
    done = promtool("test", "rules", str(RULE_TESTS))
    assert 0 == done.returncode, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a case where it fires and one where it stays quiet."""
    cases = rule_test_cases()
    for rule in alerts():
        name = rule["alert"]
        outcomes = {bool(c.get("exp_alerts")) for c in cases if c["alertname"] == name}
        assert {True, False} == outcomes, name


def test_a_healthy_gateway_is_checked_against_every_alert() -> None:
    """The idle and busy healthy gateways' cases expect silence from every alert."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    healthy = [t for t in tests if "healthy" in t["name"] or "idle" in t["name"]]
    assert 2 == len(healthy)
    for test in healthy:
        quiet = {c["alertname"] for c in test["alert_rule_test"] if not c["exp_alerts"]}
        assert {rule["alert"] for rule in alerts()} == quiet, test["name"]


def test_every_alert_has_a_severity_and_words_for_the_person_on_call() -> None:
    """severity is critical or warning; a summary and a description are always there."""
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
        assert "for" in rule, rule["alert"]  # a single bad scrape never pages anyone


def test_the_rules_name_only_metrics_the_daemons_export() -> None:
    """A metric renamed in the code, or misspelt in a rule, fails here, not in production."""
    exported = exported_names()
    for rule in alerts():
        for name in re.findall(r"\b(?:saslimap|mailfilter)_[a-z_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name}"
