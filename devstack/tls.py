"""Throw-away TLS material for the development stack.

This module owns the private CA and the one server certificate that every
devstack daemon presents.  Everything is produced with the ``openssl`` command
line tool (the standard library cannot create certificates) and lives in a
directory the caller chooses, so tests can verify peers against ``ca_cert``
exactly as a production client would verify a real CA.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsFiles", "make_tls"]

# EC P-256: key generation takes milliseconds and handshakes are several times
# cheaper than with RSA-2048, which matters when a benchmark opens thousands of
# IMAPS connections.
_EC_KEY_ARGS = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")

# Long enough that a checked-out devstack never expires mid-run, short enough
# (< 825 days) to stay inside the limit some TLS stacks enforce on leaf certs.
_CA_DAYS = "3650"
_LEAF_DAYS = "800"

# Python's ssl module (and OpenSSL 3 with X509_STRICT) rejects leaf certificates
# without a SAN or with a CA flag, so the extensions are spelled out in full.
_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files making up the devstack's TLS identity."""

    ca_cert: Path
    """PEM certificate of the generated CA: what clients put in their trust store."""
    cert: Path
    """Server certificate signed by the CA, valid for ``localhost`` and ``127.0.0.1``."""
    key: Path
    """Private key of ``cert`` (mode 0600)."""


def _openssl(*args: str, cwd: Path) -> None:
    """Run one openssl command, surfacing its stderr if it fails."""
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({result.returncode}): {result.stderr}")


def _serial() -> str:
    """A random positive serial (RFC 5280 4.1.2.2: at most 20 octets).

    Given explicitly so openssl writes no ``.srl`` state file next to the CA.
    """
    return str(secrets.randbits(63) | 1)


def make_tls(directory: Path) -> TlsFiles:
    """Create a CA and a server certificate in ``directory``; reuse them if present.

    The files are written under temporary names and renamed last, so a run
    interrupted halfway never leaves a key that does not match its certificate
    (which would make the "files exist" shortcut lie on the next call).
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        cert=directory / "server.pem",
        key=directory / "server.key",
    )
    if files.ca_cert.exists() and files.cert.exists() and files.key.exists():
        return files

    # The CA key is only needed to sign the one leaf below; it is kept next to
    # the CA so a caller could sign more, but nothing else reads it.
    ca_key = directory / "ca.key"
    tmp_ca = directory / "ca.pem.tmp"
    tmp_key = directory / "server.key.tmp"
    tmp_csr = directory / "server.csr.tmp"
    tmp_cert = directory / "server.pem.tmp"
    ext_file = directory / "server.ext"
    ext_file.write_text(_LEAF_EXTENSIONS, encoding="ascii")

    # `req -x509` adds basicConstraints CA:TRUE and key identifiers by default
    # (openssl.cnf's v3_ca); keyUsage is added so strict verifiers accept it.
    _openssl(
        "req", "-x509", *_EC_KEY_ARGS, "-nodes",
        "-keyout", str(ca_key), "-out", str(tmp_ca),
        "-days", _CA_DAYS, "-subj", "/CN=devstack test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", *_EC_KEY_ARGS, "-nodes",
        "-keyout", str(tmp_key), "-out", str(tmp_csr), "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(tmp_csr),
        "-CA", str(tmp_ca), "-CAkey", str(ca_key), "-set_serial", _serial(),
        "-days", _LEAF_DAYS, "-sha256", "-extfile", str(ext_file), "-out", str(tmp_cert),
        cwd=directory,
    )  # fmt: skip
    os.chmod(ca_key, 0o600)
    os.chmod(tmp_key, 0o600)
    # Daemons read the certificates after dropping privileges in some setups.
    os.chmod(tmp_ca, 0o644)
    os.chmod(tmp_cert, 0o644)
    tmp_csr.unlink()
    # Key before certificate, CA last: the existence check above looks at all
    # three, so until the final rename a rerun regenerates everything.
    os.replace(tmp_key, files.key)
    os.replace(tmp_cert, files.cert)
    os.replace(tmp_ca, files.ca_cert)
    return files
