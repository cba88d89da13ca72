"""`edgeinfer cluster certs DIR --node NAME ...`: a small private CA and the certificates of a cluster.

Writes into DIR: ``ca.pem`` (+ ``ca.key``, kept to add nodes later), ``node-NAME.pem``/``.key`` per node and
``gateway.pem``/``.key``. Every node certificate names ``edgeinfer-node`` (what the gateway checks; nodes are
dialled by address) plus the node's own name and any ``--san``; node certificates are for servers, the
gateway's for clients. Keys are EC P-256, files holding keys are mode 600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeinfer.cluster.auth import SERVER_NAME

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterCerts:
    ca: Path
    ca_key: Path
    nodes: dict[str, CertFiles]
    gateway: CertFiles


def _write(path: Path, data: bytes, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if secret else 0o644)


def _san(entry: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def make_certs(
    out_dir: str | Path,
    nodes: list[str],
    gateway: str = "gateway",
    sans: list[str] = (),  # type: ignore[assignment]
    days: int = 825,
) -> ClusterCerts:
    """Create (or reuse, if ``ca.pem``/``ca.key`` exist) the CA and sign node and gateway certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not nodes:
        raise ValueError("name at least one node (--node NAME)")
    for n in [*nodes, gateway]:
        if not NAME_RE.match(n):
            raise ValueError(f"bad certificate name {n!r}: use letters, digits, '.', '_' or '-'")
    if len(set(nodes)) != len(nodes) or gateway in nodes:
        raise ValueError("node and gateway names must be distinct")
    out = Path(out_dir)
    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM

    def key_bytes(key) -> bytes:
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    ca_cert_path, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeinfer cluster CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, key_bytes(ca_key), secret=True)
        _write(ca_cert_path, ca_cert.public_bytes(pem), secret=False)

    def issue(name: str, names: list[str], usage) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        unique = list(dict.fromkeys(names))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in unique]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        files = CertFiles(out / f"{name}.pem", out / f"{name}.key")
        _write(files.key, key_bytes(key), secret=True)
        _write(files.cert, cert.public_bytes(pem), secret=False)
        return files

    node_files = {
        n: issue(f"node-{n}", [SERVER_NAME, n, *sans], ExtendedKeyUsageOID.SERVER_AUTH) for n in nodes
    }
    gw = issue(gateway, [gateway], ExtendedKeyUsageOID.CLIENT_AUTH)
    return ClusterCerts(ca_cert_path, ca_key_path, node_files, gw)
