"""The one parser for sizes and link rates typed by users (CLI flags, cluster YAML, device profiles).

Sizes: ``300MB`` / ``1.5GiB`` / ``512k`` / ``500000000`` -> bytes (decimal ``KB/MB/GB``, binary
``KiB/MiB/GiB``, and the short ``K/M/G`` that memory flags conventionally mean as binary).
Rates follow ``tc``: ``500kbit`` / ``20mbit`` / ``1gbit`` / ``12.5mbps`` (bytes per second) / ``1000000``
(plain bits) -> bits per second. One grammar everywhere: a value accepted by one command is accepted by all.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?I?B|[KMG])?$", re.IGNORECASE)

_RATE_UNITS = {
    "bit": 1.0,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "bps": 8.0,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
}
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]+)?$", re.IGNORECASE)


def parse_bytes(text: str | int | float | None) -> int | None:
    """A size in bytes; ``None``, ``''`` and ``0`` mean "not set" and give ``None``."""
    if text is None or text == "" or text == 0:
        return None
    if isinstance(text, bool):
        raise ValueError(f"bad size {text!r}: use e.g. 300MB, 1.5GiB or a number of bytes")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"bad size {text!r}: sizes are not negative")
        return int(text)
    m = _SIZE.match(str(text).strip())
    if not m or (m.group(2) or "").upper() not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r}: use e.g. 300MB, 1.5GiB or a number of bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").upper()])


def parse_rate_bps(text: str | int | float) -> float:
    """A link rate in bits per second (``tc`` units; a bare number is bits per second)."""
    if isinstance(text, bool):
        raise ValueError(f"bad rate {text!r}: use e.g. 5mbit, 100mbit, 1gbit")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _RATE.match(str(text).strip())
        unit = (m.group(2) or "bit").lower() if m else ""
        if not m or unit not in _RATE_UNITS:
            raise ValueError(f"bad rate {text!r}: use e.g. 5mbit, 100mbit, 1gbit (tc units)")
        value = float(m.group(1)) * _RATE_UNITS[unit]
    if not value > 0:
        raise ValueError(f"bad rate {text!r}: a link rate must be above zero")
    return value
