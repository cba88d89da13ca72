"""Who may talk to a node: the cluster token (gRPC metadata, compared in constant time) and mutual TLS.

One ``ClusterSecurity`` value describes both sides: a node serves with ``server_credentials`` and
``TokenInterceptor``; the gateway (``NodeClient``) connects with ``channel_credentials`` and sends
``call_metadata``. Certificates come from ``edgeinfer cluster certs`` (``certs.py``). docs/security.md has the
threat model.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

TOKEN_ENV = "EDGEINFER_CLUSTER_TOKEN"
TOKEN_HEADER = "authorization"  # value: "Bearer <token>"
SERVER_NAME = "edgeinfer-node"  # every node certificate carries this DNS name; the gateway checks it
MIN_TOKEN_CHARS = 16


class SecurityError(ValueError):
    """A token file or certificate that cannot be used (the message names the file)."""


@dataclass(frozen=True)
class ClusterSecurity:
    """Credentials of one side of a node connection. All empty: an open (insecure) connection."""

    token: str | None = None
    ca: bytes | None = None  # PEM of the cluster CA: the peer must present a certificate it signed
    cert: bytes | None = None  # PEM of this side's certificate
    key: bytes | None = None  # PEM of its private key
    server_name: str = SERVER_NAME  # the name the gateway expects in a node's certificate

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def open(self) -> bool:
        return self.token is None and not self.tls

    def describe(self) -> str:
        parts = (["mutual TLS"] if self.tls else []) + (["token"] if self.token else [])
        return " + ".join(parts) or "none"


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path).expanduser()
    try:
        return p.read_bytes()
    except OSError as exc:
        raise SecurityError(f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}") from None


def read_token(token_file: str | Path | None = None, env: dict[str, str] | None = None) -> str | None:
    """The cluster token: the first line of ``token_file``, else ``$EDGEINFER_CLUSTER_TOKEN``, else None."""
    env = os.environ if env is None else env
    if token_file:
        lines = _read(token_file, "token file").decode("utf-8", "replace").strip().splitlines()
        token = lines[0].strip() if lines else ""
        where = f"token file {str(token_file)!r}"
    else:
        token = env.get(TOKEN_ENV, "").strip()
        where = f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise SecurityError(
            f"{where}: the cluster token must have at least {MIN_TOKEN_CHARS} characters "
            f"(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def load_security(
    token_file: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_ca: str | Path | None = None,
    server_name: str | None = None,
    env: dict[str, str] | None = None,
) -> ClusterSecurity:
    """Read the token and the certificate files (all three TLS files or none)."""
    given = [x for x in (tls_cert, tls_key, tls_ca) if x]
    if given and len(given) != 3:
        raise SecurityError("mutual TLS needs all three of the certificate, its key and the cluster CA")
    tls = {}
    if given:
        tls = {
            "cert": _read(tls_cert, "TLS certificate"),  # type: ignore[arg-type]
            "key": _read(tls_key, "TLS key"),  # type: ignore[arg-type]
            "ca": _read(tls_ca, "cluster CA certificate"),  # type: ignore[arg-type]
        }
        for what, pem in tls.items():
            if b"-----BEGIN" not in pem:
                raise SecurityError(f"the TLS {what} file is not PEM")
    return ClusterSecurity(token=read_token(token_file, env), server_name=server_name or SERVER_NAME, **tls)


# --- node side ----------------------------------------------------------------------------------------------
def server_credentials(sec: ClusterSecurity) -> grpc.ServerCredentials:
    """TLS that requires a client certificate signed by the cluster CA."""
    assert sec.tls and sec.cert and sec.key
    return grpc.ssl_server_credentials(
        [(sec.key, sec.cert)], root_certificates=sec.ca, require_client_auth=True
    )


def _refuse(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")


_REFUSE = grpc.unary_unary_rpc_method_handler(_refuse)  # no deserializer: the body is never parsed


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks ``authorization: Bearer <token>`` before the servicer (or
    even the request's deserialization) is reached; the comparison takes constant time."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        given = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == TOKEN_HEADER:
                given = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(given, self._expected):
            return continuation(handler_call_details)
        return _REFUSE


# --- gateway side -------------------------------------------------------------------------------------------
def channel_credentials(sec: ClusterSecurity) -> grpc.ChannelCredentials:
    assert sec.tls
    return grpc.ssl_channel_credentials(
        root_certificates=sec.ca, private_key=sec.key, certificate_chain=sec.cert
    )


def channel_options(sec: ClusterSecurity) -> list[tuple[str, str]]:
    """Nodes are dialled by address; their certificates name ``server_name`` (checked against the CA)."""
    return [("grpc.ssl_target_name_override", sec.server_name)] if sec.tls else []


def call_metadata(sec: ClusterSecurity) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_HEADER, f"Bearer {sec.token}"),) if sec.token else ()


def open_channel(address: str, sec: ClusterSecurity | None, options: list) -> grpc.Channel:
    """A channel to a node with this side's credentials (insecure when ``sec`` is open or None)."""
    if sec is None or not sec.tls:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, channel_credentials(sec), options=options + channel_options(sec))


def cluster_security(cfg) -> ClusterSecurity:
    """The gateway's credentials from a ``ClusterConfig``'s ``security:`` section (the token file, else
    ``$EDGEINFER_CLUSTER_TOKEN``; the TLS files)."""
    opts = cfg.security
    tls = opts.tls
    return load_security(
        opts.token_file,
        tls.cert if tls else None,
        tls.key if tls else None,
        tls.ca if tls else None,
        tls.server_name if tls else None,
    )
