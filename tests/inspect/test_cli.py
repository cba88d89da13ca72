"""`edgeinfer inspect run` against a real server, `inspect report` plots, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgeinfer.cli import app
from edgeinfer.inspect.ids import IdSet
from edgeinfer.inspect.report import detection, requests_to_verdict

CLI = [sys.executable, "-m", "edgeinfer.cli", "inspect"]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _invoke(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (the `edgeinfer` app itself, no interpreter start-up)."""
    r = CliRunner().invoke(app, ["inspect", *args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


@pytest.mark.slow
def test_run_prints_verdicts_and_writes_json(honest_batched: str, tmp_path) -> None:
    out = tmp_path / "report.json"
    args = ["-n", "4", "--rate", "0.5", "--max-tokens", "2", "--seed", "1", "--json", str(out)]
    r = _run("run", "--url", honest_batched, *args)
    assert r.returncode == 0, r.stderr
    assert "inspection verdicts" in r.stdout and "model" in r.stdout and "SLA" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["real_requests"] == 4 and doc["id_requests"] == 2  # stratified: one ID per 2 requests
    assert doc["id_checks"] == 2 and doc["id_failures"] == 0 and doc["model"]["decision"] == "undecided"
    assert doc["sla"]["n"] == 4 and doc["latency"]["availability"] == 1.0


def test_run_refuses_missing_length_and_bad_id_files(tmp_path) -> None:
    r = _invoke("run", "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "-n REQUESTS or --seconds" in r.stderr
    bad = tmp_path / "ids.json"
    bad.write_text('{"version": 1, "ids": []}')
    r = _invoke("run", "--url", "http://127.0.0.1:9", "-n", "1", "--ids", str(bad))
    assert r.returncode == 2 and "holds no IDs" in r.stderr
    r = _invoke("ids", "-s", "quant:Q1")
    assert r.returncode == 2 and "quantization must be one of" in r.stderr


def test_report_draws_both_plots(tmp_path) -> None:
    measured = tmp_path / "m.json"
    measured.write_text(json.dumps({"detection": [{"rate": 0.01, "fraction": 0.1, "probability": 1.0}]}))
    r = _invoke("report", "--out", str(tmp_path / "plots"), "--measured", str(measured), "--requests", "2000")
    assert r.returncode == 0, r.stderr
    for name in ("inspect-detection.png", "inspect-requests.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_the_detection_model_behaves() -> None:
    # full substitution: the first failed check decides; nothing substituted: never "substituted"
    assert detection(1.0, 0.01, 2000, trials=50) == 1.0
    assert detection(0.0, 0.05, 2000, trials=50) == 0.0
    assert detection(0.1, 0.05, 2000, trials=100) > detection(0.1, 0.002, 2000, trials=100)
    assert requests_to_verdict(0.1, 0.01) > requests_to_verdict(1.0, 0.01) > 0
    assert requests_to_verdict(0.1, 0.001) == pytest.approx(10 * requests_to_verdict(0.1, 0.01))


def test_ids_file_of_the_bundled_model_loads(ids: IdSet) -> None:
    assert ids.ids and all(i.max_tokens == ids.ids[0].max_tokens for i in ids.ids)
