"""`edgeinfer split ...` end to end through the real CLI (typer runner, real models, real edge server)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from edgeinfer.cli import app
from edgeinfer.split.profile import Profile

runner = CliRunner()


def _flat(output: str) -> str:
    """A usage error's text without rich's box and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def _ok(args: list[str]):
    res = runner.invoke(app, ["split", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_help_lists_every_subcommand():
    out = _ok(["--help"])
    for cmd in ("train", "profile", "plan", "serve-edge", "run", "bench"):
        assert cmd in out


def test_train_reports_measured_exit_accuracy():
    out = _ok(["train", "-m", "digitnet-small"])
    assert "exit1" in out and "final" in out and "test accuracy" in out


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("prof")
    for device in ("rpi4-like", "edge-host"):
        _ok(["profile", "-m", "digitnet-small", "--device", device, "--warmup", "1", "--repeats", "3",
             "-o", str(d / f"{device}.json")])  # fmt: skip
    return d / "rpi4-like.json", d / "edge-host.json"


def test_profile_writes_an_importable_json(profiles):
    dev = Profile.load(profiles[0])
    assert dev.model == "digitnet-small" and dev.device.name == "rpi4-like" and dev.device.emulated


def test_plan_from_imported_profiles(profiles):
    args = [
        "plan",
        "-m",
        "digitnet-small",
        "--device-profile",
        str(profiles[0]),
        "--edge-profile",
        str(profiles[1]),
    ]
    out = _ok([*args, "--bandwidth", "1gbit", "--rtt-ms", "0", "--dtype", "int8", "--codec", "zstd"])
    assert "plan: exit" in out and "(edge-only)" in out  # a free, infinitely fast link: ship the input
    bad = runner.invoke(app, ["split", *args, "--bandwidth", "fast"])
    assert bad.exit_code == 2 and "bad rate" in bad.output
    bad = runner.invoke(app, ["split", *args, "--dtype", "fp8"])
    assert bad.exit_code == 2 and "'fp8' is not one of 'f32', 'f16', 'int8'" in _flat(bad.output)
    bad = runner.invoke(app, ["split", *args, "--codec", "gzip"])
    assert bad.exit_code == 2 and "'gzip' is not one of 'none', 'lz4', 'zstd'" in _flat(bad.output)
    bad = runner.invoke(app, ["split", *args, "--objective", "speed"])
    assert bad.exit_code == 2 and "'speed' is not one of 'latency', 'energy'" in _flat(bad.output)


def test_the_cli_choices_are_the_logics():
    """The typer enums of --dtype/--codec/--objective/--early-exit list exactly what the logic accepts."""
    from edgeinfer.split import cli
    from edgeinfer.split.compress import CODECS, DTYPES
    from edgeinfer.split.exits import CRITERIA
    from edgeinfer.split.planner import OBJECTIVES

    for enum, values in ((cli.WireDtype, DTYPES), (cli.Codec, CODECS), (cli.Criterion, CRITERIA),
                         (cli.Objective, OBJECTIVES)):  # fmt: skip
        assert tuple(e.value for e in enum) == values


def test_bad_choices_fail_before_anything_loads():
    for args in (["run", "--edge-url", "http://127.0.0.1:9", "--early-exit", "soft"],
                 ["bench", "--codec", "brotli"], ["bench", "--link-change", "20mbit"],
                 ["bench", "--link-change", "20mbit,fast"]):  # fmt: skip
        bad = runner.invoke(app, ["split", *args])
        assert bad.exit_code == 2, (args, bad.output)
        text = _flat(bad.output)
        assert "is not one of" in text or "FROM,TO" in text or "bad rate" in text, text


def test_run_against_a_real_edge(profiles, edge_server, tmp_path):
    log = tmp_path / "results.jsonl"
    args = [
        "run",
        "--edge-url",
        edge_server.url,
        "-m",
        "digitnet-small",
        "-n",
        "6",
        "--early-exit",
        "entropy",
    ]
    args += ["--device-profile", str(profiles[0]), "--edge-profile", str(profiles[1]), "--jsonl", str(log)]
    out = _ok(args)
    assert "6 inputs" in out
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["pred"] <= 9 and "label" in r for r in rows)
