"""HTTP API keys, as vLLM and llama-server take them: ``Authorization: Bearer <key>``.

Keys come from ``--api-key`` (repeatable), ``--api-key-file`` (one key per line, ``#`` comments) and the
``EDGEINFER_API_KEY`` environment variable. A presented key is compared with every configured key in
constant time (``hmac.compare_digest``), so neither the match nor its position leaks through timing.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "EDGEINFER_API_KEY"


def _check_key(key: str, origin: str) -> str:
    if not key:
        raise ValueError(f"empty API key in {origin}")
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError(f"API key in {origin} must be printable ASCII without spaces")
    return key


def read_key_file(path: str | Path) -> list[str]:
    """Keys from a file: one per line; blank lines and lines starting with '#' are skipped."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read API key file {str(p)!r}: {exc.strerror or exc}") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(_check_key(line, f"{p}:{n}"))
    if not keys:
        raise ValueError(f"API key file {str(p)!r} holds no key")
    return keys


def collect_keys(
    keys: Iterable[str] = (), key_file: str | Path | None = None, environ: dict[str, str] | None = None
) -> tuple[str, ...]:
    """All configured keys: the flags, the file, then the environment variable (when set)."""
    env = os.environ if environ is None else environ
    out = [_check_key(k, "--api-key") for k in keys]
    if key_file is not None:
        out += read_key_file(key_file)
    if env.get(ENV_VAR, "").strip():
        out.append(_check_key(env[ENV_VAR].strip(), ENV_VAR))
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class APIKeys:
    keys: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def accepts(self, authorization: str | None) -> bool:
        """True for an ``Authorization: Bearer <key>`` header carrying one of the keys."""
        if not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = presented.strip().encode("latin-1", "replace")  # header bytes, as Starlette decodes them
        ok = False
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            ok |= hmac.compare_digest(given, key.encode())
        return ok
