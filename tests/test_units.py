"""The one grammar for sizes and link rates that every command and config file accepts."""

from __future__ import annotations

import pytest

from edgeinfer.units import parse_bytes, parse_rate_bps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300MB", 300_000_000),
        ("1.5GiB", 3 << 29),
        ("512k", 512 << 10),
        ("2G", 2 << 30),
        ("300 mb", 300_000_000),
        ("500000000", 500_000_000),
        (1234, 1234),
        (None, None),
        ("", None),
        (0, None),
    ],
)
def test_sizes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["lots", "12XB", "-5MB", -1, True])
def test_bad_sizes_say_what_to_write(bad):
    with pytest.raises(ValueError, match="bad size"):
        parse_bytes(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100mbit", 100e6), ("1gbit", 1e9), ("500kbit", 500e3), ("2mbps", 16e6), ("1000000", 1e6), (2e6, 2e6)],
)
def test_rates_follow_tc(text, expected):
    assert parse_rate_bps(text) == expected


@pytest.mark.parametrize("bad", ["fast", "10 furlongs", "0mbit", 0, False])
def test_bad_rates_say_what_to_write(bad):
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate_bps(bad)
