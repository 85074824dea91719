"""One /etc/default/saslauthd, two daemons: real saslauthd started as Debian's init script
starts it, and real saslimap from what `saslimap import-saslauthd` wrote, answer alike."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from devstack.daemons import SaslimapDaemon
from devstack.dovecot import Dovecot
from devstack.saslauthd import RimapSaslauthd, saslauthd_check
from saslimap import shellvars
from saslimap.import_saslauthd import daemon_args

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[3] / "src"


class InitScriptSaslauthd(RimapSaslauthd):
    """saslauthd with the arguments Debian's init script builds from a defaults file.

    Only the socket directory is its own (a later ``-m`` wins, as in saslauthd's getopt).
    """

    def __init__(self, workdir: Path, defaults: str) -> None:
        super().__init__(workdir, "unused", 0)
        variables = {n: a.value for n, a in shellvars.parse(defaults).variables.items()}
        self.args = [word.text for word in daemon_args(variables)]

    def argv(self) -> list[str]:
        """``saslauthd -a ... -O ... $OPTIONS -n ... -m workdir``."""
        return ["saslauthd", *self.args, "-m", str(self.workdir)]


def test_saslauthd_and_the_imported_saslimap_answer_alike(workroot: Path, dovecot: Dovecot) -> None:
    """Right and wrong passwords, with and without a realm: the same OK or NO from both."""
    root = workroot / "import-saslauthd"
    root.mkdir()
    saslimap_dir = root / "sl"
    defaults = (
        "START=yes\n"
        'MECHANISMS="rimap"\n'
        f'MECH_OPTIONS="{dovecot.host}/{dovecot.imap_port}"\n'
        "THREADS=3\n"
        f'OPTIONS="-c -t 600 -r -m {saslimap_dir / "run"}"\n'
    )
    (root / "saslauthd").write_text(defaults)
    out = root / "saslimap.toml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "saslimap.cli", "import-saslauthd", str(root / "saslauthd"),
         "--output", str(out)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert 0 == done.returncode, done.stdout + done.stderr
    settings = tomllib.loads(out.read_text())
    assert f"imap+plaintext://{dovecot.host}:{dovecot.imap_port}" == settings["imap"]["url"]
    # The imported file turns on the Dovecot listener in Postfix's spool, as shipped: not
    # a path a test may touch, and this test compares the saslauthd socket only.
    assert "/var/spool/postfix/private/saslimap-auth" == settings.pop("dovecot")["socket"]

    cases = [
        ("alice", "alice pw", "example.com"),  # Postfix's split of alice@example.com
        ("alice", "wrong", "example.com"),
        ("alice@example.com", "alice pw", ""),
        ("bob", "bob-secret", "example.com"),
        ("bob", "bob-secret", ""),  # no realm: IMAP is asked about "bob", who does not exist
        ("plain", "bare name pw", ""),
    ]
    with (
        InitScriptSaslauthd(root / "sa", defaults) as saslauthd,
        SaslimapDaemon(saslimap_dir, settings) as saslimap,
    ):
        assert saslimap.socket_path == Path(settings["server"]["socket"])
        for user, password, realm in cases:
            old = saslauthd_check(saslauthd.mux_path, user, password, realm=realm)
            new = saslauthd_check(saslimap.socket_path, user, password, realm=realm)
            assert (user, realm, old[:2]) == (user, realm, new[:2])
        assert {"OK", "NO"} == {
            saslauthd_check(saslimap.socket_path, u, p, realm=r)[:2] for u, p, r in cases
        }
