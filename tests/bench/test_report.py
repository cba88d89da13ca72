"""The bench commands end to end through the CLI: each writes its run file, `bench report` reads them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeinfer.bench.cli import app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def _png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def test_report_rejects_a_file_that_is_not_a_run(tmp_path: Path) -> None:
    bogus = tmp_path / "x.json"
    bogus.write_text(json.dumps({"hello": 1}))
    result = CliRunner().invoke(app, ["report", str(bogus), "--out-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not an edgeinfer bench run" in " ".join(result.output.split())
    assert not (tmp_path / "r" / "report.md").exists()


def test_fit_run_reports_a_7b_int4_model_on_the_pi5(tmp_path: Path) -> None:
    out = tmp_path / "fit.json"
    _invoke(
        ["fit", "-m", "7B", "-q", "int4", "-d", "rpi5-4gb", "-d", "rpi5-8gb", "--no-measure", "-o", str(out)]
    )
    run = json.loads(out.read_text())
    fits = {r["device"]: r["fits"] for r in run["results"]}
    assert fits == {"rpi5-4gb": False, "rpi5-8gb": True}  # ~4.5 GB of weights + KV cache + overhead
    assert run["host"]["loadavg_1m_end"] >= 0
    _invoke(["report", str(out), "--out-dir", str(tmp_path / "r")])
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Fit" in text and "rpi5-8gb" in text and "| yes |" in text and "| no |" in text


@pytest.mark.slow
def test_every_bench_command_feeds_the_report(tmp_path: Path, slow_server) -> None:
    model = tmp_path / "model.json"
    _invoke(
        ["model", "-m", "gemma-3-270m", "-t", "1", "--pp", "16", "--tg", "4", "-r", "1", "-o", str(model)]
    )
    roof = tmp_path / "roofline.json"
    _invoke(["roofline", "-m", "gemma-3-270m", "-t", "1", "--model-run", str(model), "--array-mib", "16",
             "-o", str(roof)])  # fmt: skip
    srv = slow_server(ttft=0.05, token=0.01)
    serve = tmp_path / "serve.json"
    _invoke(["serve", "--url", srv.url, "-c", "1", "-c", "2", "--num-requests", "2", "--max-tokens", "4",
             "--no-warmup", "--label", "slow server", "-o", str(serve)])  # fmt: skip
    acc = tmp_path / "accuracy.json"
    _invoke(["accuracy", "-m", "gemma-3-270m", "-t", "1", "--template", "few-shot", "--limit", "2",
             "--max-tokens", "8", "-o", str(acc)])  # fmt: skip
    fit = tmp_path / "fit.json"
    _invoke(["fit", "-m", "270M", "-q", "q8_0", "--no-measure", "-o", str(fit)])

    # the roofline took its achieved decode rate from the model run, not from a measurement of its own
    tg = next(r for r in json.loads(model.read_text())["results"] if r["kind"] == "tg")
    (roof_row,) = json.loads(roof.read_text())["results"]
    assert roof_row["decode"]["achieved_tps"] == tg["tps_mean"]
    d = roof_row["decode"]
    assert d["achieved_over_bound"] == pytest.approx(d["achieved_tps"] / d["bound_tps"])
    assert d["bound_by"] == ("memory" if d["memory_bound_tps"] <= d["compute_bound_tps"] else "compute")

    out_dir = tmp_path / "report"
    _invoke(["report", str(model), str(roof), str(serve), str(acc), str(fit), "--out-dir", str(out_dir)])
    text = (out_dir / "report.md").read_text()
    for heading in ("## Model throughput", "## Roofline", "## Fit", "slow server"):
        assert heading in text, heading
    for png in (
        "bench_model_threads.png",
        "bench_serve_latency.png",
        "bench_roofline.png",
        "bench_accuracy.png",
    ):
        _png(out_dir / png)
        assert f"]({png})" in text


def test_accuracy_through_a_server_url(tmp_path: Path, slow_server) -> None:
    srv = slow_server(ttft=0.01, token=0.001)  # answers "w0 w1 w2 ...": wrong, but every step is exercised
    out = tmp_path / "acc.json"
    _invoke(["accuracy", "--url", srv.url, "--template", "system", "--limit", "2", "--max-tokens", "4",
             "-o", str(out)])  # fmt: skip
    (res,) = json.loads(out.read_text())["results"]
    assert res["n"] == 2 and res["correct"] == 0 and res["mode"] == "chat"
    assert [d["answer"].split() for d in res["items"]] == [["w0", "w1", "w2", "w3"]] * 2


@pytest.mark.slow
def test_roofline_measures_the_model_itself_without_a_model_run(tmp_path: Path) -> None:
    out = tmp_path / "roofline.json"
    _invoke(["roofline", "-m", "gemma-3-270m", "-t", "1", "--pp", "16", "--tg", "4", "--repeats", "1",
             "--array-mib", "16", "-o", str(out)])  # fmt: skip
    run = json.loads(out.read_text())
    (r,) = run["results"]
    assert run["config"]["model_run"] == "" and r["model"] == "gemma-3-270m"
    assert (
        r["decode"]["achieved_tps"] > 0 and r["prefill"]["achieved_tps"] > 0 and r["prefill"]["tokens"] == 16
    )
    assert r["decode"]["context"] == 2  # tg 4 from an empty context: 2 positions on average


DOCS_BENCH = Path(__file__).resolve().parents[2] / "docs" / "bench"


def _recorded_runs() -> list[Path]:
    from edgeinfer.bench.runs import KINDS

    def kind(path: Path) -> str | None:  # other scripts' result files there need not be bench runs at all
        doc = json.loads(path.read_text())
        return doc.get("kind") if isinstance(doc, dict) else None

    return [p for p in sorted(DOCS_BENCH.glob("*.json")) if kind(p) in KINDS]


def test_recorded_run_files_load_typed_and_write_back_unchanged(tmp_path: Path) -> None:
    from edgeinfer.bench.report import build_report
    from edgeinfer.bench.runs import load

    paths = _recorded_runs()
    assert {load(p).kind for p in paths} == {"model", "serve", "accuracy", "roofline", "fit"}
    for p in paths:
        run = load(p)
        assert run.to_dict() == json.loads(p.read_text()), p  # the on-disk format is kept field for field
    text = build_report([load(p) for p in paths], tmp_path, "recorded").read_text()
    for heading in ("## Model throughput", "## Serving load", "## Roofline", "## Accuracy", "## Fit"):
        assert heading in text, heading


def _piped(args: list[str]) -> str:
    """Run `edgeinfer bench ...` as a process with stdout on a pipe (not a terminal)."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgeinfer.cli", "bench", *args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_piped_tables_are_full_width_markdown(tmp_path: Path) -> None:
    out = _piped(
        ["fit", "-m", "7B", "-q", "int4", "-d", "rpi5-8gb", "--no-measure", "-o", str(tmp_path / "f.json")]
    )
    header = ("model", "quant", "device", "context", "needs GB", "usable GB", "fits", "bandwidth GB/s",
              "projected decode tok/s")  # fmt: skip
    assert "| " + " | ".join(header) + " |" in out
    assert "| 7B | int4 | rpi5-8gb | 4096 |" in out and "…" not in out
    table = _piped(
        ["fit", "-m", "7B", "-q", "int4", "--no-measure", "-f", "table", "-o", str(tmp_path / "t.json")]
    )
    assert "projected decode tok/s" in table and "┃ model ┃" in table and "…" not in table  # rich, unsqueezed
    out = _piped(
        [
            "roofline",
            "-m",
            "gemma-3-270m",
            "-t",
            "1",
            "--model-run",
            str(DOCS_BENCH / "model.json"),
            "--array-mib",
            "16",
            "-o",
            str(tmp_path / "r.json"),
        ]
    )
    for name in (
        "decode MB/token",
        "decode achieved",
        "achieved/bound",
        "prefill bound tok/s",
        "prefill achieved",
    ):
        assert f" {name} |" in out, name
    assert "…" not in out and "| gemma-3-270m |" in out and "device: bandwidth" in out


def test_json_format_prints_the_run_document(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    out = _piped(["fit", "-m", "270M", "-q", "q8_0", "--no-measure", "-f", "json", "-o", str(target)])
    doc = json.loads(out)
    assert doc == json.loads(target.read_text()) and doc["kind"] == "fit" and len(doc["results"]) > 3
