"""The Postfix fragments in conf/postfix load into a real Postfix and pass `postfix check`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.postfix import Postfix

pytestmark = pytest.mark.integration

CONF = Path(__file__).resolve().parents[3] / "conf" / "postfix"


def parse_main_cf(text: str) -> dict[str, str]:
    """main.cf as Postfix reads it: "key = value", continuation lines start with space."""
    params: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and key:
            params[key] += " " + line.strip()
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        params[key] = value
    return params


def test_fragments_pass_postfix_check(workroot: Path) -> None:
    """main.cf and master.cf fragments, maps and sasl/smtpd.conf are accepted by postfix check."""
    root = workroot / "confcheck"
    maps = root / "maps"
    maps.mkdir(parents=True)
    for name in ("relay_domains", "transport"):
        shutil.copy(CONF / name, maps / name)
    main = parse_main_cf((CONF / "main.cf").read_text())
    main = {k: v.replace("/etc/postfix/", f"{maps}/") for k, v in main.items()}
    # The test machine has no gateway certificate; Postfix checks those at run time only.
    postfix = Postfix(root / "pf", main_cf=main, master_cf_extra=(CONF / "master.cf").read_text())
    postfix._prepare()
    shutil.copy(CONF / "sasl" / "smtpd.conf", postfix.config_dir / "sasl" / "smtpd.conf")
    for name in ("relay_domains", "transport"):
        subprocess.run(
            ["postmap", "-c", str(postfix.config_dir), f"hash:{maps / name}"],
            check=True,
            timeout=30,
        )
    done = subprocess.run(
        ["postfix", "-c", str(postfix.config_dir), "check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr + done.stdout
    warnings = [w for w in (done.stderr + done.stdout).splitlines() if "warning" in w]
    assert [] == warnings
    # What the fragments promise, as Postfix itself parses them.
    shown = subprocess.run(
        ["postconf", "-c", str(postfix.config_dir), "-M"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert re.search(r"^submission\s+inet", shown, re.M)
    assert re.search(r"^submissions\s+inet", shown, re.M)
    assert re.search(r"^127\.0\.0\.1:10025\s+inet.*content_filter=", shown, re.M)
    assert re.search(r"^smtp-amavis\s+unix\s+-\s+-\s+n\s+-\s+4\s+smtp", shown, re.M)


def test_spamassassin_local_cf_lints(workroot: Path) -> None:
    """conf/spamassassin/local.cf passes `spamassassin --lint` with Debian's plugins."""
    site = workroot / "sa-lint"
    site.mkdir()
    for pre in Path("/etc/spamassassin").glob("*.pre"):
        shutil.copy(pre, site / pre.name)
    text = (CONF.parent / "spamassassin" / "local.cf").read_text()
    # This machine has no DNS; the lint checks syntax and rule names, not the network.
    (site / "local.cf").write_text(text.replace("dns_available yes", "dns_available no"))
    done = subprocess.run(
        ["spamassassin", f"--siteconfigpath={site}", "--lint"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "HOME": str(site)},  # lint creates ~/.spamassassin otherwise
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
