"""The HTTP admission policy's parts: key sources and matching, Host parsing, defaults, flag errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.api.auth import APIKeys, collect_keys
from edgeinfer.api.guard import HTTPPolicy, build_policy, default_allowed_hosts, host_of


def test_keys_from_flags_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# comment\n\n  file-key  \nshared\n")
    keys = collect_keys(["flag-key", "shared"], f, {"EDGEINFER_API_KEY": " env-key\n"})
    assert keys == ("flag-key", "shared", "file-key", "env-key")
    assert collect_keys([], None, {}) == ()


@pytest.mark.parametrize("bad", ["", "two words", "tab\tkey", "ключ"])
def test_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="API key"):
        collect_keys([bad], None, {})


def test_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        collect_keys([], tmp_path / "missing", {})
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no key"):
        collect_keys([], tmp_path / "empty", {})


def test_bearer_matching() -> None:
    keys = APIKeys(("alpha", "beta"))
    assert keys.accepts("Bearer alpha") and keys.accepts("bearer beta") and keys.accepts("Bearer  beta ")
    for header in (None, "", "alpha", "Bearer", "Bearer alph", "Bearer alphaa", "Basic alpha", "Bearer é"):
        assert not keys.accepts(header), header


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost:8080", "localhost"),
        ("LOCALHOST.", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]:8080", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("", ""),
    ],
)
def test_host_header_parsing(header: str, host: str) -> None:
    assert host_of(header) == host


def test_allowed_hosts() -> None:
    assert default_allowed_hosts("0.0.0.0") == ("*",) and default_allowed_hosts("::") == ("*",)
    local = HTTPPolicy(allowed_hosts=default_allowed_hosts("127.0.0.1"))
    assert all(local.host_allowed(h) for h in ("localhost", "127.0.0.1", "::1"))
    assert not local.host_allowed("attacker.example") and not local.host_allowed("")
    lan = HTTPPolicy(allowed_hosts=default_allowed_hosts("192.168.1.20"))
    assert lan.host_allowed("192.168.1.20") and not lan.host_allowed("192.168.1.21")
    domain = HTTPPolicy(allowed_hosts=("*.example.com",))
    assert domain.host_allowed("example.com") and domain.host_allowed("pi.lab.example.com")
    assert not domain.host_allowed("badexample.com")


def test_which_paths_need_the_key() -> None:
    open_metrics = HTTPPolicy(api_keys=APIKeys(("k",)))
    assert open_metrics.needs_key("/v1/models") and open_metrics.needs_key("/docs")
    assert not open_metrics.needs_key("/health") and not open_metrics.needs_key("/metrics")
    assert HTTPPolicy(api_keys=APIKeys(("k",)), metrics_need_key=True).needs_key("/metrics")
    assert not HTTPPolicy().needs_key("/v1/models")  # no key configured: open


def test_build_policy_from_flags() -> None:
    p = build_policy("127.0.0.1", ["k"], max_body="1MiB", cors_origins=["https://ui.example/"], environ={})
    assert p.max_body_bytes == 1 << 20 and p.cors_origins == ("https://ui.example",)
    assert "localhost" in p.allowed_hosts and p.api_keys.enabled
    assert build_policy("0.0.0.0", environ={}).allowed_hosts == ("*",)
    assert build_policy("0.0.0.0", allowed_hosts=["pi.local"], environ={}).allowed_hosts == ("pi.local",)
    with pytest.raises(ValueError, match="needs an API key"):
        build_policy("127.0.0.1", metrics_need_key=True, environ={})
    with pytest.raises(ValueError, match="bad size"):
        build_policy("127.0.0.1", max_body="lots", environ={})
    with pytest.raises(ValueError, match="positive"):
        build_policy("127.0.0.1", max_body="0", environ={})
    with pytest.raises(ValueError, match="cors-origin"):
        build_policy("127.0.0.1", cors_origins=["ui.example"], environ={})
