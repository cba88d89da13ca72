"""Who may talk to the HTTP server and what they may send, checked before any route runs.

``HTTPPolicy`` is the server's admission policy; two ASGI middlewares apply it:

* ``HostCheck`` (outermost): the ``Host`` header must name an allowed host (DNS-rebinding defence: a web
  page whose name an attacker re-points at 127.0.0.1 still sends its own name as ``Host``).
* ``Guard`` (inside CORS, so that browsers can read its errors): the API key, JSON-only bodies (415
  otherwise: a browser cannot send ``application/json`` cross-site without a CORS preflight), and the body
  size (413), from ``Content-Length`` before a byte is read and again while the body streams in.

Every refusal is an OpenAI-shaped error and costs the server no parsing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from edgeinfer.api.auth import APIKeys, collect_keys
from edgeinfer.api.errors import APIError
from edgeinfer.units import parse_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 8 << 20  # 8 MiB: a full 128k-token context as JSON token ids is ~1 MB
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
OPEN_PATHS = ("/health", "/dashboard")  # answered without a key, always
OPEN_PREFIXES = ("/dashboard/",)  # the dashboard's script and style: no data (its state route is keyed)


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """Loopback names plus the bind address; any host when bound to every interface (0.0.0.0 / ::),
    where the names clients use cannot be known: list them with --allowed-host there."""
    if bind_host in WILDCARD_BINDS:
        return ("*",)
    return tuple(dict.fromkeys((*LOOPBACK_NAMES, _normal_host(bind_host))))


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def host_of(header: str) -> str:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``)."""
    header = header.strip()
    if header.startswith("["):
        end = header.find("]")
        return _normal_host(header[: end + 1] if end > 0 else header)
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return _normal_host(header)


@dataclass(frozen=True)
class HTTPPolicy:
    api_keys: APIKeys = field(default_factory=APIKeys)
    metrics_need_key: bool = False  # /metrics is open unless this is set
    allowed_hosts: tuple[str, ...] = ("*",)  # "*" any; "*.example.com" a domain and its subdomains
    cors_origins: tuple[str, ...] = ()  # none: no CORS headers, browsers keep cross-origin pages out
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise ValueError("the body size limit must be at least 1 byte")
        if not self.allowed_hosts:
            raise ValueError("at least one allowed host is needed ('*' allows any)")

    def host_allowed(self, host: str) -> bool:
        for pattern in self.allowed_hosts:
            if pattern == "*":
                return True
            if pattern.startswith("*."):
                suffix = _normal_host(pattern[1:])
                if host.endswith(suffix) or host == suffix[1:]:
                    return True
            elif host and host == _normal_host(pattern):
                return True
        return False

    def needs_key(self, path: str) -> bool:
        if not self.api_keys.enabled or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return False
        return self.metrics_need_key or path != "/metrics"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, err: APIError, headers=None) -> None:
    response = JSONResponse(err.body(), status_code=err.status, headers=headers)
    await response(scope, receive, send)


class HostCheck:
    def __init__(self, app: ASGIApp, policy: HTTPPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.policy.allowed_hosts != ("*",):
            host = host_of(_header(scope, b"host") or "")
            if not self.policy.host_allowed(host):
                message = f"host {host!r} is not allowed by this server (see --allowed-host)"
                err = APIError(400, message, "Host", "invalid_host")
                return await _refuse(scope, receive, send, err)
        await self.app(scope, receive, send)


class Guard:
    def __init__(self, app: ASGIApp, policy: HTTPPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        policy = self.policy
        if policy.needs_key(scope["path"]):
            auth = _header(scope, b"authorization")
            if not policy.api_keys.accepts(auth):
                message = (
                    "Incorrect API key provided."
                    if auth
                    else "Missing API key: send 'Authorization: Bearer KEY'."
                )
                # OpenAI's shape for a bad key: type invalid_request_error, code invalid_api_key, HTTP 401
                err = APIError(401, message, code="invalid_api_key")
                return await _refuse(scope, receive, send, err, {"WWW-Authenticate": "Bearer"})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        ctype = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            shown = ctype or "none"
            message = f"Content-Type must be application/json (got {shown})"
            err = APIError(415, message, "Content-Type", "unsupported_media_type")
            return await _refuse(scope, receive, send, err)
        limit = policy.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                err = APIError(400, "invalid Content-Length header", "Content-Length", "invalid_request")
                return await _refuse(scope, receive, send, err)
            if int(length) > limit:
                return await _refuse(scope, receive, send, too_large(limit))
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def too_large(limit: int) -> APIError:
    message = f"request body is larger than the server's limit of {limit} bytes (see --max-body-bytes)"
    return APIError(413, message, code="request_too_large")


def build_policy(
    bind_host: str,
    api_keys: Iterable[str] = (),
    api_key_file: str | None = None,
    allowed_hosts: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
    max_body: str | int | None = None,
    metrics_need_key: bool = False,
    environ: dict[str, str] | None = None,
) -> HTTPPolicy:
    """The policy `edgeinfer serve` runs with, from its flags (ValueError on a bad one)."""
    keys = collect_keys(api_keys, api_key_file, environ)
    if metrics_need_key and not keys:
        raise ValueError(
            "--metrics-need-key needs an API key (--api-key, --api-key-file or EDGEINFER_API_KEY)"
        )
    limit = parse_bytes(max_body) if max_body not in (None, "") else DEFAULT_MAX_BODY_BYTES
    if not limit:
        raise ValueError("--max-body-bytes must be a positive size, e.g. 8MiB")
    hosts = tuple(h.strip() for h in allowed_hosts if h.strip())
    for origin in cors_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"bad --cors-origin {origin!r}: use e.g. https://app.example.com, or '*'")
    return HTTPPolicy(
        api_keys=APIKeys(keys),
        metrics_need_key=metrics_need_key,
        allowed_hosts=hosts or default_allowed_hosts(bind_host),
        cors_origins=tuple(o.rstrip("/") for o in cors_origins),
        max_body_bytes=limit,
    )
